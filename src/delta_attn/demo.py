"""``delta-attn demo``: needle-in-a-haystack retrieval with a real model, four prefill methods.

A real model (default SmolLM2-135M-Instruct, offline; ``--model`` takes any of :mod:`delta_attn.models`)
reads prompts of a few thousand tokens that hide one RULER-style needle ("One of the special magic numbers
for {key} is: {value}.") in a haystack — RULER's noise sentences or public-domain Shakespeare/Milton
(:mod:`delta_attn.data.texts`) — and answers after a chat-template question and an answer prefix
(RULER niah_single_1 / _2 style).
Every method prefills the prompt its own way and then decodes greedily and densely over the full KV
cache (the paper's protocol):

  dense      exact causal attention
  sparse     the sparse base alone (sink + sliding window): cheap, but its KV cache drifts
  recompute  sparse, with every γ-th row and the tail recomputed densely (no broadcast)
  delta      sparse + Δ correction (same dense rows as recompute, Δ broadcast over each γ-block)

The table gives each method's answers, accuracy, prefill time and its prefill attention cost as a
fraction of dense causal attention (query-key pairs; see :func:`prefill_attention_pairs`).

To fit a 2-core CPU budget, the prompts of one haystack differ only from their shallowest needle on
(default depths 0.5–0.9), so the haystack before it is prefilled once per method and continued for
each prompt with :func:`delta_attn.chunked_prefill` — exactly equal to prefilling each prompt alone.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from dataclasses import dataclass

from . import cli_options as opt
from .eval.ruler import NOISE  # RULER's noise haystack sentence
from .prompts import chat_frame

NEEDLE = "One of the special magic numbers for {key} is: {value}."
TEMPLATE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n{context}\n"
    "What is the special magic number for {key} mentioned in the provided text?"
)
# With a tokenizer that writes the space before a number as its own token (SmolLM2, Qwen2.5, Llama-2) the
# trailing space is kept, so the first answer token is the first digit and is predicted by the prompt's last
# row (as with RULER on Llama tokenizers) -- not by a free dense decode step. A tokenizer that merges the space
# into the number (" 123") gets the prefix without it, else the prompt would end in an unnatural split.
ANSWER_PREFIX = "The special magic number for {key} mentioned in the provided text is "
KEYS = (
    "quiet-harbor",
    "amber-falcon",
    "silver-orchard",
    "hollow-meadow",
    "crimson-lantern",
    "gentle-tundra",
    "rapid-canyon",
    "velvet-comet",
    "frosty-willow",
    "golden-marsh",
    "lucky-pebble",
    "misty-summit",
    "brave-kettle",
    "shiny-brook",
    "sleepy-anchor",
    "wild-compass",
)
METHODS = ("dense", "sparse", "recompute", "delta")  # every mode of config.MODES, in the order of the table


# ---------------------------------------------------------------------------------------------
# cost


def prefill_attention_pairs(config, n: int) -> int:
    """Query-key pairs one head scores in a prefill of ``n`` tokens under ``config`` (:mod:`delta_attn.cost`).

    As the reference backend computes it: the sparse pass over every row plus, for ``delta``/``recompute``,
    the dense rows (``dense``: n(n+1)/2). Exact for the static bases; other bases raise ``ValueError``.
    """
    from .cost import prefill_cost  # imports torch: not at module level (the CLI's --help stays light)

    cost = prefill_cost(config, n)
    return cost.base + cost.dense_rows


def dense_fraction(config, n: int) -> float:
    """:func:`prefill_attention_pairs` relative to dense causal attention."""
    from .cost import causal_pairs

    return prefill_attention_pairs(config, n) / causal_pairs(n)


# ---------------------------------------------------------------------------------------------
# prompts


@dataclass
class Needle:
    key: str
    value: str
    depth: float  # relative position in the haystack


@dataclass
class Haystack:
    """Single-needle prompts that share one haystack, built at token level.

    Prompt i is ``shared_ids + rest_ids[i]``: ``shared_ids`` is the chat template and the haystack up to
    the shallowest needle; ``rest_ids[i]`` is the rest of the haystack with needle i (only) inserted at
    its depth, then the question for needle i and the answer prefix. Every prompt has the same length
    (equal-length keys), so one prefill of ``shared_ids`` (told the final prompt length) serves them all
    exactly: each prompt's result equals a one-shot prefill of the whole prompt.
    """

    kind: str  # "noise" or "text"
    shared_ids: list[int]
    rest_ids: list[list[int]]
    needles: list[Needle]

    @property
    def prompt_len(self) -> int:
        return len(self.shared_ids) + len(self.rest_ids[0])


def _units(kind: str, rng: random.Random) -> list[str]:
    """Haystack pieces, each with its leading separator: noise sentences, or corpus lines from a random offset."""
    if kind == "noise":
        return [" " + u.rstrip(".") + "." for u in NOISE.split(". ")]
    from .data import texts

    corpus = texts.corpus()
    start = rng.randrange(0, max(1, len(corpus) - 100_000))
    lines = corpus[start : start + 100_000].split("\n")[1:]  # drop the partial first line
    return ["\n" + line.strip() for line in lines if line.strip()]


def _space_before_digits_is_own_token(tokenizer) -> bool:
    ids = tokenizer(" 1234567", add_special_tokens=False)["input_ids"]
    return bool(ids) and tokenizer.decode(ids[:1]) == " "


def _split_chat(tokenizer, key: str) -> tuple[str, str]:
    """(text before the context, text after it) of the chat prompt asking for ``key``, answer prefix included."""
    before, after = TEMPLATE.format(key=key, context="\x00").split("\x00")
    prefix = ANSWER_PREFIX.format(key=key)
    if not _space_before_digits_is_own_token(tokenizer):
        prefix = prefix.rstrip()
    return chat_frame(tokenizer).around(before, after, prefix)


def answer_budget(tokenizer, hays: list["Haystack"]) -> int:
    """Decode steps that fit every needle's value and the sentence end in this tokenizer (digits may be a
    token each), plus two tokens of slack."""
    values = [nd.value for hay in hays for nd in hay.needles]
    return max(len(tokenizer(" " + v + ".", add_special_tokens=False)["input_ids"]) for v in values) + 2


def needle_depths(n: int, min_depth: float = 0.5, max_depth: float = 0.9) -> list[float]:
    """``n`` depths evenly spread over [min_depth, max_depth] (the middle for n = 1)."""
    if n == 1:
        return [(min_depth + max_depth) / 2]
    return [min_depth + (max_depth - min_depth) * i / (n - 1) for i in range(n)]


def build_haystack(tokenizer, n_tokens: int, kind: str, depths: list[float], rng: random.Random) -> Haystack:
    """Prompts of at most ``n_tokens`` tokens, one per depth, each hiding one needle in a ``kind`` haystack."""
    tok = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    by_len: dict[tuple[int, int], list[str]] = {}
    for key in KEYS:  # equal needle and question lengths => equal prompt lengths => one shared prefill
        shape = (len(tok(" " + NEEDLE.format(key=key, value="1234567"))), len(tok(_split_chat(tokenizer, key)[1])))
        by_len.setdefault(shape, []).append(key)
    pool = max(by_len.values(), key=len)
    if len(pool) < len(depths):
        raise ValueError(f"at most {len(pool)} needles per haystack (keys of equal token length)")
    needles = [
        Needle(k, str(rng.randrange(1_000_000, 10_000_000)), d)
        for k, d in zip(rng.sample(pool, len(depths)), sorted(depths))
    ]
    lead = " " if kind == "noise" else "\n"
    needle_ids = [tok(lead + NEEDLE.format(key=nd.key, value=nd.value)) for nd in needles]
    question_ids = [tok(_split_chat(tokenizer, nd.key)[1]) for nd in needles]
    before_ids = tok(_split_chat(tokenizer, needles[0].key)[0])
    units = _units(kind, rng)
    unit_ids = [tok(u) for u in units]
    fixed = len(before_ids) + len(needle_ids[0]) + len(question_ids[0])
    if n_tokens < fixed + 64:
        raise ValueError(f"a {n_tokens}-token prompt leaves no room for a haystack: use at least {fixed + 64} tokens")
    hay: list[int] = []
    cuts = [0]  # token offsets of unit boundaries: needles go between units
    while len(hay) + len(unit_ids[(len(cuts) - 1) % len(units)]) <= n_tokens - fixed:  # noise cycles; text runs on
        hay += unit_ids[(len(cuts) - 1) % len(units)]
        cuts.append(len(hay))
    at = [cuts[round(nd.depth * (len(cuts) - 1))] for nd in needles]
    shared = before_ids + hay[: at[0]]
    rest = [hay[at[0] : a] + nid + hay[a:] + qid for a, nid, qid in zip(at, needle_ids, question_ids)]
    return Haystack(kind, shared, rest, needles)


def build_haystacks(
    tokenizer, n_haystacks: int, n_tokens: int, kind: str, depths: list[float], seed: int
) -> list[Haystack]:
    """``n_haystacks`` haystacks with one prompt per depth; ``kind="both"`` alternates noise and text."""
    rng = random.Random(seed)
    kinds = ["noise", "text"] if kind == "both" else [kind]
    return [build_haystack(tokenizer, n_tokens, kinds[i % len(kinds)], depths, rng) for i in range(n_haystacks)]


# ---------------------------------------------------------------------------------------------
# running


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def answer_needles(model, tokenizer, hay: Haystack, max_new_tokens: int, chunk_size: int | None = None):
    """Prefill ``hay``'s shared part once with the model's method, then for every prompt prefill the rest
    (same method, same absolute positions; its end is the exact tail for ``delta``/``recompute``) and
    decode greedily and densely over the full cache.

    Each answer equals what a one-shot prefill of the whole prompt followed by dense decoding gives.
    Returns ``(answers, prefill_seconds)``: per prompt, the shared prefill's time plus its own rest.
    """
    import torch

    from .chunked import chunked_prefill
    from .generation import Prefilled, SamplingParams, decode, stop_token_ids

    device = next(model.parameters()).device
    prefix = torch.tensor([hay.shared_ids], device=device)
    _sync(device)
    t0 = time.perf_counter()
    pre = chunked_prefill(model, prefix, chunk_size=chunk_size or prefix.shape[1], prompt_len=hay.prompt_len)
    _sync(device)
    prefix_seconds = time.perf_counter() - t0
    params = [SamplingParams(max_new_tokens, stop_token_ids=stop_token_ids(tokenizer))]
    answers, seconds = [], []
    for rest in hay.rest_ids:
        ids = torch.tensor([rest], device=device)
        t0 = time.perf_counter()
        out = chunked_prefill(
            model,
            ids,
            chunk_size=chunk_size or ids.shape[1],
            past_key_values=copy.deepcopy(pre.past_key_values),
            state=copy.deepcopy(pre.state),
        )
        _sync(device)
        seconds.append(prefix_seconds + time.perf_counter() - t0)
        result = decode(model, Prefilled(out.past_key_values, out.logits, out.attention_mask), params)
        answers.append(tokenizer.decode(result.tokens[0], skip_special_tokens=True).strip())
    return answers, seconds


def _shown(answer: str) -> str:
    words = answer.split()
    return words[0].strip(".,")[:12] if words else "''"


def _check(args) -> tuple[dict, object]:
    """Every check that needs no model (run before it loads); returns the method configs by name and the
    model's facts."""
    from .models import model_info

    if args.min_depth > args.max_depth:
        raise opt.UsageError(f"--min-depth {args.min_depth} is deeper than --max-depth {args.max_depth}")
    info = model_info(args.model, rope_scaling=args.rope_scaling)
    opt.check_fits_context(
        args.length, info.context_length, args.allow_overflow, what="--length", note=info.context_note
    )
    opt.check_device(args.device)
    configs = {m: opt.delta_config(args, f"method {m}", mode=m) for m in args.methods}
    return configs, info


