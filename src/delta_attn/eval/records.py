"""JSON-lines result files: append-only, resumable, readable by the report.

Every line is one JSON object with a ``record`` field:

* ``"run"``: written once per invocation: run id, command, date, model (file and sha256), device,
  dtype, versions, options, and every method's full :class:`~delta_attn.DeltaConfig`.
* ``"sample"`` (``eval ruler``): one prompt × one method: task, length, index, method, prompt_tokens,
  prediction, references, score, metric, plus gen_tokens, hit_stop, depths, seed, run id, the timing
  of the batch it ran in, and ``config`` (below).
* ``"ppl"`` (``eval ppl``): one document × one method × one length: NLL sums and token counts per
  position range, and ``config``.
* ``"cppl"`` (``eval ppl --continuation M``, ``eval sweep``): one document × one method × one length L ×
  one continuation length M: the NLL of the last M tokens scored densely against the cache the method's
  prefill of the first L − M wrote (:mod:`delta_attn.eval.cppl`), and ``config``.

``config`` is everything that decides a record's result: the method's canonical settings
(:func:`delta_attn.methods.canonical_config`), the model id (file name + sha256), the dtype, the
prompt seed and the prompt format, and the model's rope scaling when it ran with ``--rope-scaling``. A
resumed run reuses a record only when its key *and* its config match (:mod:`delta_attn.eval.resume`).
Records written before configs were recorded get theirs back from their run header (:func:`config_of`);
their model hash is unknown.

A line cut off by a killed run is never appended to: :class:`JsonlWriter` starts a new line (and
warns), and readers count the lines they skip (:class:`Records`).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import platform
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

UNKNOWN_MODEL = "unknown (not recorded)"


def open_text(path: Path):
    """Open a result file for reading; ``.gz`` files (how the repository stores them) transparently."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _files(paths: Iterable[str | Path]) -> list[Path]:
    """JSONL files among ``paths`` (folders searched recursively, in sorted order); missing paths skipped."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted([*p.rglob("*.jsonl"), *p.rglob("*.jsonl.gz")])
        elif p.is_file():
            out.append(p)
    return out


@dataclass
class Records:
    """Every record of some JSONL files, the lines that could not be read, and the run headers by id."""

    items: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path:line" of lines that are not a JSON object
    files: list[Path] = field(default_factory=list)

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> Records:
        recs = cls()
        for path in _files(paths):
            recs.files.append(path)
            with open_text(path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        rec = None
                    if isinstance(rec, dict):
                        recs.items.append(rec)
                    else:  # a line cut off by a killed run, or not ours
                        recs.skipped.append(f"{path}:{n}")
        return recs

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.items if r.get("record") == kind]

    @property
    def runs(self) -> dict[str, dict]:
        return {r["run_id"]: r for r in self.of("run") if "run_id" in r}

    def skipped_note(self) -> str | None:
        """One line naming the unreadable lines, or None when there were none."""
        if not self.skipped:
            return None
        shown = ", ".join(self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
        return f"skipped {len(self.skipped)} unreadable line(s) (cut off by a killed run?): {shown}"


def read_records(paths: Iterable[str | Path], kind: str | None = None) -> Iterator[dict]:
    """All records (of ``kind``) from JSONL files or folders; see :class:`Records` for the skipped lines."""
    for rec in Records.load(paths).items:
        if kind is None or rec.get("record") == kind:
            yield rec


def sample_key(rec: dict) -> tuple:
    return (rec["task"], int(rec["length"]), int(rec["index"]), rec["method"], int(rec.get("seed", 0)))


def ppl_key(rec: dict) -> tuple:
    return (rec["doc"], int(rec["length"]), rec["method"])


def cppl_key(rec: dict) -> tuple:
    """A continuation-perplexity record's key: the window length L and the scored tail M are both part of it."""
    return (rec["doc"], int(rec["length"]), int(rec["cont"]), rec["method"])


