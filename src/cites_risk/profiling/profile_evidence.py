"""How much a profile hit is worth: measured on past inspections, not guessed.

An analyst's weight is a prior: "a hit of this profile means at least this probability of
an offence". At training time each profile is run over the inspected history and its hits
and offences found are counted; at scoring time the weight becomes the smoothed precision

    w = (offences found + s * analyst weight) / (inspected hits + s)

so a profile with a long record weighs what it has earned, and a new one what the analyst
said. The counts travel with the model (they describe the same period it learned from).
Forced-lane profiles keep their lane: an order is not re-weighted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from cites_risk.profiling.profiles.evaluate import evaluate, hit_column
from cites_risk.profiling.profiles.model import Profile

#: Pseudo-count of the analyst's weight: about this many inspected hits make it move halfway.
PRIOR_STRENGTH = 20.0
INFO_KEY = "profile_evidence"


@dataclass(frozen=True)
class Evidence:
    inspected: int
    found: int

    @property
    def precision(self) -> float:
        return self.found / self.inspected if self.inspected else float("nan")


def measure(
    frame: pl.DataFrame, profiles: Sequence[Profile], labels: np.ndarray
) -> dict[str, Evidence]:
    """Hits and offences found per profile over inspected rows (dates and flags ignored).

    Validity dates are ignored on purpose: the question is what the criteria catch.
    """
    if not profiles or frame.height == 0:
        return {}
    hits = evaluate(frame, profiles, check_enabled=False, check_validity=False)
    y = labels.astype(bool)
    out = {}
    for p in profiles:
        mask = hits.get_column(hit_column(p.id)).to_numpy()
        out[p.id] = Evidence(int(mask.sum()), int((mask & y).sum()))
    return out


def to_info(evidence: Mapping[str, Evidence]) -> dict[str, dict[str, int]]:
    return {k: {"inspected": v.inspected, "found": v.found} for k, v in evidence.items()}


def from_info(info: Mapping[str, Any]) -> dict[str, Evidence]:
    raw = info.get(INFO_KEY) or {}
    return {k: Evidence(int(v["inspected"]), int(v["found"])) for k, v in raw.items()}


def weighted(
    profiles: Sequence[Profile],
    evidence: Mapping[str, Evidence],
    strength: float = PRIOR_STRENGTH,
) -> list[Profile]:
    """Profiles with weights replaced by their smoothed measured precision."""
    out = []
    for p in profiles:
        e = evidence.get(p.id)
        if p.lane is not None or p.weight is None or e is None:
            out.append(p)
            continue
        w = (e.found + strength * p.weight) / (e.inspected + strength)
        out.append(p.model_copy(update={"weight": min(max(w, 0.0), 0.99)}))
    return out