def run(args) -> int:
    t_start = time.perf_counter()
    configs, info = _check(args)  # before the heavy imports: a mistake is reported at once

    from tqdm.auto import tqdm

    from .hf import enable
    from .models import load_model, load_tokenizer

    opt.setup_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    depths = needle_depths(args.needles, args.min_depth, args.max_depth)
    try:
        hays = build_haystacks(tokenizer, args.samples, args.length, args.haystack, depths, args.seed)
    except ValueError as exc:  # the length or the needle count does not fit
        raise opt.UsageError(str(exc)) from None
    max_new_tokens = args.max_new_tokens or answer_budget(tokenizer, hays)
    print(f"loading {info.title} ({info.file}){info.context_note} ...", flush=True)
    model, tokenizer = load_model(args.model, device=args.device, rope_scaling=args.rope_scaling)
    device = next(model.parameters()).device
    n_mean = sum(h.prompt_len for h in hays) / len(hays)
    print(
        f"{len(hays)} haystacks x {args.needles} single-needle prompts of ~{n_mean:.0f} tokens ({args.haystack}) on "
        f"{device}; base {args.sparse} sink {args.sink} + window {args.window}, gamma {args.gamma}; "
        "dense decode for every method",
        flush=True,
    )

    results = {}  # (method, haystack index) -> (answers, seconds per prompt)
    bar = tqdm(total=len(hays) * len(args.methods), desc="prefill+answer", unit="haystack", file=sys.stderr)
    for method in args.methods:
        enable(model, configs[method])
        for h, hay in enumerate(hays):
            bar.set_postfix_str(f"{method} #{h}")
            results[method, h] = answer_needles(model, tokenizer, hay, max_new_tokens, args.chunk_size)
            bar.update()
    bar.close()

    print()
    print(f"{'#':>3}  {'haystack':8}  {'depth':>5}  {'needle':>7}  " + "  ".join(f"{m:>11}" for m in args.methods))
    for h, hay in enumerate(hays):
        for i, nd in enumerate(hay.needles):
            cells = []
            for m in args.methods:
                ans = results[m, h][0][i]
                cells.append(f"{('✓ ' if nd.value in ans else '✗ ') + _shown(ans):>11}")
            print(f"{h}.{i}  {hay.kind:8}  {nd.depth:5.2f}  {nd.value:>7}  " + "  ".join(cells))
    print()
    print(f"{'method':10} {'correct':>8} {'accuracy':>9} {'prefill s/prompt':>17} {'attn FLOPs vs dense':>20}")
    for m in args.methods:
        ok = [nd.value in ans for h, hay in enumerate(hays) for nd, ans in zip(hay.needles, results[m, h][0])]
        secs = [s for h in range(len(hays)) for s in results[m, h][1]]
        try:
            frac = sum(dense_fraction(configs[m], hay.prompt_len) for hay in hays) / len(hays)
            frac_s = f"{100 * frac:.1f}%"
        except ValueError:
            frac_s = "n/a"
        print(f"{m:10} {sum(ok):>4}/{len(ok):<3} {sum(ok) / len(ok):9.2f} {sum(secs) / len(secs):17.2f} {frac_s:>20}")
    print(
        f"\ntotal wall time {time.perf_counter() - t_start:.0f} s. Prefill s/prompt: the haystack part the prompts "
        "share (prefilled once) + the prompt's own rest. On CPU, sparse/recompute/delta run the PyTorch reference "
        "backend and dense runs SDPA."
    )
    return 0


