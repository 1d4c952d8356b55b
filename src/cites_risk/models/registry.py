"""Promotion decisions: may this model version become champion? Pure and testable.

A challenger is compared with the champion only on the *same* holdout (the test period
recorded as the ``holdout`` tag at training, and the same test rows: see
:func:`not_comparable`) and the same feature set. It must be at least as good on every
:data:`PROMOTION_METRICS` (within ``tolerance``); otherwise promotion needs ``force`` and is
audited by the caller. The CLI and the API both call :func:`decide`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: Compared on the shared holdout: ranking quality and what a 5 % capacity finds.
PROMOTION_METRICS: tuple[str, ...] = ("average_precision", "recall_at_5")
HOLDOUT_TAG = "holdout"
FEATURE_TAGS = ("feature_set", "feature_version")
#: The test set's size and offences, logged with every run's metrics (``evaluate``). An open
#: holdout (``2020-01-01..open``) grows as data arrives, and labels change as inspections
#: are recorded: the same tag does not mean the same rows, so these must match too.
TEST_SET_METRICS: tuple[str, ...] = ("n", "positives")


@dataclass(frozen=True)
class Candidate:
    """What the registry knows of one model version: its run's metrics and tags."""

    version: str
    metrics: Mapping[str, float]
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    #: True when the challenger is worse or not comparable, so only ``force`` lets it in.
    needs_force: bool
    reasons: list[str] = field(default_factory=list)
    deltas: dict[str, float] = field(default_factory=dict)
    #: The challenger already is champion: promoting it changes nothing, so callers neither
    #: audit a promotion nor tell running services the champion changed.
    unchanged: bool = False

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "no objection"


def compare(
    challenger: Candidate, champion: Candidate, metrics: Sequence[str] = PROMOTION_METRICS
) -> dict[str, float]:
    """challenger - champion for each metric both have (NaN where either lacks it)."""
    out = {}
    for m in metrics:
        a, b = challenger.metrics.get(m), champion.metrics.get(m)
        out[m] = float(a) - float(b) if a is not None and b is not None else math.nan
    return out


def _test_set(c: Candidate) -> str:
    n, positives = (c.metrics.get(m) for m in TEST_SET_METRICS)
    if n is None or positives is None:
        return "unknown rows"
    return f"{n:,.0f} rows ({positives:,.0f} positives)"


def not_comparable(challenger: Candidate, champion: Candidate) -> list[str]:
    """Why the two models' test metrics were not measured on the same rows (empty if they were).

    Same holdout tag and the same test-set size and positives. A value missing on either
    side is unknown, so not comparable: only ``force`` promotes then.
    """
    reasons = []
    a_hold, b_hold = challenger.tags.get(HOLDOUT_TAG), champion.tags.get(HOLDOUT_TAG)
    if not a_hold or a_hold != b_hold:
        reasons.append(f"not comparable: holdout {a_hold or '?'} vs champion's {b_hold or '?'}")
    same_rows = all(
        challenger.metrics.get(m) is not None
        and challenger.metrics.get(m) == champion.metrics.get(m)
        for m in TEST_SET_METRICS
    )
    if not same_rows:
        reasons.append(
            f"not comparable: tested on {_test_set(challenger)} vs champion's {_test_set(champion)}"
        )
    return reasons


def decide(
    challenger: Candidate,
    champion: Candidate | None,
    *,
    force: bool = False,
    tolerance: float = 0.0,
    metrics: Sequence[str] = PROMOTION_METRICS,
) -> Decision:
    """Whether ``challenger`` may replace ``champion``.

    Refused without ``force`` when the holdouts, test rows or feature sets differ (not
    comparable), when a metric is missing, or when any metric is worse by more than
    ``tolerance``. The champion itself is allowed and ``unchanged``: there is nothing to do.
    """
    if champion is None:
        return Decision(True, False, ["no champion yet"])
    if champion.version == challenger.version:
        already = f"version {challenger.version} is already champion: nothing changed"
        return Decision(True, False, [already], unchanged=True)
    reasons = not_comparable(challenger, champion)
    for tag in FEATURE_TAGS:
        if challenger.tags.get(tag) != champion.tags.get(tag):
            reasons.append(
                f"{tag} {challenger.tags.get(tag)} differs from champion's {champion.tags.get(tag)}"
            )
    deltas = compare(challenger, champion, metrics)
    for m, d in deltas.items():
        if math.isnan(d):
            reasons.append(f"{m} missing for one of the models")
        elif d < -tolerance:
            reasons.append(
                f"{m} {challenger.metrics[m]:.3f} is worse than champion's "
                f"{champion.metrics[m]:.3f}"
            )
    worse = bool(reasons)
    return Decision(allowed=not worse or force, needs_force=worse, reasons=reasons, deltas=deltas)
