"""RULER's scoring: ``string_match_all`` and ``string_match_part`` (scripts/eval/synthetic/constants.py).

* ``string_match_all`` (every task but QA): the fraction of references that occur in the prediction as
  case-insensitive substrings.
* ``string_match_part`` (QA): 1 if any reference occurs, else 0.

Predictions are post-processed as RULER does: control characters become newlines, then strip.
Scores are in [0, 1] per sample; tables show averages × 100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    return _CONTROL.sub("\n", prediction).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` found in ``prediction`` (case-insensitive substring)."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    pred = postprocess(prediction).lower()
    return sum(1.0 for r in references if r.lower() in pred) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 if any of ``references`` is found in ``prediction`` (case-insensitive substring), else 0.0."""
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    pred = postprocess(prediction).lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in references)


METRICS = {"all": string_match_all, "part": string_match_part}


def score(prediction: str, references: Sequence[str], metric: str) -> float:
    """Score one prediction with ``metric`` ("all" or "part")."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}") from None
    return fn(prediction, references)