def _methods(text: str) -> list[str]:
    """``--methods``: a comma-separated subset of :data:`METHODS`, in the order given."""
    items = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in items if m not in METHODS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {','.join(METHODS)}")
    return items


def register(subparsers) -> None:
    p = opt.add_command(
        subparsers,
        "demo",
        "needle-in-a-haystack with a real model (default SmolLM2): dense vs sparse vs recompute vs Δ",
        __doc__,
    )
    p.add_argument("--samples", type=opt.positive_int, default=2, help="haystacks (default 2: one noise, one text)")
    p.add_argument(
        "--needles",
        type=opt.positive_int,
        default=2,
        help="single-needle prompts per haystack, needles at depths spread over [--min-depth, --max-depth] (default 2)",
    )
    p.add_argument(
        "--min-depth",
        type=opt.fraction,
        default=0.5,
        help="shallowest needle (default 0.5: prompts share the haystack before it, so lower is slower)",
    )
    p.add_argument("--max-depth", type=opt.fraction, default=0.9, help="deepest needle (default 0.9)")
    p.add_argument("--length", type=opt.positive_int, default=4096, help="prompt length in tokens (default 4096)")
    p.add_argument(
        "--haystack",
        default="both",
        choices=("noise", "text", "both"),
        help="RULER noise sentences, Shakespeare/Milton text, or alternate (default both)",
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default all four)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=opt.positive_int,
        default=None,
        help="decode budget per answer (default: the tokens of a needle value and a period in this tokenizer, + 2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of keys, values and haystack offsets (default 0)")
    # no "linear": it is non-causal, and the demo continues shared haystack prefixes chunk-wise
    opt.add_method_options(p, window=256, sink=64, gamma=64, interps=("repeat", "ema", "abg"))
    opt.add_chunk_option(p)
    opt.add_model_options(p)
    opt.add_overflow_option(p)
    p.set_defaults(func=run)
