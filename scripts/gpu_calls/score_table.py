"""Print the 13-task average score (and samples) per model, length and method of every ruler.jsonl under the
given folders: the short table a GPU call prints last. A record counted twice (resumed from a carried folder and
present again under another) is counted once. RESULTS.md is written by ``delta-attn eval report``, not this.

    python3 scripts/gpu_calls/score_table.py FOLDER [FOLDER ...]
"""

import collections
import json
import sys
from pathlib import Path

scores = {}  # (model, length, method, task, index, seed) -> score
for folder in sys.argv[1:]:
    for path in Path(folder).rglob("ruler.jsonl"):
        for line in path.open():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a time limit
            if rec.get("record") == "sample":
                model = rec["config"]["model"].split("@")[0].removesuffix(".gguf")[:12]
                key = (model, rec["length"], rec["method"], rec["task"], rec["index"], rec["seed"])
                scores[key] = rec["score"]

cells = collections.defaultdict(lambda: collections.defaultdict(list))  # (model, length, method) -> task -> scores
for (model, length, method, task, _, _), score in scores.items():
    cells[model, length, method][task].append(score)
print(f"{'model':12s} {'length':>6s} {'method':34s} {'tasks':>5s} {'n/task':>11s} {'avg %':>6s}")
for (model, length, method), tasks in sorted(cells.items()):
    ns = [len(v) for v in tasks.values()]
    avg = 100 * sum(sum(v) / len(v) for v in tasks.values()) / len(tasks)
    print(f"{model:12s} {length:6d} {method[:34]:34s} {len(tasks):5d} {min(ns):5d}-{max(ns):<5d} {avg:6.1f}")
