"""The RULER-style task table: RULER's templates, the task specs (``TASKS``), prompt formats, task-name parsing.

The templates follow RULER's scripts/data/synthetic/constants.py, the table its synthetic.yaml; the generators
that fill them are in :mod:`delta_attn.eval.ruler`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .prompt_builder import PromptBuilder

NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(i * 100 / 39) for i in range(40)]  # RULER: np.round(np.linspace(0, 100, 40))

TEMPLATES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
        "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    ),
    "vt": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assgined the value {query}, they are: ",  # [sic] "assgined", as in RULER
    ),
    "cwe": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
        "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
    ),
    "fwe": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
    ),
}


#: share of qa distractor paragraphs that are synthetic facts (the rest are prose passages from the
#: essay books); with only fact paragraphs SmolLM2-135M answers qa_1 at 1K in ~10% of cases (CPU check)
FACT_SHARE = 0.25


@dataclass(frozen=True)
class TaskSpec:
    """One RULER task: family, answer budget (tokens to generate), metric and parameters."""

    name: str
    family: str  # niah | vt | cwe | fwe | qa
    max_new_tokens: int
    metric: str  # "all" (string_match_all) | "part" (string_match_part)
    params: dict = field(default_factory=dict)
    formats: tuple[str, ...] = ()  # prompt-format variants (see FORMATS), in FORMATS order

    @property
    def is_qa(self) -> bool:
        return self.family == "qa"

    @property
    def base(self) -> str:
        """The RULER task this spec is a format variant of (its own name when it is none)."""
        return self.name.partition("@")[0]

    @property
    def needs_texts(self) -> bool:
        """Whether its prompts read the public-domain texts (essay haystack or QA passages)."""
        return self.params.get("haystack") == "essay" or self.is_qa


def _niah(name, haystack, k, v, nk=1, nv=1, nq=1):
    return TaskSpec(name, "niah", 128, "all", dict(haystack=haystack, type_k=k, type_v=v, num_k=nk, num_v=nv, num_q=nq))


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _niah("niah_single_1", "noise", "words", "numbers"),
        _niah("niah_single_2", "essay", "words", "numbers"),
        _niah("niah_single_3", "essay", "words", "uuids"),
        _niah("niah_multikey_1", "essay", "words", "numbers", nk=4),
        _niah("niah_multikey_2", "needle", "words", "numbers"),
        _niah("niah_multikey_3", "needle", "uuids", "uuids"),
        _niah("niah_multivalue", "essay", "words", "numbers", nv=4),
        _niah("niah_multiquery", "essay", "words", "numbers", nq=4),
        TaskSpec("vt", "vt", 30, "all", dict(num_chains=1, num_hops=4)),
        TaskSpec("cwe", "cwe", 120, "all", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
        TaskSpec("fwe", "fwe", 50, "all", dict(alpha=2.0, coded_wordlen=6, vocab_size=2000)),
        TaskSpec("qa_1", "qa", 32, "part", dict(hops=1, fact_share=FACT_SHARE)),
        TaskSpec("qa_2", "qa", 32, "part", dict(hops=2, fact_share=FACT_SHARE)),
    ]
}
TASK_NAMES = list(TASKS)
QA_TASKS = [t for t in TASK_NAMES if TASKS[t].is_qa]
#: how tables name tasks (the QA tasks are offline substitutes, say so everywhere)
DISPLAY_NAMES = {t: t for t in TASK_NAMES} | {"qa_1": "qa_1 (offline subst.)", "qa_2": "qa_2 (offline subst.)"}
DEFAULT_RESERVE = 128
#: no task fits in fewer prompt tokens (most need more: the generators say how many when they do not fit)
MIN_PROMPT_TOKENS = 256
#: tokens a budget allows beyond the gold answer's own: per answer item (a separator and a space or list
#: number) and once per sample (punctuation, a short closing phrase, the end-of-turn token). Kept tight on
#: purpose: string_match_all rewards recall, so a budget far beyond the answer lets a rambling model collect
#: answers it did not give (RULER's own budgets are about twice the answer: vt 30 for ~15 tokens)
BUDGET_PER_ITEM = 2
BUDGET_SLACK = 8


def answer_text(family: str, answers: Sequence[str]) -> str:
    """The gold answer written as the task's answer prefix asks for it (what a correct model generates)."""
    if family == "cwe":  # the in-context example answers "1. word 2. word ..."
        return " " + " ".join(f"{i}. {w}" for i, w in enumerate(answers, 1))
    if family in ("vt", "fwe"):
        return " " + " ".join(answers)
    if family == "qa":  # any one reference scores: the longest one must fit
        return " " + max(answers, key=len)
    return " " + ", ".join(answers[:-1]) + (", and " if len(answers) > 1 else "") + answers[-1]


