"""The engine as a service: what the HTTP API (and its tests) call, one method per use case.

Every method takes the acting :class:`Actor` and writes an audit event (who, organisation,
role, what). Consent is applied by construction: offence records are read only through the
consent-filtered repository, history features are built from what the actor's organisation
may see, stored scores, jobs and audit events are scoped to the actor's organisation.

Errors are one hierarchy (:class:`ServiceError`); the API maps each class to an HTTP
status once.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import polars as pl
import sqlalchemy as sa
from pydantic import BaseModel, Field

from cites_risk.features.adapters import EXTRA_PREFIX, ROW
from cites_risk.features.carry import carry, narrowed
from cites_risk.features.contract import (
    DECLARATION,
    FEW_ROWS,
    INSPECTION,
    OFFENCE,
    STR_LIST,
    TIMESTAMP,
    D,
    I,
    O,
    Record,
    collect_all_as_written,
)
from cites_risk.features.contract import Field as ContractField
from cites_risk.features.history import History, Lookup
from cites_risk.features.reference import Reference, load_reference
from cites_risk.features.validation import validate
from cites_risk.models.registry import HOLDOUT_TAG
from cites_risk.models.tracking import (
    CHAMPION,
    RegistryError,
    Tracking,
    alias_version,
    candidate,
    list_versions,
    load_model,
)
from cites_risk.models.tracking import promote as promote_version
from cites_risk.profiling.auth import KeyRepository
from cites_risk.profiling.batch import Deciding
from cites_risk.profiling.config import Settings
from cites_risk.profiling.engine import RED_CUT, Engine, engine_for
from cites_risk.profiling.history_store import DeclarationHistory, history_for
from cites_risk.profiling.profile_evidence import from_info, weighted
from cites_risk.profiling.profiles.model import EntityKind, Profile, ProfileError, parse_profile
from cites_risk.profiling.profiles.repository import ProfileConflictError, ProfileRepository
from cites_risk.profiling.profiles.watchlist import (
    SharedEntryError,
    WatchlistEntryError,
    WatchlistRepository,
)
from cites_risk.profiling.roles import Role, at_least, may_read_rationale
from cites_risk.profiling.selection import (
    DEFAULT_CAPACITY_SHARE,
    FINAL_RISK,
    LANE,
    PROFILE_HITS,
    SELECTED,
    SELECTED_BY,
    SelectionConfig,
    select,
)
from cites_risk.profiling.selection import REASONS as SELECTION_REASONS
from cites_risk.profiling.sources import vocabulary
from cites_risk.profiling.store import Actor, Event, Stamps, Store, Topic, counter
from cites_risk.profiling.store.core import as_utc, upsert, utcnow
from cites_risk.profiling.store.schema import scores
from cites_risk.profiling.workflows import tracking_for

#: Declarations of the recent history scored at start-up to place the online red cut.
CUT_SAMPLE_ROWS = 5_000


@dataclass(frozen=True)
class _Snapshot:
    """An organisation's history as read, and carried to its latest declaration."""

    full: History
    carried: History | None = None
    #: The ids (``declaration_id``) of every declaration in the history.
    known: Lookup | None = None

    def for_request(self, frame: pl.DataFrame) -> History:
        """The carried history when the request can use it: every declaration at or after
        the carry and none already in the history (a re-scored id must replace its lodged
        row, which a folded sum cannot give back); else the full one. Same features either
        way."""
        if self.carried is None or self.carried.carried is None:
            return self.full
        first = frame.get_column(D.DECLARED_AT).min()
        if not isinstance(first, datetime) or first < self.carried.carried.until:
            return self.full
        return self.full if self.holds(frame.get_column(D.ID)).any() else self.carried

    def holds(self, ids: pl.Series) -> pl.Series:
        """Whether the history has each of ``ids`` already (a declaration scored again)."""
        if self.known is None:
            wanted = ids.implode()
            found = self.full.declarations.filter(pl.col(D.ID).is_in(wanted)).select(D.ID)
            present = found.collect().get_column(D.ID)
        else:
            # A binary search per id: hashing the whole history's ids would cost O(history).
            present = self.known.rows(ids).get_column(D.ID)
        return ids.is_in(present.implode())


# --- errors -------------------------------------------------------------------------------


class ServiceError(Exception):
    """Root of every error the service (and the API on top of it) reports to a caller."""

    title = "Request failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(ServiceError):
    """Absent, or not visible to the caller: both read the same, so nothing leaks."""

    title = "Not found"


class ForbiddenError(ServiceError):
    title = "Forbidden"


class UnauthenticatedError(ServiceError):
    title = "Unauthenticated"


class ConflictError(ServiceError):
    title = "Conflict"


class NotReadyError(ServiceError):
    title = "Service not ready"


class TooLargeError(ServiceError):
    title = "Request too large"


