"""RULER-style synthetic long-context tasks, generated offline and fitted to exact token counts.

The 13 tasks of NVIDIA/RULER (``synthetic.yaml``) with RULER's templates, needle sentence, answer
prefixes, token limits and metrics. What differs, and why:

* **Essay haystack**: RULER uses Paul Graham's essays; offline we use public-domain prose, the King
  James Bible by default (:mod:`delta_attn.eval.corpus`). Each sample starts at its own random
  sentence (RULER reuses the same essay prefix for every sample).
* **QA**: ``qa_1`` / ``qa_2`` are *offline substitutes* for SQuAD / HotpotQA (:mod:`delta_attn.eval.qa`).
* **Word lists**: our own lists (:mod:`delta_attn.eval.words`) instead of ``wonderwords``. They hold ~1,200
  words; a cwe prompt that uses them all (32K tokens) is filled with made-up words that appear once.
* **Needle depths**: every needle (also in the noise / needle haystacks) is placed at a depth drawn
  from RULER's 40 evenly spaced depths (RULER draws uniform positions there); the depth is recorded.
* **Exact length**: every prompt of nominal length L has *exactly* ``L - reserve`` tokens (default
  reserve 128 = the longest answer budget, so prompt + answer <= L, RULER's rule), for every task, so a
  batch of any tasks at one length needs no padding. Prompts are assembled at the token level from
  separately tokenised pieces (each piece starts with its separator, so the pieces meet where the
  tokenizer splits anyway); the last few tokens of the context are a *truncated* haystack unit (RULER's
  essay haystack is likewise cut mid-sentence), never a needle.
* **Answer budgets for any tokenizer**: RULER's ``tokens_to_generate`` were sized for Llama tokenizers. A
  sample's budget is the larger of RULER's and what *this* tokenizer needs to write the gold answer the
  way the answer prefix asks for it (numbers cost a token per digit in Qwen's tokenizer: four 7-digit
  values are ~40 tokens), plus slack for separators, list numbers and a closing phrase
  (:func:`answer_budget`). The budget must fit in the ``reserve`` (prompt + answer <= L); a sample whose
  answer would not fit is refused with the reserve it needs.
* **Chat template**: the task text is the user turn of the model's chat template; the assistant turn
  starts with the answer prefix (RULER appends the prefix after the model template too; we drop its
  leading space, because the assistant header ends with a newline, and the trailing space of vt's
  prefix, which would leave a lone space token for the model to continue from).

Every sample is a deterministic function of ``(seed, task, length, index)`` and the tokenizer.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Iterator, Sequence
from functools import cache, lru_cache

from . import words
from .prompt_builder import (
    PieceStream,
    PromptBuilder,
    Unit,
    fit_to_budget,
    layout_pieces,
    take_tokens,
)
from .qa import make_item
from .tasks import (
    BUDGET_PER_ITEM,
    BUDGET_SLACK,
    DEFAULT_RESERVE,
    DEPTHS,
    DISPLAY_NAMES,
    FACT_SHARE,
    FORMATS,
    MIN_PROMPT_TOKENS,
    NIAH_NEEDLE,
    NOISE,
    PROMPT_FORMAT,
    QA_TASKS,
    TASK_NAMES,
    TASKS,
    TEMPLATES,
    Sample,
    TaskSpec,
    answer_budget,
    answer_text,
    parse_tasks,
    task_spec,
)

# ---------------------------------------------------------------------------------------------
# Random values
# ---------------------------------------------------------------------------------------------


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:32]}"


def _needle_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return _number(rng)
    if kind == "uuids":
        return _uuid(rng)
    if kind == "words":
        return words.niah_key(rng)
    if kind == "noun_pairs":  # drawn through a RULER key, so the draws after it match the default format's
        return words.noun_pair(random.Random(words.niah_key(rng)))
    raise ValueError(kind)


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    h = hashlib.sha256(f"delta-attn-ruler|{seed}|{task}|{length}|{index}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


@lru_cache(maxsize=8)
def _zeta(alpha: float) -> float:
    n = 100_000  # partial sum + integral tail: error < 1e-12 for alpha = 2
    return sum(k**-alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1)


# ---------------------------------------------------------------------------------------------
# One function per task family: each returns (input_ids, answers, meta) with len == target
# ---------------------------------------------------------------------------------------------


def _haystack(
    builder: "PromptBuilder",
    kind: str,
    rng: random.Random,
    sep: str,
    avoid: set[str],
    type_k: str = "words",
    type_v: str = "numbers",
) -> Iterator[Unit]:
    """Endless haystack units: the noise paragraph, essay sentences, or random needles."""
    if kind == "noise":
        unit = (NOISE, builder.enc(sep + NOISE))
        while True:
            yield unit
    elif kind == "essay":
        sents, sent_ids = builder.essay()
        if sep != " ":
            raise ValueError("essay units are joined by spaces")
        i = rng.randrange(len(sents))  # every sample starts at its own sentence
        while True:
            yield sents[i], sent_ids[i]
            i = (i + 1) % len(sents)
    elif kind == "needle":
        while True:
            key = _needle_value(rng, type_k)
            if key not in avoid:
                text = NIAH_NEEDLE.format(type_needle_v=type_v, key=key, value=_needle_value(rng, type_v))
                yield text, builder.enc(sep + text)
    else:
        raise ValueError(f"unknown haystack {kind!r}")


def generate_niah(builder: "PromptBuilder", spec: TaskSpec, rng: random.Random, target: int):
    """niah_*: needles "One of the special magic {numbers} for {key} is: {value}." in a haystack."""
    p = spec.params
    type_k, type_v, hay = p["type_k"], p["type_v"], p["haystack"]
    num_k = max(p["num_k"], p["num_q"])
    keys: list[str] = []
    while len(keys) < num_k:
        k = _needle_value(rng, type_k)
        if k not in keys:
            keys.append(k)
    values = [[_needle_value(rng, type_v) for _ in range(p["num_v"])] for _ in keys]
    needles = [NIAH_NEEDLE.format(type_needle_v=type_v, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    depths = rng.sample(DEPTHS, len(needles))
    queried = rng.sample(range(num_k), p["num_q"])
    queries = [keys[i] for i in queried]
    answers = [v for i in queried for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix = TEMPLATES["niah"]
    noheader = "noheader" in spec.formats
    if noheader:  # the haystack follows the chat header directly; the question after it stays
        template = "{context}" + template[template.index("\n{context}") + len("\n{context}") :]
    type_v_eff = type_v
    if p["num_q"] * p["num_v"] == 1:  # RULER's singular rewrite (before the query is filled in)
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        prefix = prefix.replace("are", "is")
        type_v_eff = type_v[:-1]
    fill = lambda s: s.replace("{type_needle_v}", type_v_eff).replace("{query}", query)  # noqa: E731
    user_head, user_tail = fill(template).split("{context}" if noheader else "\n{context}")
    head, tail = builder.wrap(user_head, user_tail, fill(prefix))

    sep = " " if hay == "essay" else "\n"
    specials = [(n, builder.enc(sep + n)) for n in needles]
    stream = PieceStream(_haystack(builder, hay, rng, sep, set(keys), type_k, type_v))
    first_sep = "" if noheader else "\n"
    layout = lambda n: layout_pieces(builder, stream[0:n], specials, depths, first_sep=first_sep)  # noqa: E731
    budget = target - len(head) - len(tail)
    n, context = fit_to_budget(
        budget, lambda n: layout(n)[0], lambda n, d: take_tokens(stream.ids_from(n), d), start=max(1, budget // 40)
    )
    _, offsets, ends = layout(n)
    # the needles holding the answers, in the order of ``answers``
    answer_needles = [
        needles.index(NIAH_NEEDLE.format(type_needle_v=type_v, key=keys[i], value=v))
        for i in queried
        for v in values[i]
    ]
    meta = {
        "haystack": hay,
        "formats": list(spec.formats),
        "query": query,
        "haystack_units": n,
        "depths": [depths[i] for i in answer_needles],
        "all_depths": list(depths),
        "needle_offsets": [len(head) + offsets[i] for i in answer_needles],
        # [start, end) token indices of each answer needle's sentence (without the separator before it)
        "needle_spans": [
            [len(head) + offsets[i] + _lead_space(builder, context[offsets[i] : ends[i]]), len(head) + ends[i]]
            for i in answer_needles
        ],
    }
    meta["context_span"] = [len(head), len(head) + len(context)]
    return head + context + tail, answers, meta


def _lead_space(builder: "PromptBuilder", ids: list[int]) -> int:
    """How many of the first ``ids`` decode to whitespace only (the separator before a needle)."""
    n = 0
    while n < len(ids) and not builder.tok.decode(ids[n : n + 1]).strip():
        n += 1
    return n


def _vt_chain(rng: random.Random, num_hops: int, taken: set[str]) -> tuple[list[str], list[str], str]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        v = "".join(rng.choices(string.ascii_uppercase, k=5))
        if v not in names and v not in taken:
            names.append(v)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(num_hops)]
    return names, chain, value


def generate_vt(builder: "PromptBuilder", spec: TaskSpec, rng: random.Random, target: int):
    """vt: variable tracking, one chain of 4 hops in the noise haystack, after one worked example."""
    hops = spec.params["num_hops"]
    template, prefix = TEMPLATES["vt"]
    # RULER's in-context example: the same task on a short haystack, with its answer
    ex_names, ex_chain, ex_value = _vt_chain(rng, hops, set())
    ex_lines = [NOISE] * 6
    for j, pos in enumerate(sorted(rng.sample(range(len(ex_lines)), len(ex_chain)))):
        ex_lines.insert(pos + j, ex_chain[j])
    example = (
        template.format(context="\n".join(ex_lines), query=ex_value)
        + prefix.format(num_v=hops + 1, query=ex_value)
        + " ".join(ex_names)
    )
    names, chain, value = _vt_chain(rng, hops, set(ex_names))
    user_head, user_tail = template.replace("{query}", value).split("\n\n{context}")
    head, tail = builder.wrap(example + "\n\n" + user_head, user_tail, prefix.format(num_v=hops + 1, query=value))
    depths = sorted(rng.sample(DEPTHS, len(chain)))
    specials = [(c, builder.enc("\n" + c)) for c in chain]
    stream = PieceStream(_haystack(builder, "noise", rng, "\n", set()))
    layout = lambda n: layout_pieces(builder, stream[0:n], specials, depths, first_sep="\n\n")  # noqa: E731
    budget = target - len(head) - len(tail)
    n, context = fit_to_budget(
        budget, lambda n: layout(n)[0], lambda n, d: take_tokens(stream.ids_from(n), d), start=max(1, budget // 25)
    )
    meta = {
        "haystack": "noise",
        "depths": depths,
        "value": value,
        "haystack_units": n,
        "needle_offsets": [len(head) + o for o in layout(n)[1]],
    }
    meta["context_span"] = [len(head), len(head) + len(context)]
    return head + context + tail, names, meta


def _cwe_list(
    rng: random.Random, vocab: Sequence[str], num_words: int, rep_common: int, rep_uncommon: int, num_cw: int
) -> tuple[list[str], list[str]]:
    pool = rng.sample(list(vocab), num_words)
    common, uncommon = pool[:num_cw], pool[num_cw:]
    lst = common * rep_common + uncommon * rep_uncommon
    rng.shuffle(lst)
    return lst, common


def generate_cwe(builder: "PromptBuilder", spec: TaskSpec, rng: random.Random, target: int, length: int):
    """cwe: the 10 words repeated 30x (6x below 4K) among words repeated 3x (1x below 4K)."""
    p = spec.params
    template, prefix = TEMPLATES["cwe"]
    if length < 4096:  # RULER's short-context variant
        (ex_n, ex_c, ex_u), (rep_c, rep_u) = (20, 3, 1), (6, 1)
    else:
        (ex_n, ex_c, ex_u), (rep_c, rep_u) = (40, 10, 3), (p["freq_cw"], p["freq_ucw"])
    ex_list, ex_common = _cwe_list(rng, words.CWE_WORDS, ex_n, ex_c, ex_u, p["num_cw"])
    example = (
        template.format(context=" ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_list)))
        + prefix
        + " "
        + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_common))
    )
    user_head, user_tail = template.split("\n{context}")
    head, tail = builder.wrap(example + "\n" + user_head, user_tail, prefix)
    seed = rng.getrandbits(64)
    vocab = [w for w in words.CWE_WORDS if w not in set(ex_list)]
    max_n = len(vocab) - p["num_cw"]

    @cache
    def make(n: int) -> tuple[list[str], list[str]]:  # n uncommon words
        return _cwe_list(random.Random(seed), vocab, min(n, max_n) + p["num_cw"], rep_c, rep_u, p["num_cw"])

    def entry(i: int, w: str) -> list[int]:
        return builder.enc(("\n" if i == 1 else " ") + f"{i}.") + builder.enc(" " + w)

    def build(n: int) -> list[int]:
        if n > max_n:
            return [0] * (target + 1)  # vocabulary exhausted: stop the search here
        return [t for i, w in enumerate(make(n)[0], 1) for t in entry(i, w)]

    def once(n: int) -> Iterator[str]:
        """Words that appear once (fewer times than any other word): the unused vocabulary, then, when a long
        prompt has used it all up (32K tokens in Qwen's tokenizer), made-up words containing no common word."""
        lst, common = make(n)
        spare = sorted(set(vocab) - set(lst))
        random.Random(seed + 1).shuffle(spare)
        yield from spare
        r, seen = random.Random(seed + 2), set(vocab)
        while True:
            w = "".join(r.choices(string.ascii_lowercase, k=r.randint(5, 8)))
            if w not in seen and not any(c in w for c in common):
                seen.add(w)
                filler.append(w)
                yield w

    filler: list[str] = []

    def extra(n: int, d: int) -> list[int]:
        lst = make(n)[0]
        return take_tokens((entry(len(lst) + 1 + j, w) for j, w in enumerate(once(n))), d)

    budget = target - len(head) - len(tail)
    n, context = fit_to_budget(budget, build, extra, start=max(1, budget // 30))
    lst, common = make(n)
    meta = {"num_words": n + p["num_cw"], "list_len": len(lst), "repeats": [rep_c, rep_u]}
    if filler:
        meta["made_up_words"] = len(filler)
    meta["context_span"] = [len(head), len(head) + len(context)]
    return head + context + tail, list(common), meta


def generate_fwe(builder: "PromptBuilder", spec: TaskSpec, rng: random.Random, target: int):
    """fwe: coded words with Zipf(alpha) counts; the answer is the 3 most frequent after the '...' noise."""
    p = spec.params
    template, prefix = TEMPLATES["fwe"]
    vocab: set[str] = set()
    while len(vocab) < p["vocab_size"]:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=p["coded_wordlen"])))
    vocab_l = sorted(vocab)
    rng.shuffle(vocab_l)
    vocab_l[0] = "..."  # RULER: the top-ranked "word" is noise
    z = _zeta(p["alpha"])
    weights = [k ** -p["alpha"] / z for k in range(1, len(vocab_l) + 1)]
    seed = rng.getrandbits(64)
    user_head, user_tail = template.split(" {context}")
    head, tail = builder.wrap(user_head, user_tail, prefix)
    word_ids = builder.enc_many([" " + w for w in vocab_l])
    noise = word_ids[0]

    @cache
    def make(n: int) -> tuple[int, ...]:  # word indices for a nominal count of n words
        lst = [i for i, w in enumerate(weights) for _ in range(int(n * w))]
        random.Random(seed).shuffle(lst)
        return tuple(lst)

    def build(n: int) -> list[int]:
        return [t for i in make(n) for t in word_ids[i]]

    def extra(n: int, d: int) -> list[int]:
        return (noise * d)[:d]  # more '...' noise (already the most frequent "word", and to be ignored)

    budget = target - len(head) - len(tail)
    n, _ = fit_to_budget(budget, build, extra, start=max(1, budget // 3))
    lst = list(make(n))
    d = budget - len(build(n))
    if d and len(noise) == 1:  # spread the filler noise words over the text
        r = random.Random(seed + 1)
        for _ in range(d):
            lst.insert(r.randrange(len(lst) + 1), 0)
        context = [t for i in lst for t in word_ids[i]]
    else:
        context = build(n) + extra(n, d)
    meta = {"num_words": len(lst), "counts_top5": [lst.count(i) for i in range(5)]}
    meta["context_span"] = [len(head), len(head) + len(context)]
    return head + context + tail, vocab_l[1:4], meta


def _passages(builder: "PromptBuilder", rng: random.Random, min_words: int = 60) -> Iterator[str]:
    """Prose passages (consecutive essay-book sentences, >= ``min_words`` words) from random places."""
    sents = builder.essay()[0]
    while True:
        i, out = rng.randrange(len(sents)), []
        while sum(len(x.split()) for x in out) < min_words:
            out.append(sents[i % len(sents)])
            i += 1
        yield " ".join(out)


def generate_qa(builder: "PromptBuilder", spec: TaskSpec, rng: random.Random, target: int):
    """qa_1 / qa_2 (offline substitutes): gold documents among distractor documents (see eval/qa.py)."""
    item = make_item(spec.params["hops"], rng)
    template, prefix = TEMPLATES["qa"]
    user_head, user_tail = template.replace("{query}", item.question).split("\n\n{context}")
    head, tail = builder.wrap(user_head, user_tail, prefix)
    depths = sorted(rng.sample(DEPTHS, len(item.gold)))
    stream = PieceStream((d, []) for d in item.distractors(_passages(builder, rng), spec.params.get("fact_share", 1.0)))

    def order(n: int) -> list[str]:
        docs = [u[0] for u in stream[0:n]]
        for depth, g in zip(depths, item.gold):  # ascending depths: earlier inserts keep later slots valid
            docs.insert(int(len(docs) * depth / 100), g)
        return docs

    def doc(i: int, body: str) -> list[int]:
        return builder.enc(f"\n\nDocument {i}:") + builder.enc("\n" + body)

    def build(n: int) -> list[int]:
        return [t for i, body in enumerate(order(n), 1) for t in doc(i, body)]

    def extra(n: int, d: int) -> list[int]:  # truncated further distractor documents
        k = n + len(item.gold)
        return take_tokens((doc(k + j + 1, u[0]) for j, u in enumerate(stream[n : n + 64])), d)

    budget = target - len(head) - len(tail)
    n, context = fit_to_budget(budget, build, extra, start=max(1, budget // 150))
    docs = order(n)
    meta = {
        "question": item.question,
        "kind": item.kind,
        "num_docs": len(docs),
        "gold_docs": [docs.index(g) + 1 for g in item.gold],
        "depths": depths,
    }
    meta["context_span"] = [len(head), len(head) + len(context)]
    return head + context + tail, item.answers, meta


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def prompt_tokens_for(length: int, reserve: int = DEFAULT_RESERVE) -> int:
    """The exact prompt length of every sample at nominal length ``length``."""
    if length - reserve < MIN_PROMPT_TOKENS:
        raise ValueError(
            f"length {length} leaves fewer than {MIN_PROMPT_TOKENS} prompt tokens after the {reserve}-token "
            "answer reserve"
        )
    return length - reserve


def generate_sample(
    builder: PromptBuilder, task: str, length: int, index: int, *, seed: int = 0, reserve: int = DEFAULT_RESERVE
) -> Sample:
    """Sample ``index`` of ``task`` at nominal length ``length`` (deterministic)."""
    spec = task_spec(task)
    rng = sample_rng(seed, spec.base, length, index)  # a format variant draws what the default format draws
    target = prompt_tokens_for(length, reserve)
    try:
        return _generate(builder, spec, rng, target, length, index)
    except ValueError as exc:
        raise ValueError(f"{task} at length {length}: {exc}") from None


def _generate(
    builder: PromptBuilder, spec: TaskSpec, rng: random.Random, target: int, length: int, index: int
) -> Sample:
    task = spec.name  # canonical (formats in FORMATS order): what the records carry
    if spec.family == "niah":
        ids, answers, meta = generate_niah(builder, spec, rng, target)
    elif spec.family == "vt":
        ids, answers, meta = generate_vt(builder, spec, rng, target)
    elif spec.family == "cwe":
        ids, answers, meta = generate_cwe(builder, spec, rng, target, length)
    elif spec.family == "fwe":
        ids, answers, meta = generate_fwe(builder, spec, rng, target)
    else:
        ids, answers, meta = generate_qa(builder, spec, rng, target)
    if len(ids) != target:
        raise AssertionError(f"{task}@{length}#{index}: built {len(ids)} tokens, wanted {target}")
    budget, meta["answer_tokens"] = answer_budget(builder, spec, answers)
    if target + budget > length:
        raise ValueError(
            f"the answer needs a budget of {budget} tokens in this tokenizer, more than the {length - target}-token "
            f"reserve: pass --reserve {budget} or more"
        )
    return Sample(task, length, index, ids, list(answers), budget, spec.metric, meta)


def generate_samples(
    builder: PromptBuilder,
    tasks: Sequence[str],
    lengths: Sequence[int],
    num_samples: int,
    *,
    seed: int = 0,
    reserve: int = DEFAULT_RESERVE,
    progress: bool = False,
) -> list[Sample]:
    """All samples for tasks × lengths × range(num_samples), ordered by (length, task, index)."""
    jobs = [(t, L, i) for L in lengths for t in tasks for i in range(num_samples)]
    it = jobs
    if progress:
        from tqdm import tqdm

        it = tqdm(jobs, desc="generate prompts", unit="prompt", mininterval=2.0)
    return [generate_sample(builder, t, L, i, seed=seed, reserve=reserve) for t, L, i in it]


__all__ = [  # the task table (tasks.py) and the prompt builder (prompt_builder.py) are part of this API
    "TASKS",
    "TASK_NAMES",
    "QA_TASKS",
    "DISPLAY_NAMES",
    "TaskSpec",
    "FORMATS",
    "task_spec",
    "Sample",
    "PromptBuilder",
    "parse_tasks",
    "generate_sample",
    "generate_samples",
    "prompt_tokens_for",
    "answer_budget",
    "answer_text",
    "NIAH_NEEDLE",
    "NOISE",
    "TEMPLATES",
    "DEPTHS",
    "generate_niah",
    "generate_vt",
    "generate_cwe",
    "generate_fwe",
    "generate_qa",
    "FACT_SHARE",
    "DEFAULT_RESERVE",
    "MIN_PROMPT_TOKENS",
    "BUDGET_PER_ITEM",
    "BUDGET_SLACK",
    "PROMPT_FORMAT",
    "fit_to_budget",
    "take_tokens",
    "Unit",
    "layout_pieces",
    "PieceStream",
]
