"""``delta-attn eval pack-texts``: copy the public-domain texts the evaluation reads into one folder (8 MB), for
machines without the text packages."""

from __future__ import annotations

NAME = "pack-texts"
HELP = "copy the texts the evaluation reads into one folder (for offline machines)"


def add_arguments(p) -> None:
    """``eval pack-texts``'s options."""
    from pathlib import Path

    from .. import cli_options as opt

    p.add_argument(
        "--out", type=opt.output_dir, default=Path(".data/texts"), help="target folder (default .data/texts)"
    )
    p.add_argument(
        "--texts-dir", type=opt.existing_dir, default=None, help="source texts (default ~/.cache/delta-attn/texts)"
    )


def run(args) -> int:
    from .corpus import pack_texts

    out = pack_texts(args.out, args.texts_dir)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {sum(1 for f in out.rglob('*.txt'))} texts ({size / 1e6:.1f} MB) into {out}")
    return 0
