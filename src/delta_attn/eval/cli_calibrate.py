"""``delta-attn eval calibrate``: which Δ setting to use on this model at this length.

Which setting is best depends on the model: on Qwen2.5-Coder-1.5B at 32K plain Δ (λ = 1) beats λ = auto
and recompute on RULER, on SmolLM2-135M at 8K it is the other way round, and neither the per-prompt λ
estimator nor the sparse base's budget tells in advance. The KV cache each setting writes does: its
continuation perplexity (:mod:`delta_attn.eval.cppl`, the same records as ``eval ppl --continuation``) is
measured for each candidate on a few documents at the target length, and the recommendation is the **first
candidate in ``--candidates`` order whose perplexity is not significantly worse than the lowest** (two-sided
paired permutation test, p ≥ 0.05). The default order ``delta,delta_auto,recompute`` prefers the paper's full
correction and shrinks it only when its cache measurably suffers. On the two models measured (H100, 2026-12-07)
that picks the RULER winner: Δ on Qwen at 32K, λ = auto on SmolLM2 at 8K (window 256). Two models are not a
law. On the bundled SmolLM2 at 2K tokens (CPU, 2 minutes)::

    $ delta-attn eval calibrate --length 2048 --continuation 256 --docs 4 --out runs/cal
    Continuation perplexity of SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179c9523d0e at 2048 tokens: each
    candidate prefills 1792, the last 256 are scored densely; 4 documents

    candidate   ppl     NLL/token − best  p (two-sided)  attention ÷ dense
    recompute   30.869  best              –              0.4759
    delta       31.152  +0.0091           0.12           0.4504
    delta_auto  31.415  +0.0175           0.62           0.4504

    not significant: recompute and delta are both fine (p 0.12 ≥ 0.05); the cheaper is delta (0.4504 of dense
    attention's pairs vs 0.4759); recommended: delta, the first in the order given (delta, delta_auto,
    recompute) not significantly worse than recompute (p 0.12); with 4 documents no difference can reach
    p < 0.05 (the smallest two-sided p is 2/16): use --docs 6 or more
    DeltaConfig(window=256, sink=64)  # delta

(the default is 8 windows of the model's context, e.g. ``--model qwen2.5-coder-1.5b`` at 32K on a GPU, where
the smallest possible p is 2/256).

Each window of ``--length`` tokens (default: the model's context, at most 32768) is cut into a prefill of
L − M tokens, run with the candidate as one prompt, and its last M (``--continuation``) tokens, scored
teacher-forced with dense attention against the cache that prefill wrote, as decoding reads it. The
per-document NLL per token of the best candidate is compared with each other one's by a two-sided paired
permutation test (the test ``eval report`` uses); the output also says whether the lowest is
significantly better than the runner-up and, if not, which of the two costs fewer attention query-key pairs
(:mod:`delta_attn.cost`; within 1 % they cost the same).

Candidates are method specs (:mod:`delta_attn.methods`) from the ``--base --window --sink --gamma ...``
defaults; they must be causal (a non-causal setting cannot prefill in chunks, so it cannot be the setting
to deploy) and dense is none (``--dense`` adds it as a reference). The records go to ``<out>/ppl.jsonl``,
so ``eval report`` reads them and a second run, or one with ``--resume-from``, reuses those with the same
settings; ``<out>/calibrate.json`` holds the table and the recommendation, the last line printed is the
recommendation as Python.
"""

from __future__ import annotations

from . import cli_common as common

NAME = "calibrate"
HELP = "which Δ setting (Δ, λ = auto, recompute ...) to use on a model at a length: continuation perplexity"
METHOD_SPECS = True  # --help ends with the method spec syntax

DEFAULT_CANDIDATES = "delta,delta_auto,recompute"
#: the default --length is the model's context, at most this: the measurements behind the recommendation went
#: up to 32K, and the installed texts hold 8 windows of that length (fewer of longer ones)
MAX_DEFAULT_LENGTH = 32768
MIN_DOCS = 2  # the paired permutation test needs two pairs
#: attention pairs this close count as the same cost: the cost model leaves out work of about this size (the
#: Δ broadcast, λ's fit: O(N·d/γ)), so a smaller difference names no cheaper method
SAME_COST = 0.01
CALIBRATE_FILE = "calibrate.json"


