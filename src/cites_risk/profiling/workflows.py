"""The main jobs behind the CLI: ingest a source, train a model, score a batch.

Each job takes its settings and store from the caller, reports progress through a
callback and returns what it measured, so the CLI prints and the API reuses them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cites_risk.features.contract import D, schema_of
from cites_risk.features.pipeline import build_features, collect_features
from cites_risk.features.reference import Reference
from cites_risk.models.evaluation import CAPACITIES, ScoreReport, evaluate, evaluate_scores
from cites_risk.models.report import write_run_report
from cites_risk.models.risk_model import RiskModel
from cites_risk.models.tracking import (
    CHAMPION,
    Tracking,
    alias_version,
    load_model,
    log_model_run,
)
from cites_risk.models.training import LABEL, Split, known_by, label_frame, train_and_evaluate
from cites_risk.profiling.batch import BatchResult, Deciding, score_stream
from cites_risk.profiling.config import Settings
from cites_risk.profiling.engine import (
    REASONS,
    RED_CUT,
    RED_CUT_SHARE,
    SCORE,
    SPECIES,
    decide,
    engine_for,
    in_period,
    labels_for,
    rank,
)
from cites_risk.profiling.fast_score import FastEngine
from cites_risk.profiling.history_store import (
    DeclarationHistory,
    Loading,
    batch_name,
    history_for,
)
from cites_risk.profiling.profile_evidence import (
    INFO_KEY,
    Evidence,
    from_info,
    measure,
    to_info,
    weighted,
)
from cites_risk.profiling.profiles.model import Profile, starter_profiles
from cites_risk.profiling.profiles.repository import ProfileRepository
from cites_risk.profiling.profiles.watchlist import WatchlistRepository
from cites_risk.profiling.roles import Role
from cites_risk.profiling.selection import (
    FINAL_RISK,
    LANE,
    PROFILE_HITS,
    SELECTED,
    SELECTED_BY,
    SelectionConfig,
    SelectionReport,
    select,
)
from cites_risk.profiling.selection_eval import StrategyResult, compare_strategies
from cites_risk.profiling.sources import (
    Loaded,
    RejectsFile,
    Repeats,
    load_checked,
    load_mapping,
    load_records,
    source_chunks,
    source_header,
    write_rejects,
)
from cites_risk.profiling.store import Actor, Store, Topic

Progress = Callable[[str], None]
#: Rows done and rows in all (None while unknown), as ``profiling/batch.py`` reports them.
RowsProgress = Callable[[int, int | None], None]


def _quiet(_: str) -> None:
    return None


def tracking_for(settings: Settings) -> Tracking:
    return Tracking(
        tracking_uri=settings.tracking_uri,
        artifact_root=settings.artifact_root,
        experiment=settings.experiment,
        model_name=settings.model_name,
    )


#: Source rows read, checked and stored at a time by ``ingest``: its memory is bounded by
#: this, not by the size of the source.
INGEST_CHUNK_ROWS = 200_000


@dataclass
class Tally:
    """What one record type of a source came to."""

    record: str
    rows_read: int = 0
    accepted: int = 0
    rejected_rows: int = 0

    def add(self, loaded: Loaded) -> None:
        self.rows_read += loaded.rows_read
        self.accepted += loaded.accepted.height
        # A chunk's rows are its own: per-chunk counts add up to the source's.
        self.rejected_rows += loaded.rejected_rows

    @property
    def summary(self) -> str:
        return (
            f"{self.rows_read} rows read, {self.accepted} {self.record} records accepted, "
            f"{self.rejected_rows} rows rejected"
        )


@dataclass
class IngestResult:
    tallies: dict[str, Tally] = field(default_factory=dict)
    rejects_files: dict[str, Path] = field(default_factory=dict)


def ingest(
    settings: Settings,
    store: Store,
    reference: Reference,
    source: Path,
    mapping_name: str,
    actor: Actor,
    *,
    rejects_dir: Path | None = None,
    progress: RowsProgress | None = None,
    chunk_rows: int = INGEST_CHUNK_ROWS,
) -> IngestResult:
    """Load every record type the mapping defines; valid rows go in, rejects to a file.

    The source is read once, in chunks of ``chunk_rows`` lines, each checked and stored
    before the next is read, so a source of any size loads in bounded memory. A record
    repeated in a later chunk is rejected as one repeated within a chunk is. Offence
    records and inspection results are stored chunk by chunk (each chunk audited); the
    declarations are staged and replace the source's earlier load only once every chunk
    is read, so a load that fails leaves them as they were. Loading the same source
    again replaces its declarations and its records (the store's keys): a load cut short
    is rerun, never doubled. ``progress`` hears the rows read so far.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    mapping = load_mapping(mapping_name)
    batch = batch_name(mapping.name, source)
    folder = rejects_dir or settings.output_dir
    history = DeclarationHistory(settings.history_dir)
    # A header the mapping does not fit stops the load before anything is stored.
    header = source_header(source, mapping)
    for record in mapping.records:
        load_checked(source, header, mapping, record, reference, 0)
    result = IngestResult(tallies={record: Tally(record) for record in mapping.records})
    repeats = {record: Repeats(record) for record in mapping.records}
    rejects = {
        record: RejectsFile(folder / f"{batch}.{record}.rejects.csv") for record in mapping.records
    }
    read = 0
    with history.loading(batch) as loading, _abandoned_on_error(rejects.values()):
        for k, chunk in source_chunks(source, mapping, chunk_rows):
            for record in mapping.records:
                loaded = repeats[record].drop_repeats(
                    load_checked(source, chunk.lazy(), mapping, record, reference, chunk.height)
                )
                if loaded.accepted.height:
                    loaded = _stored(loaded, store, loading, k)
                result.tallies[record].add(loaded)
                rejects[record].write(loaded.rejects)
                if record != "declaration":
                    store.audit.record(
                        actor,
                        f"ingest.{record}",
                        str(source),
                        chunk=k,
                        rows=[read + 1, read + chunk.height],
                        accepted=loaded.accepted.height,
                        rejected_rows=loaded.rejected_rows,
                    )
            read += chunk.height
            if progress is not None:
                progress(read, None)
        if "declaration" in mapping.records:
            loading.publish()
    if "declaration" in mapping.records:
        tally = result.tallies["declaration"]
        store.audit.record(
            actor,
            "ingest.declaration",
            str(source),
            accepted=tally.accepted,
            rejected_rows=tally.rejected_rows,
        )
    for record in mapping.records:
        if (path := rejects[record].close()) is not None:
            result.rejects_files[record] = path
    return result


@contextmanager
def _abandoned_on_error(files: Iterable[RejectsFile]) -> Iterator[None]:
    """A load that fails leaves no half-written rejects behind."""
    try:
        yield
    except BaseException:
        for file in files:
            file.abandon()
        raise


def _stored(loaded: Loaded, store: Store, loading: Loading, k: int) -> Loaded:
    """``loaded``'s records stored where their type belongs; the store may refuse some."""
    if loaded.record == "declaration":
        loading.stage(loaded.accepted, k)
    elif loaded.record == "offence":
        refused = store.offences.add(loaded.accepted)
        return loaded.refuse(refused, "id held by another provider's record")
    elif loaded.record == "inspection":
        store.inspections.add(loaded.accepted)
    return loaded


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    version: str | None
    metrics: dict[str, float]
    sizes: dict[str, int]
    #: The model and its baselines on the same test rows.
    reports: list[ScoreReport] = field(default_factory=list)


def train(
    settings: Settings,
    store: Store,
    reference: Reference,
    split: Split,
    actor: Actor,
    *,
    mapping_name: str,
    seed: int = 0,
    bag: int = 1,
    n_boot: int = 200,
    progress: Progress = _quiet,
) -> TrainOutcome:
    """Train on the stored history up to ``split.test_from``; evaluate on the test period.

    ``bag``: seeds averaged into the model (``train_and_evaluate``)."""
    extras = load_mapping(mapping_name).extra_kinds
    history = history_for(store, DeclarationHistory(settings.history_dir), actor.organisation)
    progress("building point-in-time features")
    declarations = history.declarations
    if split.test_until is not None:
        declarations = declarations.filter(pl.col(D.DECLARED_AT) < split.test_until)
    features = collect_features(build_features(declarations, history, reference, extras))
    labelled = label_frame(features, store.inspections.all())
    models = f"{bag} LightGBM models (seeds averaged)" if bag > 1 else "LightGBM"
    progress(f"training {models} on {labelled.height:,} inspected declarations")
    result = train_and_evaluate(
        labelled,
        split,
        seed=seed,
        extras=extras,
        baselines=True,
        n_boot=n_boot,
        bag=bag,
        on_member=(
            (lambda k, n, s: progress(f"training member {k} of {n} (seed {s})"))
            if bag > 1
            else None
        ),
    )
    progress("measuring the enabled risk profiles on the inspected history")
    contract = declarations.select(
        D.ID, *(c for c in schema_of(declarations).names() if c not in labelled.columns)
    ).collect()
    profiles = ProfileRepository(store).enabled()
    past = known_by(labelled, split.test_from).filter(pl.col(D.DECLARED_AT) < split.test_from)
    evidence = measure(
        past.join(contract, on=D.ID, how="left"), profiles, past.get_column(LABEL).to_numpy()
    )
    result.model.info[INFO_KEY] = to_info(evidence)
    reports = list(result.reports)
    if len(result.test_scores):
        # The probability the top 5 % of the most recent period reached, with its real
        # history: the red cut for declarations scored one at a time.
        result.model.info[RED_CUT] = float(np.quantile(result.test_scores, 1.0 - RED_CUT_SHARE))
        if profiles:
            reports.append(
                _rules_alone(
                    result.test.features, contract, profiles, evidence, result.test.label, n_boot
                )
            )
    progress("logging the run and registering the model in MLflow")
    params: dict[str, Any] = {
        "seed": seed,
        "bag": bag,
        "valid_from": split.valid_from.date(),
        "test_from": split.test_from.date(),
        "mapping": mapping_name,
        "organisation": actor.organisation,
        **{f"size_{k}": v for k, v in result.sizes.items()},
        **{f"lgb_{k}": v for k, v in result.model.info["params"].items()},
        "best_iteration": result.model.info["best_iteration"],
        **({"member_seeds": result.model.info["member_seeds"]} if bag > 1 else {}),
    }
    tracking = tracking_for(settings)
    with tempfile.TemporaryDirectory() as tmp:
        report_dir = Path(tmp) / "report"
        if len(result.test_scores):
            write_run_report(
                result.model,
                result.test.features,
                result.test.label,
                result.test_scores,
                reports,
                report_dir,
                title=f"cites-risk model on {mapping_name}",
            )
        run_id, version = log_model_run(
            tracking,
            result.model,
            params=params,
            metrics=result.metrics,
            example=labelled.head(50),
            run_name=f"train-{mapping_name}",
            artifacts={"report": report_dir} if report_dir.exists() else None,
        )
    store.audit.record(actor, "model.train", version, run_id=run_id, **result.sizes)
    if alias_version(tracking, CHAMPION) == version:
        # The first model registered is champion at once: a running API loads it.
        store.changed(Topic.CHAMPION)
    return TrainOutcome(run_id, version, result.metrics, result.sizes, reports)


def _rules_alone(
    test_features: pl.DataFrame,
    contract: pl.DataFrame,
    profiles: Sequence[Profile],
    evidence: Mapping[str, Evidence],
    labels: np.ndarray,
    n_boot: int,
) -> ScoreReport:
    """The rule profiles alone, ranked by the risk their (earned) weights give."""
    frame = test_features.join(contract, on=D.ID, how="left", maintain_order="left")
    rules_only = frame.with_columns(pl.lit(None, pl.Float64).alias(SCORE))
    risk = select(rules_only, weighted(profiles, evidence), SelectionConfig(pool="batch")).frame
    return evaluate_scores(
        "rule profiles alone", labels, risk.get_column(FINAL_RISK).to_numpy(), n_boot=n_boot
    )


@dataclass(frozen=True)
class ScoreOutcome:
    output: dict[str, Path]
    rows: int
    rejected_rows: int
    metrics: dict[str, float] | None
    model_version: str
    lanes: dict[str, int]
    report: SelectionReport
    comparison: list[StrategyResult] | None


OUTPUT_COLUMNS = (
    "rank",
    D.ID,
    D.DECLARED_AT,
    D.OFFICE,
    D.HS,
    SCORE,
    FINAL_RISK,
    LANE,
    SELECTED,
    SELECTED_BY,
    PROFILE_HITS,
    SPECIES,
    REASONS,
)


def score_file(
    settings: Settings,
    store: Store,
    reference: Reference,
    source: Path,
    mapping_name: str,
    actor: Actor,
    *,
    out: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    model_ref: str = "champion",
    selection: SelectionConfig | None = None,
    progress: Progress = _quiet,
) -> ScoreOutcome:
    """Score a file as one batch: lanes, selection and reasons, ranked Parquet and CSV.

    Where inspection results of the scored declarations are known, also measures the model
    at capacity and compares model, profiles and both combined at the same capacity.
    """
    selection = selection or SelectionConfig(capacity_share=0.05)
    mapping = load_mapping(mapping_name)
    progress(f"reading declarations from {source.name}")
    loaded = load_records(source, mapping, "declaration", reference)
    if loaded.rejects.height:
        write_rejects(loaded.rejects, out.with_suffix(".rejects.csv"))
    declarations = in_period(loaded.accepted, start, end)
    # Lodged declarations join the history first: consignment siblings see each other.
    history_files = DeclarationHistory(settings.history_dir)
    lodged = batch_name(mapping.name, source)
    # In one chunk, replacing what an ingest of the same file lodged in several.
    with history_files.loading(lodged) as loading:
        loading.stage(loaded.accepted, 0)
        loading.publish()
    history = history_for(store, history_files, actor.organisation)
    model, version = load_model(tracking_for(settings), model_ref)
    engine = engine_for(settings, model, version, reference)
    progress(f"scoring {declarations.height:,} declarations with model v{version}")
    scored = engine.score(declarations, history)
    deciding = batch_deciding(store, model, actor, selection)
    profiles = deciding.profiles
    progress(f"selecting with {len(profiles)} profiles within capacity")
    decisions = decide(
        scored, profiles, selection, role=deciding.role, watchlist=deciding.watchlist
    )
    ranked = rank(decisions.frame)
    metrics, comparison = None, None
    y = labels_for(ranked, store.inspections.all())
    if y.sum() > 0:
        metrics = evaluate(y, ranked.get_column(SCORE).to_numpy(), capacities=CAPACITIES)
        comparison = compare_strategies(ranked, profiles, y, selection)
    out.parent.mkdir(parents=True, exist_ok=True)
    parquet, csv = out.with_suffix(".parquet"), out.with_suffix(".csv")
    table = ranked.select(OUTPUT_COLUMNS)
    table.write_parquet(parquet)
    table.with_columns(
        pl.col(REASONS).list.join(" | "), pl.col(PROFILE_HITS).list.join(";")
    ).write_csv(csv)
    lanes = dict(ranked.get_column(LANE).value_counts().iter_rows())
    _audit_batch(store, actor, source, ranked.height, version, parquet, lanes)
    return ScoreOutcome(
        {"parquet": parquet, "csv": csv},
        ranked.height,
        loaded.rejected_rows,
        metrics,
        version,
        lanes,
        decisions.report,
        comparison,
    )


@dataclass
class StreamOutcome:
    """What a streamed score wrote and found."""

    result: BatchResult
    model_version: str
    lanes: dict[str, int]


def score_file_in_chunks(
    settings: Settings,
    store: Store,
    reference: Reference,
    source: Path,
    mapping_name: str,
    actor: Actor,
    *,
    out_dir: Path,
    chunk_rows: int,
    model_ref: str = "champion",
    selection: SelectionConfig | None = None,
    progress: RowsProgress | None = None,
    lodging: RowsProgress | None = None,
) -> StreamOutcome:
    """Score a file of any size in chunks of ``chunk_rows`` (``profiling/batch.py``).

    Bounded memory, partitioned Parquet in ``out_dir``, selection over the whole batch in
    ``decisions.parquet``; rerun with the same ``out_dir`` to resume after a crash. Model
    reasons are given to the top ``DEFAULT_EXPLAIN_SHARE`` of each chunk
    (``profiling/fast_score.py``); every selected row still has its selection reasons.
    """
    mapping = load_mapping(mapping_name)
    model, version = load_model(tracking_for(settings), model_ref)
    # Model reasons for the red lane's share only: on millions of rows, explaining every
    # row would cost more than the features and the trees together.
    engine = FastEngine(engine_for(settings, model, version, reference))
    deciding = batch_deciding(
        store, model, actor, selection or SelectionConfig(capacity_share=0.05)
    )
    result = score_stream(
        settings,
        store,
        reference,
        engine,
        source,
        mapping,
        actor,
        out_dir,
        chunk_rows=chunk_rows,
        progress=progress,
        deciding=deciding,
        lodging=lodging,
    )
    lanes: dict[str, int] = {}
    if result.decisions_path is not None:
        counts = pl.scan_parquet(result.decisions_path).group_by(LANE).len().collect()
        lanes = dict(counts.iter_rows())
    _audit_batch(store, actor, source, result.rows_scored, version, out_dir, lanes)
    return StreamOutcome(result, version, lanes)


def batch_deciding(
    store: Store, model: RiskModel, actor: Actor, selection: SelectionConfig
) -> Deciding:
    """How a scored file is selected: the enabled profiles, with the weights earned on
    past inspections (measured at training time) in place of the guesses, the watch-lists
    and the caller's role."""
    return Deciding(
        weighted(ProfileRepository(store).enabled(), from_info(model.info)),
        selection,
        role=Role(actor.role),
        watchlist=WatchlistRepository(store).index(actor.organisation),
    )


def _audit_batch(
    store: Store,
    actor: Actor,
    source: Path,
    rows: int,
    version: str,
    output: Path,
    lanes: dict[str, int],
) -> None:
    store.audit.record(
        actor,
        "score.batch",
        str(source),
        rows=rows,
        model_version=version,
        output=str(output),
        lanes=lanes,
    )


def install_starter_profiles(store: Store, actor: Actor) -> int:
    """Put the packaged starter library in the store; unchanged profiles are left as they are."""
    results = ProfileRepository(store).import_profiles(starter_profiles(), actor)
    return sum(1 for r in results if r.action is not None)
