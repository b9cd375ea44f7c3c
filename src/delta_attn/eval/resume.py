"""Which earlier records a resumed run may reuse: same key *and* same config, or it runs again.

A record's key says *which* item it is (task, length, index, method name, seed; or document, length,
method name); its ``config`` says *how* it was computed (:mod:`delta_attn.eval.records`). Reusing a
record whose key matches but whose config does not would silently mix two settings under one method
name (a window sweep resumed from an earlier run would report the old window), so such records are
counted, explained, and run again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from .records import Records, config_difference, config_of


@dataclass
class ResumePlan:
    """The keys to skip, and why the other earlier records in scope were not reused."""

    done: set = field(default_factory=set)
    mismatched: Counter = field(default_factory=Counter)  # (method, difference) -> records

    def lines(self) -> list[str]:
        """What to tell the user: how many records were reused, and a line per reason some were not."""
        out = [f"reusing {len(self.done)} earlier record(s) whose settings match"]
        for (method, why), n in sorted(self.mismatched.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"not reusing {n} record(s) of method {method!r}: they differ in {why}")
        return out


def plan_resume(
    records: Records,
    kind: str,
    key_of: Callable[[dict], tuple],
    wanted: dict[str, dict],
    in_scope: Container | None = None,
) -> ResumePlan:
    """Match earlier ``kind`` records against the configs this run ``wanted`` (method name -> config).

    Records of other methods, or whose key is not ``in_scope`` (other tasks, lengths, indices), are
    ignored: they neither count as reused nor as mismatched.
    """
    runs = records.runs
    plan = ResumePlan()
    mismatched_keys: dict[tuple, set] = {}
    for rec in records.of(kind):
        method = rec.get("method")
        if method not in wanted:
            continue
        key = key_of(rec)
        if in_scope is not None and key not in in_scope:
            continue
        cfg = config_of(rec, runs)
        if cfg == wanted[method]:
            plan.done.add(key)
        else:
            mismatched_keys.setdefault((method, config_difference(cfg, wanted[method])), set()).add(key)
    for reason, keys in mismatched_keys.items():
        left = keys - plan.done  # a key redone later (a matching record exists too) needs nothing
        if left:
            plan.mismatched[reason] = len(left)
    return plan