@dataclass(frozen=True)
class FieldProblem:
    """One bad value: the row (0-based, in the request), the field and the reason."""

    row: int | None
    field: str
    reason: str
    value: str | None = None


class InvalidInputError(ServiceError):
    title = "Invalid input"

    def __init__(self, detail: str, problems: Sequence[FieldProblem] = ()) -> None:
        super().__init__(detail)
        self.problems = list(problems)


# --- results ------------------------------------------------------------------------------


class FeatureValue(BaseModel):
    name: str
    value: float | str | bool | None


class ScoreResult(BaseModel):
    """What an inspector is told about one declaration."""

    declaration_id: str
    score: float = Field(description="calibrated model probability of an offence")
    final_risk: float = Field(description="model probability combined with profile weights")
    lane: str = Field(description="red (inspect), yellow (documents) or green (release)")
    selected: bool
    selected_by: str | None = Field(description="model, rule or random; null when released")
    profile_hits: list[str] = Field(description="profiles hit that the caller may see")
    reasons: list[str] = Field(description="why, in words: selection, profiles, model, species")
    model_reasons: list[str]
    species_match: str | None
    top_features: list[FeatureValue]
    model_version: str
    scored_at: datetime


class ModelVersion(BaseModel):
    version: str
    aliases: list[str]
    run_id: str
    metrics: dict[str, float]
    holdout: str | None = Field(description="test period start the metrics were measured on")


class PromotionResult(BaseModel):
    version: str
    previous: str | None
    forced: bool = Field(description="promoted although worse or not comparable")
    reasons: list[str] = Field(description="why it was worse or not comparable")
    deltas: dict[str, float] = Field(description="candidate minus champion, per metric")


@dataclass
class _Loaded:
    engine: Engine
    online: SelectionConfig


# --- the service --------------------------------------------------------------------------