def add_arguments(p) -> None:
    """``eval calibrate``'s options."""
    from ..cli_options import positive_int

    p.add_argument(
        "--length",
        type=positive_int,
        default=None,
        help=f"tokens per document window L, the length to calibrate for (default: the model's context, at most "
        f"{MAX_DEFAULT_LENGTH}; with --rope-scaling the scaled context)",
    )
    p.add_argument(
        "--docs",
        type=positive_int,
        default=8,
        help=f"documents (windows of public-domain works), at least {MIN_DOCS} for the paired test (default 8)",
    )
    p.add_argument(
        "--continuation",
        type=positive_int,
        default=1024,
        metavar="M",
        help="the last M tokens of each window are scored densely against the cache the candidate's prefill of "
        "the first L − M wrote (default 1024)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="documents per forward (default 16384 // length)"
    )
    p.add_argument(
        "--dense",
        action="store_true",
        help="also score dense attention, as a reference shown in the table (never recommended; default off)",
    )
    common.add_run_opts(
        p,
        methods=DEFAULT_CANDIDATES,
        stem="cppl",
        methods_flag="--candidates",
        methods_what="method specs to choose from, at least 2, causal",
        progress=False,
        summary=False,
    )


def run(args) -> int:
    # the checks first: a bad candidate is reported before the imports below load torch
    candidates = check_candidates(common.methods(args, args.candidates, option="--candidates"))
    check_docs(args.docs)
    check_scipy()
    from ..methods import parse_method
    from .cli_ppl import PPL_FILE, measure
    from .runner import Deadline

    info = common.model_info(args)
    args.length = args.length or default_length(info.context_length)
    reference = parse_method("dense") if args.dense else None
    methods = candidates + ([reference] if reference else [])
    log = common.Log(args.out / "calibrate.log")  # its first line comes after the checks: a refusal writes nothing
    measured = measure(
        args, methods, lengths=[args.length], conts=[args.continuation], log=log, info=info, lengths_option="--length"
    )
    if measured is None:
        return 0  # the time limit left no room (logged); a rerun measures
    docs = measured.docs[args.length]
    if len(docs) < MIN_DOCS:
        raise common.UsageError(
            f"--length {args.length}: the texts hold only {len(docs)} window(s) of that many tokens; the paired test "
            f"needs {MIN_DOCS}: choose a shorter --length"
        )
    records = common.earlier_records([args.out / PPL_FILE, *args.resume_from], log)
    nll = per_document_nll(records, measured.configs, args.length, args.continuation, docs)
    missing = {m.name: len(docs) - len(nll.get(m.name, {})) for m in methods if len(nll.get(m.name, {})) < len(docs)}
    if missing:
        stopped = not Deadline(args.time_limit, start=common.START).allows(0.0)
        why = "the time limit stopped the run" if stopped else "a method failed (calibrate.log says why)"
        lines = ", ".join(f"{m} ({n} of {len(docs)} documents)" for m, n in missing.items())
        result = {"complete": False, "missing": missing, "length": args.length, "continuation": args.continuation}
        _write_json(args.out / CALIBRATE_FILE, result)
        msg = f"no recommendation yet: missing {lines}; {why}. Run the same command again to resume"
        log(msg)
        print(msg)
        return 0 if stopped else 1
    result = calibration(candidates, nll, length=args.length, cont=args.continuation, reference=reference)
    result["model"] = info.model_id
    result["documents"] = docs
    _write_json(args.out / CALIBRATE_FILE, result)
    text = format_calibration(result, model=info.model_id)
    print(text)
    log(f"recommendation: {result['recommendation']['python']}; {result['note']}; in {args.out / CALIBRATE_FILE}")
    return 0


def default_length(context_length: int) -> int:
    """``--length``'s default: the model's context, at most :data:`MAX_DEFAULT_LENGTH`."""
    return min(context_length, MAX_DEFAULT_LENGTH)


def check_candidates(methods: list) -> list:
    """The ``--candidates`` one can be recommended among: no dense, none non-causal, at least two (UsageError)."""
    from ..config import CAUSAL_SETTINGS

    for m in methods:
        if m.is_dense:
            raise common.UsageError(
                f"--candidates {m.name}: dense is not a candidate (it is the model without Δ attention); "
                "add --dense to score it as a reference"
            )
        if not m.causal:
            raise common.UsageError(
                f"--candidates {m.name}: {m.config.non_causal_reason} is non-causal (rows read later anchors), so it "
                "cannot prefill in chunks (chunked prefill, vLLM, context parallel refuse it) and is no setting to "
                f"recommend; choose causal settings ({CAUSAL_SETTINGS})"
            )
    if len(methods) < 2:
        raise common.UsageError(
            f"--candidates {','.join(m.name for m in methods)}: name at least 2 methods to choose between "
            f"(default {DEFAULT_CANDIDATES})"
        )
    return methods


def check_docs(docs: int) -> None:
    if docs < MIN_DOCS:
        raise common.UsageError(
            f"--docs {docs}: the paired test needs at least {MIN_DOCS} documents (default 8; more make smaller "
            "differences significant)"
        )


def check_scipy() -> None:
    """The permutation test needs scipy: say how to install it before the model loads."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise common.UsageError(
            "eval calibrate needs scipy for its permutation tests: pip install 'delta-attn[eval]' (or scipy)"
        )


def per_document_nll(records, configs: dict, length: int, cont: int, docs: list) -> dict[str, dict[str, float]]:
    """method name -> {document: NLL per scored token} of the continuation records at (``length``, ``cont``) of
    ``docs`` whose config is this run's (``configs``: method name -> record config); others are not this run's."""
    from .records import config_of
    from .tables import CpplData

    runs = records.runs
    mine = [r for r in records.of("cppl") if r.get("method") in configs and config_of(r, runs) == configs[r["method"]]]
    # one config per method name is left, so the tables' labels are the method names
    per_doc = CpplData.from_records([*runs.values(), *mine]).per_doc(length, cont)
    docs = set(docs)
    return {name: {d: v for d, v in by_doc.items() if d in docs} for name, by_doc in per_doc.items()}


def calibration(candidates: list, nll: dict[str, dict[str, float]], *, length: int, cont: int, reference=None) -> dict:
    """The table and the recommendation from ``nll`` (method name -> {document: NLL per token}, every method on
    the same documents): ppl per candidate, best first, its NLL/token difference to the best with the two-sided
    paired permutation p, its attention cost, and whether the best is significantly better than the runner-up.
    ``reference`` (the dense Method, or None) gets a row last, never the recommendation."""
    import math
    import statistics

    from ..cost import prefill_cost
    from ..methods import config_expression
    from .stats import paired_permutation_test
    from .tables import ALPHA

    methods = candidates + ([reference] if reference is not None else [])
    docs = sorted(nll[candidates[0].name])
    # every window scores M tokens, so the pooled perplexity is exp of the mean per-document NLL per token
    mean = {m.name: statistics.fmean(nll[m.name][d] for d in docs) for m in methods}
    ranked = sorted(candidates, key=lambda m: mean[m.name])
    best, runner_up = ranked[0], ranked[1]

    def test(name: str):
        if name == best.name:
            return None
        return paired_permutation_test(
            [nll[name][d] for d in docs], [nll[best.name][d] for d in docs], alternative="two-sided"
        )

    def cost(m) -> float | None:
        if m.is_dense:
            return 1.0
        try:
            return prefill_cost(m.config, length - cont, allow_upper_bound=True).dense_fraction
        except ValueError:  # a base without an analytic cost
            return None

    rows = []
    for m in ranked + ([reference] if reference is not None else []):
        t = test(m.name)
        rows.append(
            {
                "method": m.name,
                "candidate": not m.is_dense,
                "ppl": math.exp(mean[m.name]),
                "nll_per_token": mean[m.name],
                "diff_to_best": None if t is None else t.diff,
                "p_value": None if t is None else t.p_value,
                "attention_vs_dense": cost(m),
                "config": m.canonical(),
                "python": None if m.is_dense else config_expression(m.config),
            }
        )
    p = rows[1]["p_value"]
    significant = p < ALPHA
    # the notes: one clause per finding (calibrate.json also keeps them "; "-joined as "note"), a line each printed
    if significant:
        notes = [f"{best.name} is significantly better than {runner_up.name} (p {_p(p)} < {ALPHA})"]
    else:
        notes = [
            f"not significant: {best.name} and {runner_up.name} are both fine (p {_p(p)} ≥ {ALPHA})",
            cheaper(best.name, rows[0]["attention_vs_dense"], runner_up.name, rows[1]["attention_vs_dense"]),
        ]
    # the recommendation: the first candidate, in the order given, not significantly worse than the lowest
    by_name = {r["method"]: r for r in rows}
    chosen = next(m for m in candidates if by_name[m.name]["p_value"] is None or by_name[m.name]["p_value"] >= ALPHA)
    pick = by_name[chosen.name]
    skipped = [m.name for m in candidates[: candidates.index(chosen)]]
    if chosen.name != best.name:
        notes.append(
            f"recommended: {chosen.name}, the first in the order given "
            f"({', '.join(m.name for m in candidates)}) not significantly worse than {best.name} "
            f"(p {_p(pick['p_value'])})"
        )
    if skipped:
        notes.append(f"{', '.join(skipped)} significantly worse than {best.name}, so not recommended")
    if 2 / 2 ** len(docs) >= ALPHA:  # the two-sided sign-flip test's smallest p: every document one way
        notes.append(
            f"with {len(docs)} documents no difference can reach p < {ALPHA} (the smallest two-sided p is "
            f"2/{2 ** len(docs)}): use --docs 6 or more"
        )
    return {
        "complete": True,
        "length": length,
        "continuation": cont,
        "prefill": length - cont,
        "candidates": rows,
        "best": best.name,
        "runner_up": runner_up.name,
        "p_best_vs_runner_up": p,
        "significant": significant,
        "alpha": ALPHA,
        "note": "; ".join(notes),
        "notes": notes,
        "rule": "the first candidate in the order given whose perplexity is not significantly worse than the lowest",
        "recommendation": {"method": chosen.name, "python": pick["python"], "config": pick["config"]},
    }


def cheaper(a: str, cost_a: float | None, b: str, cost_b: float | None) -> str:
    """Which of two methods costs fewer attention pairs (fractions of dense), in words."""
    if cost_a is None or cost_b is None:
        return "the cost model cannot count this base's pairs, so which is cheaper is not known"
    if abs(cost_a - cost_b) <= SAME_COST * max(cost_a, cost_b):
        return "they cost the same"
    name, c, other, o = (a, cost_a, b, cost_b) if cost_a < cost_b else (b, cost_b, a, cost_a)
    return f"the cheaper is {name} ({c:.4g} of dense attention's pairs vs {o:.4g})"


def format_calibration(result: dict, *, model: str) -> str:
    """The printed table: candidate, ppl, NLL/token difference to the best, p, cost; the note; then the
    recommendation as one line of Python."""
    rows = result["candidates"]
    head = ("candidate", "ppl", "NLL/token − best", "p (two-sided)", "attention ÷ dense")
    body = []
    for r in rows:
        name = r["method"] if r["candidate"] else f"{r['method']} (reference)"
        diff = "best" if r["diff_to_best"] is None else f"{r['diff_to_best']:+.4f}"
        p = "–" if r["p_value"] is None else _p(r["p_value"])
        cost = "?" if r["attention_vs_dense"] is None else f"{r['attention_vs_dense']:.4g}"
        body.append((name, f"{r['ppl']:.3f}", diff, p, cost))
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = [
        f"Continuation perplexity of {model} at {result['length']} tokens: each candidate prefills "
        f"{result['prefill']}, the last {result['continuation']} are scored densely; "
        f"{len(result['documents'])} documents",
        "",
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *body)]
    rec = result["recommendation"]
    lines += ["", *result["notes"], f"{rec['python']}  # {rec['method']}"]
    return "\n".join(lines)


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _write_json(path, result: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
