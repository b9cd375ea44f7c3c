"""JSON-lines result files: append-only, resumable, readable by the report.

Every line is one JSON object with a ``record`` field:

* ``"run"``: written once per invocation: run id, command, date, model, device, versions, options.
* ``"sample"`` (``eval ruler``): one prompt × one method: task, length, index, method, prompt_tokens,
  prediction, references, score, metric, plus gen_tokens, hit_stop, depths, seed, run id, and the
  timing of the batch it ran in.
* ``"ppl"`` (``eval ppl``): one document × one method × one length: NLL sums and token counts per
  position range.

A run skips every (kind, key) already present in its output file or in ``--resume-from`` files, so an
interrupted or time-limited run continues where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import platform
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path


def open_text(path: Path):
    """Open a result file for reading; ``.gz`` files (how the repository stores them) transparently."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_records(paths: Iterable[str | Path], kind: str | None = None) -> Iterator[dict]:
    """All records of the given kind from JSONL files or folders (searched recursively); missing files are
    skipped, and so is a line torn by a killed run."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from read_records(sorted([*p.rglob("*.jsonl"), *p.rglob("*.jsonl.gz")]), kind)
            continue
        if not p.is_file():
            continue
        with open_text(p) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a killed run
                if kind is None or rec.get("record") == kind:
                    yield rec


def sample_key(rec: dict) -> tuple:
    return (rec["task"], int(rec["length"]), int(rec["index"]), rec["method"], int(rec.get("seed", 0)))


def ppl_key(rec: dict) -> tuple:
    return (rec["doc"], int(rec["length"]), rec["method"])


class JsonlWriter:
    """Appends records and makes each batch durable (flush + fsync) before the next starts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        for r in records:
            self._f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_info(args=None, model=None, extra: dict | None = None) -> dict:
    """The ``run`` header: who/what/where, so tables can state hardware and versions."""
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