class Service:
    """Settings, store, reference data, the champion model and the profiles, loaded once."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        reference: Reference,
        *,
        online_cut: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reference = reference
        # Built from the reference's code tables: ~0.7 ms a request if built per request.
        self._vocabulary = vocabulary(reference)
        self.tracking: Tracking = tracking_for(settings)
        self.declarations = DeclarationHistory(settings.history_dir)
        self._snapshots: dict[str, tuple[object, _Snapshot]] = {}
        self.profiles = ProfileRepository(store)
        self.watchlist = WatchlistRepository(store)
        self.keys = KeyRepository(store)
        self._fixed_cut = online_cut
        self._loaded: _Loaded | None = None
        #: The store's champion counter at the last load attempt (see ``_require``).
        self._champion_seen: int | None = None
        self._profiles_ok = False
        #: The enabled profiles, weighted, with the profiles counter and model they were for.
        self._weighted: tuple[tuple[int, str], list[Profile]] | None = None
        self.problems: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def start(cls, settings: Settings, *, online_cut: float | None = None) -> Service:
        """Open the store, read the reference data, load the champion and the profiles.

        A missing model does not stop start-up (``/health`` answers, ``/ready`` says why);
        scoring refuses until one is promoted.
        """
        service = cls(settings, Store(settings.store_url), load_reference(), online_cut=online_cut)
        service.reload()
        return service

    def close(self) -> None:
        self.store.close()

    # -- readiness ---------------------------------------------------------------------

    def reload(self) -> None:
        problems: list[str] = []
        # Read before the registry: a promotion in between shows as a new counter next time.
        seen = counter(self.store.stamps(), Topic.CHAMPION)
        try:
            model, version = load_model(self.tracking, CHAMPION)
            engine = engine_for(self.settings, model, version, self.reference)
            self._loaded = _Loaded(engine, self._online_config(engine))
        except RegistryError as exc:
            self._loaded = None
            problems.append(str(exc))
        try:
            self.profiles.enabled()
            self._profiles_ok = True
        except ProfileError as exc:
            self._profiles_ok = False
            problems.append(f"stored profiles cannot be read: {exc}")
        self.problems = problems
        # Only now: a thread that sees this counter must find the champion it stands for,
        # not skip the lock while another thread is still loading it (``refresh``).
        self._champion_seen = seen

    @property
    def ready(self) -> bool:
        return self._loaded is not None and self._profiles_ok

    @property
    def model_version(self) -> str | None:
        return self._loaded.engine.model_version if self._loaded else None

    def engine(self) -> Engine:
        """The champion's engine (batch jobs score with it); refuses when not ready."""
        return self._require(self.store.stamps()).engine

    def refresh(self, stamps: Stamps | None = None) -> None:
        """Load the champion again if any process promoted or registered one since.

        Also a process that had no champion to load (none trained yet, or the registry
        unreachable) loads it as soon as one is there.
        """
        champion = counter(stamps if stamps is not None else self.store.stamps(), Topic.CHAMPION)
        if self._champion_seen is None or champion > self._champion_seen:
            with self._lock:  # one reload, however many requests noticed
                if self._champion_seen is None or champion > self._champion_seen:
                    self.reload()

    def _require(self, stamps: Stamps) -> _Loaded:
        """The current champion (see :meth:`refresh`); refuses when not ready."""
        self.refresh(stamps)
        loaded = self._loaded
        if loaded is None or not self._profiles_ok:
            raise NotReadyError("; ".join(self.problems) or "no champion model loaded")
        return loaded

    def _weighted_profiles(self, engine: Engine, stamps: Stamps | None = None) -> list[Profile]:
        """Enabled profiles with the weights they earned on the champion's history.

        Kept until a profile is saved, by this process or another (the store's profiles
        counter in ``stamps``, read before the profiles; read here when not given), or
        another model scores: reading and parsing them took ~4 ms of every scoring call.
        """
        stamps = stamps if stamps is not None else self.store.stamps()
        key = (counter(stamps, Topic.PROFILES), engine.model_version)
        cached = self._weighted
        if cached is None or cached[0] != key:
            cached = self._weighted = (
                key,
                weighted(self.profiles.enabled(), from_info(engine.model.info)),
            )
        return list(cached[1])

    def batch_deciding(self, actor: Actor) -> Deciding:
        """How a batch job selects: 5 % of each office-day, 2 % of it at random."""
        return Deciding(
            self._weighted_profiles(self.engine()),
            SelectionConfig(capacity_share=DEFAULT_CAPACITY_SHARE),
            role=Role(actor.role),
            watchlist=self.watchlist.index(actor.organisation),
        )

    def _online_config(self, engine: Engine) -> SelectionConfig:
        """Selection for declarations scored one at a time or in small sets.

        Capacity is a share of an office-day's traffic, which a single declaration does not
        have: the red cut is instead the model probability that the top
        ``DEFAULT_CAPACITY_SHARE`` of recent traffic reaches (profiles still force lanes).
        """
        cut = self._fixed_cut
        if cut is None and RED_CUT in engine.model.info:
            cut = float(engine.model.info[RED_CUT])  # measured at training, real history
        if cut is None:
            cut = self._recent_cut(engine)
        return SelectionConfig(
            pool="declaration",
            capacity_share=1.0,
            random_share=0.0,
            yellow_share=0.0,
            min_risk=cut,
            max_profile_share=None,
        )

    def _recent_cut(self, engine: Engine) -> float:
        recent = (
            self.declarations.scan()
            .sort(D.DECLARED_AT, descending=True)
            .head(CUT_SAMPLE_ROWS)
            .collect()
        )
        if recent.height == 0:
            return 1.0  # no traffic seen yet: only profiles send a declaration to red
        # Organisation-neutral: no offences, so no consent question at start-up.
        history = History(
            self.declarations.scan(), History.empty().offences, History.empty().inspections
        )
        proba = engine.model.predict_proba(engine.features(recent, history))
        return float(pl.Series(proba).quantile(1.0 - DEFAULT_CAPACITY_SHARE) or 1.0)

    def authenticate(self, token: str | None) -> Actor:
        actor = self.keys.authenticate(token) if token else None
        if actor is None:
            raise UnauthenticatedError(
                "give a valid API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        return actor

    # -- scoring -----------------------------------------------------------------------

    def score(self, actor: Actor, declarations: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
        """Score declarations as one vectorised batch; store and audit every result.

        The declarations join the history for this call: each sees the others lodged before
        it and its consignment siblings (as they would in a file).
        """
        # Read once, before anything they guard: the champion and the history snapshot.
        as_of, stamps = utcnow(), self.store.stamps()
        loaded = self._require(stamps)
        if not declarations:
            return []
        if len(declarations) > self.settings.api_max_batch:
            raise TooLargeError(
                f"{len(declarations)} declarations in one request; at most "
                f"{self.settings.api_max_batch} (use a batch job for more)"
            )
        extras = loaded.engine.model.extras
        frame = self._declarations(self._validated(DECLARATION, declarations, dict(extras)), extras)
        snapshot = self._snapshot(actor.organisation, extras, stamps)
        history = self._history(snapshot, frame, extras, lodge=True)
        role = Role(actor.role)
        decided = self._decided(actor.organisation, frame, history, loaded, stamps, as_of, [role])
        results = decided[role]
        self.store.audit.record(
            actor,
            "score.one" if len(results) == 1 else "score.many",
            results[0].declaration_id if len(results) == 1 else None,
            **_score_detail(loaded, results),
        )
        return results

    def score_each(
        self, requests: Sequence[tuple[Actor, Mapping[str, Any]]]
    ) -> list[ScoreResult | Exception]:
        """One declaration per request, the requests scored together; each answer (a result,
        or the request's own error) is the one :meth:`score` gives it alone.

        That holds because a declaration's features read only the history and itself, never
        the other rows scored (``features/pipeline.py``), and the online selection decides
        each declaration on its own. Only lodging the rows in the history is left out, which
        one declaration does not need. A declaration id asked for twice is scored in a later
        round: each request is answered, the later one last (as it would have been stored).
        A failure fails the requests of its organisation or group alone, and what was
        stored before it was audited.
        """
        as_of, stamps = utcnow(), self.store.stamps()
        loaded = self._require(stamps)
        out: list[ScoreResult | Exception | None] = [None] * len(requests)
        for round_ in _rounds([row.get(D.ID) for _, row in requests]):
            try:
                self._score_round(requests, round_, loaded, stamps, as_of, out)
            except Exception as exc:  # e.g. validation itself failed: the round's requests
                for i in round_:
                    out[i] = out[i] or exc
        answers = [r for r in out if r is not None]
        if len(answers) != len(requests):  # every request is scored or rejected in its round
            raise RuntimeError("a request was neither scored nor rejected")
        return answers

    def _score_round(
        self,
        requests: Sequence[tuple[Actor, Mapping[str, Any]]],
        round_: list[int],
        loaded: _Loaded,
        stamps: Stamps,
        as_of: datetime,
        out: list[ScoreResult | Exception | None],
    ) -> None:
        """Requests ``round_`` (distinct declaration ids): validated and scored together per
        organisation (each sees its own history); answers go to ``out``."""
        extras = loaded.engine.model.extras
        accepted, problems = self._checked(
            DECLARATION, [requests[i][1] for i in round_], dict(extras)
        )
        for at, found in problems.items():
            out[round_[at]] = InvalidInputError(
                f"1 {DECLARATION.name} record(s) rejected", [replace(p, row=0) for p in found]
            )
        kept = [i for at, i in enumerate(round_) if at not in problems]
        frame = self._declarations(accepted, extras)
        for organisation in dict.fromkeys(requests[i][0].organisation for i in kept):
            rows = [at for at, i in enumerate(kept) if requests[i][0].organisation == organisation]
            try:
                # Read once: the groups below are split by what this snapshot holds.
                snapshot = self._snapshot(organisation, extras, stamps)
                held = snapshot.holds(frame[rows].get_column(D.ID)).to_list()
            except Exception as exc:
                for at in rows:
                    out[kept[at]] = exc
                continue
            # A declaration the history holds already is scored alone: its request row must
            # replace the lodged one (it may be a correction), and others must not see that.
            groups = [([at], True) for at, h in zip(rows, held, strict=True) if h]
            groups.append(([at for at, h in zip(rows, held, strict=True) if not h], False))
            for group, lodge in groups:
                if not group:
                    continue
                actors = [requests[kept[at]][0] for at in group]
                answers: list[ScoreResult | Exception]
                try:
                    answers = list(
                        self._score_group(
                            organisation,
                            frame[group],
                            snapshot,
                            actors,
                            loaded,
                            stamps,
                            as_of,
                            lodge=lodge,
                        )
                    )
                except Exception as exc:
                    answers = [exc] * len(group)
                for at, answer in zip(group, answers, strict=True):
                    out[kept[at]] = answer

    def _score_group(
        self,
        organisation: str,
        part: pl.DataFrame,
        snapshot: _Snapshot,
        actors: Sequence[Actor],
        loaded: _Loaded,
        stamps: Stamps,
        as_of: datetime,
        *,
        lodge: bool,
    ) -> list[ScoreResult]:
        """``part`` scored against ``snapshot``, stored, and audited a score per request."""
        history = self._history(snapshot, part, loaded.engine.model.extras, lodge=lodge)
        roles = [Role(a.role) for a in actors]
        rendered = self._decided(organisation, part, history, loaded, stamps, as_of, roles)
        results = [rendered[Role(a.role)][j] for j, a in enumerate(actors)]
        self.store.audit.record_many(
            [
                Event(a, "score.one", r.declaration_id, _score_detail(loaded, [r]))
                for a, r in zip(actors, results, strict=True)
            ]
        )
        return results

    def _decided(
        self,
        organisation: str,
        frame: pl.DataFrame,
        history: History,
        loaded: _Loaded,
        stamps: Stamps,
        as_of: datetime,
        roles: Sequence[Role],
    ) -> dict[Role, list[ScoreResult]]:
        """``frame`` scored, decided and rendered for each of ``roles``; stored as rendered
        for the least privileged reader, so a lookup by anyone in the organisation never
        shows a rationale its role may not read.

        ``as_of``: when the call read the store's stamps, i.e. no later than the offence
        records it scored with. Results are dated then, not when done: a withdrawal
        committed while they were computed is after their date, and ``stored_score``
        withholds them."""
        # With every declared column beside the features (``declared_view``).
        full = loaded.engine.score(frame, history)
        profiles = self._weighted_profiles(loaded.engine, stamps)
        index = self.watchlist.index(organisation)
        rendered = {
            role: self._results(full, profiles, index, loaded, role, as_of)
            for role in dict.fromkeys([*roles, Role.INSPECTOR])
        }
        self._store_results(organisation, rendered[Role.INSPECTOR])
        return rendered

    def _results(
        self,
        full: pl.DataFrame,
        profiles: Sequence[Profile],
        index: Any,
        loaded: _Loaded,
        role: Role,
        as_of: datetime,
    ) -> list[ScoreResult]:
        selection = select(
            full,
            profiles,
            loaded.online,
            role=role,
            watchlist=index,
            extra_reasons=["reasons", "species_match"],
        ).frame
        visible = {p.id for p in profiles if may_read_rationale(role, p.confidentiality)}
        out: list[ScoreResult] = []
        top = full.get_column("top_features").to_list()
        for i, (row, sel) in enumerate(
            zip(
                full.select(D.ID, "score", "reasons", "species_match").iter_rows(named=True),
                selection.iter_rows(named=True),
                strict=True,
            )
        ):
            names: list[str] = top[i] or []
            values = full.select([n for n in names if n in full.columns]).row(i, named=True)
            out.append(
                ScoreResult(
                    declaration_id=row[D.ID],
                    score=float(row["score"]),
                    final_risk=float(sel[FINAL_RISK]),
                    lane=sel[LANE],
                    selected=bool(sel[SELECTED]),
                    selected_by=sel[SELECTED_BY],
                    profile_hits=[p for p in sel[PROFILE_HITS] if p in visible],
                    reasons=list(sel[SELECTION_REASONS]),
                    model_reasons=list(row["reasons"] or []),
                    species_match=row["species_match"],
                    top_features=[FeatureValue(name=k, value=_plain(v)) for k, v in values.items()],
                    model_version=loaded.engine.model_version,
                    scored_at=as_of,
                )
            )
        return out

    def _declarations(self, accepted: pl.DataFrame, extras: Mapping[str, str]) -> pl.DataFrame:
        """Validated declarations with a column for every extra the model reads."""
        missing = [name for name in extras if name not in accepted.columns]
        return accepted.with_columns(pl.lit(None, pl.String).alias(n) for n in missing)

    def _snapshot(
        self, organisation: str, extras: dict[str, str] | None, stamps: Stamps
    ) -> _Snapshot:
        """The organisation's history, read once and kept until anything in it changes.

        Reading the store and the declaration files took most of a single score. The key
        names every way the history can change: files written; offences, consents and
        inspection results changed by any process (the store's change counters, read
        before the history); and the model's extras, whose keys are carried.
        """
        version = (self.declarations.stamp(), stamps, tuple(sorted((extras or {}).items())))
        cached = self._snapshots.get(organisation)
        if cached is not None and cached[0] == version:
            return cached[1]
        base = history_for(self.store, self.declarations, organisation)
        declarations = base.declarations.collect()
        full = History(declarations.lazy(), base.offences, base.inspections)
        snapshot = _Snapshot(full)
        latest = declarations.get_column(D.DECLARED_AT).max()
        if isinstance(latest, datetime):
            # Folded up to the latest declaration, a request sorts a few carried rows per
            # key instead of the whole history.
            carried = carry(full, latest, extras, index_offences=True)
            known = Lookup.of(declarations.select(D.ID).unique(), D.ID)
            snapshot = _Snapshot(full, carried, known)
        self._snapshots[organisation] = (version, snapshot)
        return snapshot

    def _history(
        self,
        snapshot: _Snapshot,
        frame: pl.DataFrame,
        extras: dict[str, str] | None,
        *,
        lodge: bool,
    ) -> History:
        """What an organisation may know (its ``snapshot``), for scoring ``frame``.

        ``lodge``: the declarations join the history for this call (consignment siblings
        see each other); else none of them is in it, and a re-scored id leaves it as lodging
        would have replaced it. Either way scoring is a read: nothing is written to the
        declaration history.
        """
        base = snapshot.for_request(frame)
        # The snapshot outlives the request, so its totals are sorted once and each request
        # finds its own by binary search (a batch walk, carrying anew per partition, would
        # sort them for nothing: its streams look the totals up in the carry's tables).
        base = narrowed(base, frame, extras)
        if lodge:
            declarations = pl.concat(
                [base.declarations, frame.lazy()], how="diagonal_relaxed"
            ).unique(subset=[D.ID], keep="last", maintain_order=True)
        else:
            ids = frame.get_column(D.ID).implode()
            declarations = base.declarations.filter(~pl.col(D.ID).is_in(ids).fill_null(False))
        return replace(base, declarations=declarations)

    def _validated(
        self,
        record: Record,
        rows: Sequence[Mapping[str, Any]],
        extras: dict[str, str] | None = None,
    ) -> pl.DataFrame:
        """The one validation path of files, applied to request rows (as text)."""
        accepted, problems = self._checked(record, rows, extras)
        if problems:
            raise InvalidInputError(
                f"{len(problems)} {record.name} record(s) rejected",
                [p for found in problems.values() for p in found],
            )
        return accepted

    def _checked(
        self,
        record: Record,
        rows: Sequence[Mapping[str, Any]],
        extras: dict[str, str] | None = None,
    ) -> tuple[pl.DataFrame, dict[int, list[FieldProblem]]]:
        """The rows that pass, in order, and the problems of the others by row (0-based)."""
        known = extras or {}
        text = _as_text(record, rows, known)
        checked = validate(text.lazy(), record, self._vocabulary, None, extras)
        queries = [checked.accepted_rows, checked.rejects]
        accepted, rejects = (
            collect_all_as_written(queries) if len(rows) <= FEW_ROWS else pl.collect_all(queries)
        )
        problems: dict[int, list[FieldProblem]] = {}
        for r in rejects.iter_rows(named=True):
            row = int(r["row"]) - 1
            problems.setdefault(row, []).append(
                FieldProblem(row, str(r["field"]), str(r["reason"]), r["value"])
            )
        # An extra the model does not read would be dropped unseen: a misspelt one would
        # score as if it were missing.
        reads = ", ".join(n.removeprefix(EXTRA_PREFIX) for n in known) or "none"
        for row, given in enumerate(rows):
            for name in (n for n in given if n.startswith(EXTRA_PREFIX) and n not in known):
                problems.setdefault(row, []).append(
                    FieldProblem(
                        row,
                        f"extras.{name.removeprefix(EXTRA_PREFIX)}",
                        f"not an extra the model reads (it reads: {reads})",
                        _text(given[name]),
                    )
                )
        if problems:
            accepted = accepted.filter((pl.col(ROW) - 1).is_in(list(problems)).not_())
        return accepted.drop(ROW), problems

    def _store_results(self, organisation: str, results: Sequence[ScoreResult]) -> None:
        rows = [
            {
                "declaration_id": r.declaration_id,
                "organisation": organisation,
                "scored_at": r.scored_at,
                "model_version": r.model_version,
                "score": r.score,
                "lane": r.lane,
                "result": r.model_dump(mode="json"),
            }
            for r in results
        ]
        with self.store.db.begin() as conn:
            upsert(conn, scores, rows, ["declaration_id", "organisation"])

    def stored_score(self, actor: Actor, declaration_id: str) -> ScoreResult:
        """The last result scored for the actor's organisation (not re-scored).

        Not once an offence record was withdrawn from the organisation after it was scored:
        its reasons and lane may rest on that record (MoU clause 10).
        """
        with self.store.db.begin() as conn:
            row = conn.execute(
                sa.select(scores.c.result, scores.c.scored_at).where(
                    scores.c.declaration_id == declaration_id,
                    scores.c.organisation == actor.organisation,
                )
            ).first()
        withdrawn = row is not None and self.store.offences.withdrawn_since(
            actor.organisation, row.scored_at
        )
        self.store.audit.record(
            actor,
            "score.lookup",
            declaration_id,
            found=row is not None and not withdrawn,
            **({"withdrawn": True} if withdrawn else {}),
        )
        if row is None:
            raise NotFoundError(f"no stored score for declaration {declaration_id!r}")
        if withdrawn:
            raise NotFoundError(
                f"the stored score of declaration {declaration_id!r} is withheld: an offence "
                "record was withdrawn from your organisation after it was scored; score it again"
            )
        return ScoreResult.model_validate(row.result)

    # -- feedback ----------------------------------------------------------------------

    def record_inspections(self, actor: Actor, results: Sequence[Mapping[str, Any]]) -> int:
        """Inspection results of the actor's organisation: labels and history for training."""
        rows = [dict(r) | {I.ORG: actor.organisation} for r in results]
        frame = self._validated(INSPECTION, rows)
        added = self.store.inspections.add(frame)
        self.store.audit.record(
            actor,
            "inspection.record",
            None,
            rows=added,
            declarations=frame.get_column(I.DECLARATION).to_list()[:100],
        )
        return added

    # -- offences (consent-filtered only) ----------------------------------------------

    def create_offence(self, actor: Actor, record: Mapping[str, Any]) -> dict[str, Any]:
        """A new record provided by the actor's organisation; the id is assigned here.

        A caller-chosen id could collide with a record it may not see: answering "exists"
        would leak it and overwriting would destroy it, so the server picks the id.
        """
        offence_id = f"{actor.organisation}-{uuid.uuid4().hex}"
        row = dict(record) | {O.ID: offence_id, O.PROVIDER: actor.organisation}
        row[O.SHARED_WITH] = sorted(set(row.get(O.SHARED_WITH) or []))
        frame = self._validated(OFFENCE, [row])
        self.store.offences.add(frame)
        # Whom it is shared with is a sharing decision, audited as a consent change is.
        self.store.audit.record(actor, "offence.create", offence_id, shared_with=row[O.SHARED_WITH])
        return self._offence(actor, offence_id)

    def _offence(self, actor: Actor, offence_id: str) -> dict[str, Any]:
        found = self.store.offences.get(offence_id, actor.organisation)
        if found is None:
            raise NotFoundError(f"no offence record {offence_id!r}")
        return {k: (as_utc(v) if isinstance(v, datetime) else v) for k, v in found.items()}

    def get_offence(self, actor: Actor, offence_id: str) -> dict[str, Any]:
        self.store.audit.record(actor, "offence.get", offence_id)
        return self._offence(actor, offence_id)

    def list_offences(
        self, actor: Actor, *, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        frame = self.store.offences.visible_to(actor.organisation)
        page = frame.sort(O.DETECTED_AT, descending=True).slice(offset, limit)
        self.store.audit.record(actor, "offence.list", None, rows=page.height)
        return page.to_dicts()

    def set_consent(
        self, actor: Actor, offence_id: str, shared_with: Sequence[str]
    ) -> dict[str, Any]:
        """Only the provider may change consent; others get 404 (unseen) or 403 (seen)."""
        self._offence(actor, offence_id)
        changed = self.store.offences.set_consent(offence_id, actor.organisation, shared_with)
        if not changed:
            self.store.audit.record(actor, "offence.consent.refused", offence_id)
            raise ForbiddenError("only the organisation that provided a record changes its consent")
        self.store.audit.record(
            actor, "offence.consent", offence_id, shared_with=sorted(set(shared_with))
        )
        return self._offence(actor, offence_id)

    # -- profiles and watch-lists ------------------------------------------------------

    def list_profiles(self, actor: Actor) -> list[dict[str, Any]]:
        stored = self.profiles.all()
        self.store.audit.record(actor, "profile.list", None, rows=len(stored))
        return [
            {"version": s.version, "updated_at": s.updated_at, "updated_by": s.updated_by}
            | s.profile.body()
            for s in stored
        ]

    def save_profile(
        self, actor: Actor, body: Mapping[str, Any], expected_version: int | None
    ) -> dict[str, Any]:
        """Create or update (audited by the repository); validation errors name the field."""
        try:
            profile = parse_profile(dict(body))
        except ProfileError as exc:
            problems = [_profile_problem(line) for line in str(exc).splitlines()]
            raise InvalidInputError("profile rejected", problems) from None
        try:
            result = self.profiles.save(profile, actor, expected_version=expected_version)
        except ProfileConflictError as exc:
            raise ConflictError(str(exc)) from None
        s = result.stored
        return {"version": s.version, "updated_at": s.updated_at, "updated_by": s.updated_by} | (
            s.profile.body()
        )

    def list_watchlist(self, actor: Actor) -> list[dict[str, Any]]:
        entries = self.watchlist.entries(actor.organisation, include_expired=True)
        self.store.audit.record(actor, "watchlist.list", None, rows=len(entries))
        return [e.as_dict() for e in entries]

    def add_watchlist(
        self,
        actor: Actor,
        kind: EntityKind,
        name: str,
        reason: str,
        expires_at: datetime | None,
    ) -> dict[str, Any]:
        try:
            return self.watchlist.add(kind, name, reason, actor, expires_at).as_dict()
        except WatchlistEntryError as exc:
            raise InvalidInputError(str(exc), [FieldProblem(None, exc.field, str(exc))]) from None

    def remove_watchlist(self, actor: Actor, entry_id: str) -> None:
        try:
            removed = self.watchlist.remove(entry_id, actor)
        except SharedEntryError as exc:
            self.store.audit.record(actor, "watchlist.remove", entry_id, refused=str(exc))
            raise ForbiddenError(str(exc)) from exc
        if not removed:
            self.store.audit.record(actor, "watchlist.remove", entry_id, found=False)
            raise NotFoundError(f"no watch-list entry {entry_id!r}")

    # -- models ------------------------------------------------------------------------

    def list_models(self, actor: Actor) -> list[ModelVersion]:
        versions = list_versions(self.tracking)
        self.store.audit.record(actor, "model.list", None, rows=len(versions))
        return [
            ModelVersion(
                version=v["version"],
                aliases=v["aliases"],
                run_id=v["run_id"],
                metrics=dict(v["metrics"]),
                holdout=v["tags"].get(HOLDOUT_TAG) or None,
            )
            for v in versions
        ]

    def promote(self, actor: Actor, version: str, *, force: bool = False) -> PromotionResult:
        """Make ``version`` the champion (``models.registry.decide`` rules, as the CLI).

        A challenger worse than the champion on the same holdout, or not comparable with
        it, is refused unless ``force``; every promotion is audited with its reasons.
        """
        if not at_least(Role(actor.role), Role.ANALYST):
            raise ForbiddenError("promoting a model needs the analyst role")
        found = candidate(self.tracking, version)
        if found is None:
            raise NotFoundError(f"no model version {version!r}")
        previous = alias_version(self.tracking, CHAMPION)
        decision = promote_version(self.tracking, found.version, force=force)
        if not decision.allowed:
            self.store.audit.record(
                actor, "model.promote.refused", found.version, reasons=decision.reasons
            )
            raise ConflictError(
                f"not promoted: {decision.summary}; promote with force to override (audited)"
            )
        if decision.unchanged:  # already champion: no promotion to audit, announce or reload
            return PromotionResult(
                version=found.version,
                previous=previous,
                forced=False,
                reasons=decision.reasons,
                deltas={},
            )
        deltas = {k: v for k, v in decision.deltas.items() if not math.isnan(v)}
        self.store.audit.record(
            actor,
            "model.promote",
            found.version,
            previous=previous,
            forced=decision.needs_force,
            reasons=decision.reasons,
            deltas=deltas,
        )
        self.store.changed(Topic.CHAMPION)  # every other worker loads it on its next request
        with self._lock:
            self.reload()
        return PromotionResult(
            version=found.version,
            previous=previous,
            forced=decision.needs_force,
            reasons=decision.reasons,
            deltas=deltas,
        )

    # -- audit -------------------------------------------------------------------------

    def audit(
        self,
        actor: Actor,
        *,
        action: str | None = None,
        actor_name: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events of the actor's own organisation only: others' events name their records."""
        events = self.store.audit.query(
            action=action,
            actor=actor_name,
            organisation=actor.organisation,
            since=since,
            limit=limit,
        )
        self.store.audit.record(actor, "audit.query", None, rows=len(events))
        return events


# --- helpers ------------------------------------------------------------------------------


def _rounds(ids: Sequence[object]) -> list[list[int]]:
    """Positions split so that no round holds an id twice: the n-th asking of each id is in
    round n (in order within each)."""
    rounds: list[list[int]] = []
    seen: dict[object, int] = {}
    for at, key in enumerate(ids):
        n = seen[key] = seen.get(key, -1) + 1 if key is not None else 0
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(at)
    return rounds


def _score_detail(loaded: _Loaded, results: Sequence[ScoreResult]) -> dict[str, Any]:
    """What the audit log keeps of a score: how many, by which model, how many red, and
    which declarations when there are several (one is the event's target)."""
    detail: dict[str, Any] = {
        "rows": len(results),
        "model_version": loaded.engine.model_version,
        "red": sum(r.lane == "red" for r in results),
    }
    if len(results) > 1:
        detail["declarations"] = [r.declaration_id for r in results]
    return detail


def _plain(value: Any) -> float | str | bool | None:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return str(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _as_text(
    record: Record, rows: Sequence[Mapping[str, Any]], extras: Mapping[str, str]
) -> pl.DataFrame:
    """Request rows as the text columns the validator parses (what a file would hold)."""
    columns: dict[str, pl.Series] = {ROW: pl.Series(ROW, range(1, len(rows) + 1), dtype=pl.UInt32)}
    for f in record.fields:
        if f.dtype == STR_LIST:
            values: list[Any] = [
                None if r.get(f.name) is None else [str(v) for v in r[f.name]] for r in rows
            ]
            columns[f.name] = pl.Series(f.name, values, dtype=pl.List(pl.String))
        elif any(f.name in r for r in rows) or f.required:
            columns[f.name] = pl.Series(
                f.name, [_text(r.get(f.name)) for r in rows], dtype=pl.String
            )
    for name in extras:
        columns[name] = pl.Series(name, [_text(r.get(name)) for r in rows], dtype=pl.String)
    return pl.DataFrame(columns)


def _profile_problem(line: str) -> FieldProblem:
    # "profile 'x': criteria.all.0.field: unknown field ..." -> field path and reason
    _, _, rest = line.partition(": ")
    path, sep, reason = rest.partition(": ")
    if not sep:
        return FieldProblem(None, "body", line)
    return FieldProblem(None, path, reason)


def extra_column(name: str) -> str:
    """The frame column of an administration's extra field ``name`` (``x_name``)."""
    return name if name.startswith(EXTRA_PREFIX) else EXTRA_PREFIX + name


__all__ = [
    # The data contract, re-exported for the API's request models.
    "DECLARATION",
    "INSPECTION",
    "OFFENCE",
    "STR_LIST",
    "TIMESTAMP",
    "ConflictError",
    "ContractField",
    "FeatureValue",
    "FieldProblem",
    "ForbiddenError",
    "I",
    "InvalidInputError",
    "ModelVersion",
    "NotFoundError",
    "NotReadyError",
    "O",
    "PromotionResult",
    "Record",
    "ScoreResult",
    "Service",
    "ServiceError",
    "TooLargeError",
    "UnauthenticatedError",
]
