"""``delta-attn eval ppl``: PG-19-style perplexity of public-domain works by position range, per method.

Options, lengths (>= 2 tokens, within the model's context) and the texts are checked before the
model loads; earlier records are reused only when their settings match (the log says why others are
not).

``--continuation M[,M2]`` measures the KV cache instead (:mod:`delta_attn.eval.cppl`): each window's last M
tokens are scored densely against the cache the method's prefill of the first L − M wrote. Its records
(``"cppl"``) go to the same file; M must be shorter than every length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import cli_common as common

NAME = "ppl"
HELP = "PG-19-style perplexity by position range"
METHOD_SPECS = True  # --help ends with the method spec syntax


def add_arguments(p) -> None:
    """``eval ppl``'s options."""
    from ..cli_options import positive_int

    common.add_int_list_option(p, "--lengths", "8192", "context lengths (default 8192)")
    p.add_argument(
        "--docs", type=positive_int, default=29, help="documents (windows of public-domain works; default 29)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="documents per forward (default 16384 // length)"
    )
    common.add_int_list_option(
        p,
        "--continuation",
        None,
        "continuation perplexity instead of the row-wise one: prefill the first L − M tokens of each window "
        "with the method, score the last M densely against that cache, as decoding would (default off)",
        metavar="M[,M2]",
    )
    common.add_run_opts(p, methods="dense,sparse,recompute,delta,delta_g16", stem="ppl")


def run(args) -> int:
    methods = common.methods(args)  # first: a bad method is reported before the imports below load torch
    log = common.Log(args.out / "ppl.log")
    if measure(args, methods, lengths=args.lengths, conts=args.continuation, log=log) is None:
        return 0  # the time limit left no room to measure (logged)
    if not args.no_summary:
        from . import plots, tables

        recs = common.earlier_records([args.out / PPL_FILE, *args.resume_from], log)
        data = tables.PplData.from_records(recs.items)
        summary = tables.ppl_table(data)
        cdata = tables.CpplData.from_records(recs.items)
        if cdata.records:
            summary += "\n## Continuation perplexity\n\n" + tables.cppl_table(cdata)
        (args.out / "ppl_summary.md").write_text(summary)
        if args.plots:
            plots.plot_ppl(data, args.out / "ppl.png")
        log(f"summary: {args.out / 'ppl_summary.md'}")
    return 0


#: the records file of ``eval ppl`` (and ``eval calibrate``) in ``--out``
PPL_FILE = "ppl.jsonl"


@dataclass
class Measured:
    """What :func:`measure` scored: the record ``config`` per method name (records with another config under
    the same name are not this run's), and the documents (names) of each length."""

    configs: dict[str, dict]
    docs: dict[int, list[str]]


def measure(
    args,
    methods,
    *,
    lengths: Sequence[int],
    conts: Sequence[int] | None,
    log,
    info=None,
    lengths_option: str = "--lengths",
) -> Measured | None:
    """The measuring part of ``eval ppl``, shared with ``eval calibrate``: check the lengths, continuations and
    texts (before the model loads), then score every (document, length[, M], method) that ``<out>/ppl.jsonl``
    and ``--resume-from`` do not already hold with the same settings, appending the records.

    ``conts`` (``--continuation``) empty or None: row-wise perplexity; else continuation perplexity for each M.
    ``args`` supplies the model, device, texts, ``--docs``, ``--batch-size``, ``--out``, ``--resume-from`` and
    ``--time-limit``; ``info`` the model's facts when the caller has read them already. Returns None when the
    time limit is too short to load the model (logged; nothing was measured).
    """
    from .corpus import PPL_BOOKS
    from .cppl import run_cppl
    from .ppl import DOC_FORMAT, ppl_documents, run_ppl
    from .records import JsonlWriter, cppl_key, ppl_key, record_config, run_info
    from .resume import plan_resume
    from .runner import Deadline

    deadline = Deadline(args.time_limit, start=common.START)
    info = info or common.model_info(args)
    common.check_lengths(lengths, info, args, minimum=2, what=lengths_option)
    conts = check_continuations(conts, lengths)
    common.check_texts(PPL_BOOKS[: args.docs], args.texts_dir)
    device, dtype = common.device_and_dtype(args)
    out_jsonl = args.out / PPL_FILE
    if args.time_limit is not None and args.time_limit < 45:
        log(f"time limit {args.time_limit:.0f}s is too short for perplexity; skipping")
        return None
    configs = {
        m.name: record_config(
            m.canonical(),
            model=info.model_id,
            dtype=common.dtype_name(dtype),
            prompt={"format": DOC_FORMAT},
            rope_scaling=info.rope_spec,
        )
        for m in methods
    }
    earlier = common.earlier_records([out_jsonl, *args.resume_from], log)
    plan = plan_resume(earlier, "cppl", cppl_key, configs) if conts else plan_resume(earlier, "ppl", ppl_key, configs)
    for line in plan.lines():
        log(line)
    model, tok = common.load_model(args, device, dtype)
    measured = Measured(configs, {})
    with JsonlWriter(out_jsonl, warn=log) as w:
        header = run_info(
            args,
            model,
            {
                "kind": "cppl" if conts else "ppl",
                "continuation": conts,
                "methods": {m.name: m.config_dict() for m in methods},
            },
            model_info=info,
        )
        w.write([header])
        for length in lengths:
            docs = ppl_documents(tok, length, args.docs, args.texts_dir)
            measured.docs[length] = [name for name, _ in docs]
            log(f"ppl@{length}: {len(docs)} documents × {len(methods)} methods" + (f", M = {conts}" if conts else ""))
            batch_size = args.batch_size or max(1, 16384 // length)
            if conts:
                run_cppl(
                    model,
                    docs,
                    methods,
                    w,
                    length=length,
                    conts=conts,
                    batch_size=batch_size,
                    done=plan.done,
                    configs=configs,
                    run_id=header["run_id"],
                    log=log,
                    deadline=deadline,
                )
                continue
            run_ppl(
                model,
                docs,
                methods,
                w,
                length=length,
                batch_size=batch_size,
                done=plan.done,
                configs=configs,
                run_id=header["run_id"],
                progress=not args.no_progress,
                log=log,
                deadline=deadline,
            )
    return measured


def check_continuations(conts, lengths) -> list[int]:
    """``--continuation`` values (none: []), each shorter than every ``--lengths`` value (UsageError if not)."""
    from ..cli_options import UsageError

    conts = list(dict.fromkeys(conts or []))
    for m in conts:
        for length in lengths:
            if m >= length:
                raise UsageError(
                    f"--continuation {m}: must be shorter than every length (got length {length}); the prefill "
                    "needs at least one token"
                )
    return conts
