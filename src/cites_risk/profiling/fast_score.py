"""Batch fast path of :class:`Engine.score`: compiled trees, explanations where they matter.

:meth:`Engine.score` explains every row: TreeSHAP (``pred_contrib``) over all trees, a
``to_dicts`` of every feature row and a Python loop building three sentences per row. On
millions of declarations that costs far more than the features and the prediction together,
and almost all of it is thrown away: only the declarations that end up inspected (a few
per cent) are ever read by an inspector.

:class:`FastEngine` gives the same frame as :meth:`Engine.score` with three differences:

* margins come from a :class:`~cites_risk.models.compiled.Predictor` (lleaves-compiled
  trees, within 1e-9 of LightGBM), so ``score`` equals the engine's to ~1e-12;
* model reasons (``reasons``, ``top_features``) are computed only for the rows whose score
  is in the top ``explain_share`` of the frame (ties included) or at least
  ``explain_min_score``; they are identical to the engine's for those rows and empty
  lists elsewhere. With ``explain_share=1`` every row is explained exactly as the engine does;
* the species sentence is built once per distinct match, not once per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from cites_risk.features.contract import D
from cites_risk.features.history import History
from cites_risk.models.compiled import Predictor
from cites_risk.models.explain import explain
from cites_risk.models.risk_model import RiskModel
from cites_risk.profiling.engine import (
    REASONS,
    SCORE,
    SPECIES,
    TOP_FEATURES,
    Engine,
    declared_view,
    species_sentence,
)
from cites_risk.profiling.selection import LaneQuota

#: Share of each scored frame whose model reasons are computed: the usual inspection
#: capacity. Exact TreeSHAP runs at ~5,700 rows/s for 300 trees on 2 cores (compiled,
#: ``models/treeshap.py``), so this share costs more than the prediction; lower it for the
#: red lane only.
DEFAULT_EXPLAIN_SHARE = 0.05
_SPECIES_INPUTS = ("sp_taxon", "sp_match_via", "sp_appendix", "sp_match_score")
LIST = pl.List(pl.String)


@dataclass
class FastEngine:
    """:class:`Engine` scoring with a fast predictor and explanations for the top rows only."""

    engine: Engine
    predictor: Predictor | None = None
    explain_share: float = DEFAULT_EXPLAIN_SHARE
    explain_min_score: float | None = None
    #: Set when lanes are decided later over a batch larger than each frame scored (chunks):
    #: the rows ranking may put in a lane are explained as well, wherever the lanes fall.
    quota: LaneQuota | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.explain_share <= 1.0:
            raise ValueError("explain_share must be within [0, 1]")
        # The engine owns the calibrated-margin path; this only chooses its predictor.
        if self.predictor is not None:
            self.engine = replace(self.engine, predictor=self.predictor)

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    @property
    def model(self) -> RiskModel:
        return self.engine.model

    def predict_proba(self, features: pl.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        return self.engine.predict_proba(features, matrix)

    def explained_rows(
        self, proba: np.ndarray, declarations: pl.DataFrame | None = None
    ) -> np.ndarray:
        """Indices (ascending) of the rows whose model reasons are worth computing
        (``declarations``: the rows scored, for the :attr:`quota`)."""
        n = len(proba)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        k = math.ceil(self.explain_share * n)
        mask = np.zeros(n, dtype=bool)
        if k >= n:
            mask[:] = True
        elif k > 0:
            threshold = np.partition(proba, n - k)[n - k]
            mask |= proba >= threshold
        if self.explain_min_score is not None:
            mask |= proba >= self.explain_min_score
        if self.quota is not None and declarations is not None:
            mask |= self.quota.may_rank(declarations, proba)
        return np.flatnonzero(mask)

    def score(
        self, declarations: pl.DataFrame, history: History, *, top_reasons: int = 3
    ) -> pl.DataFrame:
        """Same columns and row order as :meth:`Engine.score` (see the module docstring)."""
        model = self.engine.model
        features = self.engine.features(declarations, history)
        matrix = model.matrix(features)
        proba = self.predict_proba(features, matrix)
        rows = self.explained_rows(proba, declarations)
        explained = (
            explain(model, features[pl.Series(rows)], top=top_reasons, matrix=matrix[rows])
            if len(rows)
            else []
        )
        # Lists only for the explained rows, spread over the frame by a join: building a
        # list per row in Python cost more than the trees on a million rows.
        spread = pl.DataFrame(
            {
                "__row": pl.Series(rows, dtype=pl.UInt32),
                REASONS: pl.Series([[c.sentence for c in cs] for cs in explained]),
                TOP_FEATURES: pl.Series([[c.feature for c in cs] for cs in explained]),
            },
            schema={"__row": pl.UInt32, REASONS: LIST, TOP_FEATURES: LIST},
        )
        lists = (
            pl.DataFrame({"__row": pl.int_range(features.height, dtype=pl.UInt32, eager=True)})
            .join(spread, on="__row", how="left", maintain_order="left")
            .select(pl.col(REASONS, TOP_FEATURES).fill_null(pl.lit([], dtype=LIST)))
        )
        view = declared_view(features, declarations)
        return view.with_columns(
            pl.Series(SCORE, proba, dtype=pl.Float64),
            lists.get_column(REASONS),
            lists.get_column(TOP_FEATURES),
            species_sentences(view),
        )


def species_sentences(view: pl.DataFrame) -> pl.Series:
    """:func:`species_sentence` for every row, computed once per distinct input."""
    inputs = [*_SPECIES_INPUTS, D.DESCRIPTION, D.TAXON]
    frame = view.select(inputs)
    if frame.height == 0:
        return pl.Series(SPECIES, [], dtype=pl.String)
    # Only the field the sentence quotes matters: blank the other to share more rows.
    quoted = frame.with_columns(
        pl.when(pl.col("sp_match_via") == "description").then(pl.col(D.DESCRIPTION)),
        pl.when(pl.col("sp_match_via") != "description").then(pl.col(D.TAXON)),
    ).with_columns(
        pl.when(pl.col("sp_taxon").is_not_null()).then(pl.col(c)).alias(c) for c in inputs
    )
    distinct = quoted.unique(maintain_order=True)
    sentences = pl.Series(
        SPECIES, [species_sentence(r) for r in distinct.to_dicts()], dtype=pl.String
    )
    lookup = distinct.with_columns(sentences)
    joined = quoted.join(lookup, on=inputs, how="left", nulls_equal=True, maintain_order="left")
    return joined.get_column(SPECIES)
