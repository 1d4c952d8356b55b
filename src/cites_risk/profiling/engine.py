"""The scoring engine: features + model + explanations for a batch or a single declaration.

One code path serves the CLI batch, the API's single and batch routes and backtests; only
the size of the frame differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from cites_risk.features import running_totals
from cites_risk.features.contract import FEW_ROWS, D
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features, collect_features
from cites_risk.features.reference import Reference
from cites_risk.models.compiled import CompiledPredictor, Predictor
from cites_risk.models.explain import explain
from cites_risk.models.risk_model import RiskModel
from cites_risk.profiling.config import Settings
from cites_risk.profiling.profiles.model import Profile
from cites_risk.profiling.profiles.watchlist import WatchlistIndex
from cites_risk.profiling.roles import Role
from cites_risk.profiling.selection import FINAL_RISK, SelectionConfig, SelectionReport, select

SCORE = "score"
REASONS = "reasons"
SPECIES = "species_match"
TOP_FEATURES = "top_features"
_ROMAN = {1: "I", 2: "II", 3: "III"}
#: Model info key of the online red cut, and the capacity share it stands for.
RED_CUT = "red_cut"
RED_CUT_SHARE = 0.05


def species_sentence(row: dict[str, object]) -> str | None:
    """'description "dried scales" matches Manis, Appendix I' — or None if nothing matched."""
    taxon = row.get("sp_taxon")
    if not taxon:
        return None
    via = row.get("sp_match_via")
    appendix = _ROMAN.get(int(row.get("sp_appendix") or 0))  # type: ignore[call-overload]
    listing = f"CITES Appendix {appendix}" if appendix else "not CITES-listed"
    score = float(row.get("sp_match_score") or 0.0)  # type: ignore[arg-type]
    if via == "description":
        said = f'description "{row.get(D.DESCRIPTION)}"'
    else:
        said = f'declared taxon "{row.get(D.TAXON)}"'
    how = {"fuzzy": "closely matches", "genus": "is in the genus of", "family": "is in"}.get(
        str(via), "matches"
    )
    return f"{said} {how} {taxon}, {listing} (match confidence {score:.0%})"


@dataclass
class Engine:
    model: RiskModel
    model_version: str
    reference: Reference
    #: Compiled trees where available (same margins as LightGBM to 1e-9, several times faster).
    predictor: Predictor | None = None

    def predict_proba(self, features: pl.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        """``matrix``: ``model.matrix(features)`` when the caller has it already."""
        if self.predictor is None or features.height == 0:
            return self.model.predict_proba(features, matrix)
        return self.model.calibrator(self.predictor.margin(self.model.matrix(features, matrix)))

    def features(self, declarations: pl.DataFrame, history: History) -> pl.DataFrame:
        carried = history.carried
        if carried is not None and declarations.height:
            first = declarations.get_column(D.DECLARED_AT).min()
            if isinstance(first, datetime) and first < carried.until:
                raise ValueError(
                    f"a declaration of {first} cannot be scored against a history carried "
                    f"to {carried.until}: carry it to the batch's first declaration"
                )
        # A few declarations read only the history of their own keys: an online request
        # then costs the same against a thousand or a million past declarations.
        focused = declarations.height <= FEW_ROWS
        return collect_features(
            build_features(
                declarations.lazy(), history, self.reference, self.model.extras, focused=focused
            ),
            # Callers carry to the first declaration scored (the service, the batch walk):
            # besides offence records, little of the history is left uncarried.
            few_rows=focused and carried is not None,
        )

    def score(
        self, declarations: pl.DataFrame, history: History, *, top_reasons: int = 3
    ) -> pl.DataFrame:
        """Per declaration: calibrated score, model reasons in words, the species match.

        Returns the features too (selection and profiles read them), in input order.
        """
        features = self.features(declarations, history)
        # Built once: banding and category codes cost more than the trees for a few rows.
        matrix = self.model.matrix(features)
        proba = self.predict_proba(features, matrix)
        contributions = explain(self.model, features, top=top_reasons, matrix=matrix)
        view = declared_view(features, declarations)
        species = [
            species_sentence(r)
            for r in view.select(
                "sp_taxon", "sp_match_via", "sp_appendix", "sp_match_score", D.DESCRIPTION, D.TAXON
            ).to_dicts()
        ]
        return view.with_columns(
            pl.Series(SCORE, proba, dtype=pl.Float64),
            pl.Series(
                REASONS,
                [[c.sentence for c in cs] for cs in contributions],
                dtype=pl.List(pl.String),
            ),
            pl.Series(
                TOP_FEATURES,
                [[c.feature for c in cs] for cs in contributions],
                dtype=pl.List(pl.String),
            ),
            pl.Series(SPECIES, species, dtype=pl.String),
        )


def declared_view(features: pl.DataFrame, declarations: pl.DataFrame) -> pl.DataFrame:
    """``features`` with every declared column they lack beside them: profiles read contract
    fields as well as features.

    ``build_features`` keeps the input order, so the columns are put side by side rather
    than joined on the id: a join cost ~0.2 s per 500 k rows, and a repeated id would have
    multiplied rows. The ids are compared to make sure.
    """
    if not features.get_column(D.ID).equals(declarations.get_column(D.ID)):
        raise RuntimeError("features are not in the order of the declarations")
    carried = [c for c in declarations.columns if c not in features.columns]
    return pl.concat([features, declarations.select(carried)], how="horizontal")


@dataclass(frozen=True)
class Decisions:
    frame: pl.DataFrame
    report: SelectionReport


def decide(
    scored: pl.DataFrame,
    profiles: Sequence[Profile],
    config: SelectionConfig,
    *,
    role: Role = Role.INSPECTOR,
    watchlist: WatchlistIndex | None = None,
) -> Decisions:
    """Scores become decisions: profiles, capacity, lanes; reasons in the inspector's words.

    Reasons read: how it was selected and the profiles hit (selection), then the model's
    main contributions, then the species match.
    """
    selection = select(
        scored,
        profiles,
        config,
        role=role,
        watchlist=watchlist,
        extra_reasons=[REASONS, SPECIES],
    )
    # The selection's rows are the scored rows, in their order: side by side, no join.
    decided = pl.concat([scored.drop(REASONS), selection.frame.drop(D.ID)], how="horizontal")
    return Decisions(decided, selection.report)


def engine_for(settings: Settings, model: RiskModel, version: str, reference: Reference) -> Engine:
    """The engine the settings ask for: compiled trees when enabled and available, and the
    compiled code of the features and explanations loaded now rather than on the first
    declaration."""
    predictor = None
    if settings.compile_trees:
        predictor = CompiledPredictor.for_model(model, settings.home / "compiled")
    running_totals.warm()
    model.explainer(warm=True)
    return Engine(model, version, reference, predictor)


def rank(scored: pl.DataFrame) -> pl.DataFrame:
    """Highest risk first (final risk once decided); ties by id, so reruns agree."""
    by = FINAL_RISK if FINAL_RISK in scored.columns else SCORE
    return scored.sort([by, D.ID], descending=[True, False]).with_row_index("rank", offset=1)


def in_period(frame: pl.DataFrame, start: datetime | None, end: datetime | None) -> pl.DataFrame:
    expr = pl.lit(True)
    if start is not None:
        expr = expr & (pl.col(D.DECLARED_AT) >= start)
    if end is not None:
        expr = expr & (pl.col(D.DECLARED_AT) < end)
    return frame.filter(expr)


def labels_for(scored: pl.DataFrame, inspections: pl.DataFrame) -> np.ndarray:
    """1 where an inspection of the declaration found an offence, else 0."""
    hits = inspections.group_by("declaration_id").agg((pl.col("outcome") == "hit").any().alias("y"))
    joined = scored.select(D.ID).join(
        hits, left_on=D.ID, right_on="declaration_id", how="left", maintain_order="left"
    )
    return joined.get_column("y").fill_null(False).cast(pl.Float64).to_numpy()