def answer_budget(builder: "PromptBuilder", spec: TaskSpec, answers: Sequence[str]) -> tuple[int, int]:
    """(max_new_tokens, tokens of the gold answer) of a sample in ``builder``'s tokenizer: at least RULER's
    budget for the task, and at least the answer's tokens plus :data:`BUDGET_PER_ITEM` per item and
    :data:`BUDGET_SLACK`."""
    items = 1 if spec.is_qa else len(answers)
    gold = len(builder.enc(answer_text(spec.family, answers)))
    return max(spec.max_new_tokens, gold + BUDGET_PER_ITEM * items + BUDGET_SLACK), gold


#: bump when a change to the generators changes prompts: result records carry it, and resuming or
#: reporting never mixes prompts of two formats under one setting. 2: answer budgets sized with the
#: model's tokenizer (:func:`answer_budget`; vt's grew from RULER's 30 to ~35 tokens, the prompts are unchanged)
PROMPT_FORMAT = 2


#: prompt-format variants of the NIAH tasks, selected by a task-name suffix and composable:
#: ``niah_single_1@noheader+hyphen+text``. Everything else (value, depth, length) stays as in the
#: default format: a variant of sample i draws the same value and needle depth as the default's sample i.
FORMATS = {
    "noheader": "no instruction line before the haystack (the question after it stays)",
    "hyphen": "keys are two hyphenated nouns (tiger-lamp) instead of RULER's adjective-noun keys",
    "text": "public-domain text haystack (the essay books) instead of the noise sentences",
    "noise": "noise-sentence haystack instead of the essay text",
}


def task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a task name, format suffixes included (``niah_single_1@noheader+hyphen``).

    The returned spec's name is canonical (formats in :data:`FORMATS` order), so that two spellings of
    one format never become two tasks in records. Unknown tasks or formats: ``ValueError`` naming the
    known ones.
    """
    base, at, suffix = name.partition("@")
    if base not in TASKS:
        raise ValueError(f"unknown task {base!r}; choose from {TASK_NAMES} or all/niah/qa/non_qa")
    spec = TASKS[base]
    if not at:
        return spec
    wanted = [f.strip() for f in suffix.split("+")]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise ValueError(
            f"unknown prompt format {'+'.join(unknown) or '(empty)'!r} in {name!r}; formats (join with '+'): "
            + ", ".join(f"@{f} ({why})" for f, why in FORMATS.items())
        )
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"{name!r} names a prompt format twice")
    if spec.family != "niah":
        raise ValueError(f"{name!r}: prompt formats apply to the NIAH tasks only, not to {base}")
    params = dict(spec.params)
    if "text" in wanted and "noise" in wanted:
        raise ValueError(f"{name!r}: @text (text haystack) and @noise (noise haystack) exclude each other")
    if "text" in wanted or "noise" in wanted:
        new = "essay" if "text" in wanted else "noise"
        if params["haystack"] != ("noise" if new == "essay" else "essay"):
            raise ValueError(
                f"{name!r}: {base} has the {params['haystack']} haystack; @text switches a noise haystack to "
                "text, @noise an essay haystack to noise"
            )
        params["haystack"] = new
    if "hyphen" in wanted:
        if params["type_k"] != "words":
            raise ValueError(f"{name!r}: @hyphen replaces word keys, and {base} has {params['type_k']} keys")
        params["type_k"] = "noun_pairs"
    formats = tuple(f for f in FORMATS if f in wanted)
    return TaskSpec(f"{base}@{'+'.join(formats)}", spec.family, spec.max_new_tokens, spec.metric, params, formats)


def parse_tasks(spec: str | Sequence[str] | None) -> list[str]:
    """``"all"``, ``"niah"`` (all 8 NIAH), ``"qa"``, ``"non_qa"`` or a comma list of task names
    (format variants such as ``niah_single_1@noheader+hyphen`` included, see :data:`FORMATS`)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or ["all"])
    out: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item == "all":
            names = TASK_NAMES
        elif item == "niah":
            names = [t for t in TASK_NAMES if TASKS[t].family == "niah"]
        elif item == "qa":
            names = QA_TASKS
        elif item == "non_qa":
            names = [t for t in TASK_NAMES if t not in QA_TASKS]
        else:
            names = [task_spec(item).name]
        out.extend(n for n in names if n not in out)
    if not out:  # e.g. "--tasks ," : an empty run would exit 0 having done nothing
        raise ValueError(f"no task named in {spec!r}; give task names or one of all, niah, qa, non_qa")
    return out


@dataclass
class Sample:
    """One prompt, already tokenised (``input_ids`` has exactly ``prompt_tokens`` ids)."""

    task: str
    length: int
    index: int
    input_ids: list[int]
    answers: list[str]
    max_new_tokens: int
    metric: str
    meta: dict = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return f"{self.task}/{self.length}/{self.index}"

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def to_dict(self) -> dict:
        return asdict(self)
