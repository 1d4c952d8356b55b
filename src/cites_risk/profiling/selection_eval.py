"""What each way of choosing would have found: model alone, profiles alone, both combined.

All three run through the same selection (same capacity, same pool, same tie-breaking);
only the evidence differs. The random stream is switched off here so that the comparison
judges targeting alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from cites_risk.profiling.profiles.model import SCORE, Profile
from cites_risk.profiling.selection import SELECTED, SelectionConfig, select


@dataclass(frozen=True)
class StrategyResult:
    name: str
    inspected: int
    found: int
    positives: int

    @property
    def precision(self) -> float:
        return self.found / self.inspected if self.inspected else 0.0

    @property
    def recall(self) -> float:
        return self.found / self.positives if self.positives else float("nan")


def compare_strategies(
    scored: pl.DataFrame,
    profiles: Sequence[Profile],
    labels: np.ndarray,
    config: SelectionConfig,
) -> list[StrategyResult]:
    """Offences found within capacity by each strategy; ``labels`` align with ``scored``."""
    targeting = config.model_copy(update={"random_share": 0.0})
    rules_only = scored.with_columns(pl.lit(None, pl.Float64).alias(SCORE))
    strategies: list[tuple[str, pl.DataFrame, Sequence[Profile]]] = [
        ("model + profiles", scored, profiles),
        ("model alone", scored, []),
        ("profiles alone", rules_only, profiles),
    ]
    positives = int(labels.sum())
    out = []
    for name, frame, chosen in strategies:
        # A row per scored row, in order (``select``): the labels align as they are.
        selection = select(frame, chosen, targeting).frame
        mask = selection.get_column(SELECTED).to_numpy()
        out.append(StrategyResult(name, int(mask.sum()), int(labels[mask].sum()), positives))
    return out