class JsonlWriter:
    """Appends records and makes each batch durable (flush + fsync) before the next starts.

    If the file's last line was cut off (a killed run), the first write starts a new line and ``warn``
    says so: appending to the torn line would corrupt the next record too.
    """

    def __init__(self, path: str | Path, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._f = self.path.open("a", encoding="utf-8")
        if torn:
            self._f.write("\n")
            (warn or _stderr)(
                f"{self.path}: its last line was cut off (a killed run?); new records start on a new line"
            )

    def write(self, records: Iterable[dict]) -> None:
        for r in records:
            self._f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# what decides a record's result


#: dtypes in which an older cast rounded the rotary frequencies (see record_config)
HALF_DTYPES = ("bfloat16", "float16")


def record_config(
    method_config: dict,
    *,
    model: str,
    dtype: str,
    prompt: dict,
    seed: int | None = None,
    rope_scaling: str | None = None,
) -> dict:
    """The ``config`` of a record: the method's canonical settings and everything else its result depends on.

    ``rope_scaling`` (``yarn:4:32768``, see :mod:`delta_attn.models.rope`) is a key only when the model ran
    scaled, so records written before the option existed still match unscaled runs, and scaled ones never do.
    """
    cfg = {"method": method_config, "model": model, "dtype": dtype, "prompt": dict(sorted(prompt.items()))}
    if seed is not None:
        cfg["seed"] = seed
    if rope_scaling is not None:
        cfg["rope_scaling"] = rope_scaling
    if dtype in HALF_DTYPES:
        # models are cast with float32 rotary frequencies (compat.cast_model) since 2026-12-06 21:30 UTC; half-
        # precision records without this key came from models whose inv_freq was rounded to bf16/fp16
        cfg["rope_freqs"] = "float32"
    return dict(sorted(cfg.items()))


def config_of(rec: dict, runs: dict[str, dict]) -> dict | None:
    """A record's config: the stored one, or (older records) rebuilt from its run header; None if neither."""
    if "config" in rec:
        return rec["config"]
    run = runs.get(rec.get("run_id", ""))
    if run is None or rec.get("method") not in run.get("methods", {}):
        return None
    from ..methods import canonical_from_dict

    options = run.get("options", {})
    kind = rec.get("record")
    prompt = {"reserve": options.get("reserve", 128), "chat": True} if kind == "sample" else {}
    prompt["format"] = 1  # the only format before configs were recorded
    return record_config(
        canonical_from_dict(run["methods"][rec["method"]]),
        model=run.get("model_id", UNKNOWN_MODEL),
        dtype=run.get("dtype", "unknown"),
        prompt=prompt,
        seed=int(rec.get("seed", 0)) if kind == "sample" else None,
    )


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(old: dict | None, new: dict) -> str:
    """How ``old`` differs from ``new``, e.g. ``"window (64 vs 2000), dtype (float32 vs bfloat16)"``.

    Method fields are named without their ``method.`` prefix; other fields by their path.
    """
    if old is None:
        return "no recorded config"
    a, b = flatten(old), flatten(new)
    parts = []
    for k in sorted(set(a) | set(b), key=lambda k: (not k.startswith("method."), k)):
        if a.get(k, "–") != b.get(k, "–"):
            parts.append(f"{k.removeprefix('method.')} ({a.get(k, '–')} vs {b.get(k, '–')})")
    return ", ".join(parts) or "nothing"


# ---------------------------------------------------------------------------------------------
# run header


def run_info(args=None, model=None, extra: dict | None = None, *, model_info=None) -> dict:
    """The ``run`` header: who/what/where, so tables can state hardware, versions and settings."""
    import torch

    info = {
        "record": "run",
        "run_id": uuid.uuid4().hex[:12],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if model_info is not None:
        info["model_id"] = model_info.model_id
        info["model_sha256"] = model_info.sha256
        info["context_length"] = model_info.context_length
        if model_info.rope_scaling is not None:
            info["rope_scaling"] = model_info.rope_spec
            info["trained_context"] = model_info.trained_context
    if model is not None:
        p = next(model.parameters())
        info["device"] = str(p.device)
        info["dtype"] = str(p.dtype).replace("torch.", "")
        if p.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(p.device)
        else:
            info["device_name"] = platform.processor() or platform.machine()
        info["model"] = getattr(model.config, "name_or_path", "") or type(model).__name__
        info["model_layers"] = getattr(model.config, "num_hidden_layers", None)
    if args is not None:

        def plain(v):
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return str(v) if isinstance(v, Path) else v

        info["options"] = {
            k: plain(v)
            for k, v in vars(args).items()
            if k != "func" and isinstance(v, (str, int, float, bool, list, tuple, type(None), Path))
        }
    if extra:
        info.update(extra)
    return info
