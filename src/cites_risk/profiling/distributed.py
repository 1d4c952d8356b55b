"""Batch scoring and training on a Dask cluster.

The unit of work is a :class:`Partition`: one Parquet file of contract-schema declarations
(a synthetic scenario's ``declarations/part-*.parquet``, a day's lodged batch) or a row range
of one. A task builds the partition's features against the *shared* history (Parquet files
every worker can read: :class:`HistoryFiles`), predicts, and writes
``out_dir/part-NNNNN.parquet`` under a temporary name renamed when complete. As with
:func:`~cites_risk.profiling.batch.score_stream`, partition k always holds the same rows (the
cut is recorded in ``_partitions.json`` and kept by a rerun), so a rerun after a crash (or a
lost worker) submits only the parts that are missing and never writes a row twice.

Workers load the model from a folder (:meth:`RiskModel.save`) and the compiled trees from
``<model folder>/compiled`` (compiled once per CPU kind, then cached), and keep the model and
the history in memory between their tasks. Paths must therefore be visible to every worker
(a shared file system, or one machine with a ``LocalCluster``).

Training (:func:`train_dask`) builds labelled features per partition on the workers, fits
the small learned preprocessing (category codes, unit-value bands) on the driver from the
labelled rows, and boosts with ``lightgbm.dask.DaskLGBMClassifier`` across the workers.
"""

from __future__ import annotations

import functools
import importlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import polars as pl

from cites_risk.features.contract import D
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features, collect_features
from cites_risk.features.reference import load_reference
from cites_risk.models.compiled import CompiledPredictor, cache_dir_for
from cites_risk.models.preprocess import CategoryCodes, UnitValueBands, to_matrix
from cites_risk.models.risk_model import (
    DEFAULT_PARAMS,
    Calibrator,
    RiskModel,
    categorical_columns,
    model_columns,
)
from cites_risk.models.training import LABEL, RANDOM, label_frame, random_weight
from cites_risk.profiling.atomic_files import atomic_parquet, atomic_write
from cites_risk.profiling.batch import OUTPUT_COLUMNS
from cites_risk.profiling.engine import Engine
from cites_risk.profiling.fast_score import DEFAULT_EXPLAIN_SHARE, FastEngine

if TYPE_CHECKING:
    from distributed import Client

Progress = Callable[[int, int], None]


# --- what a task reads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """Rows ``offset .. offset + rows`` of a Parquet file of declarations (all if None)."""

    index: int
    path: Path
    offset: int = 0
    rows: int | None = None

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    def scan(self) -> pl.LazyFrame:
        frame = pl.scan_parquet(self.path)
        return frame.slice(self.offset, self.rows) if self.rows is not None else frame

    def read(self) -> pl.DataFrame:
        return self.scan().collect()


_PARTITIONS = "_partitions.json"


def recorded_partitions(parts: Sequence[Partition], out_dir: Path) -> tuple[list[Partition], bool]:
    """The partitions ``out_dir`` was first scored with (``parts`` are recorded if none),
    and whether they differ from ``parts``.

    A part is skipped on a rerun because its file exists, so a rerun must cut the input as
    the first run did: other row ranges under the same part names would lose or repeat
    rows. The same files cut otherwise keep the recorded cut; other files are refused.
    """
    path = out_dir / _PARTITIONS
    described = [{"path": str(p.path.resolve()), "offset": p.offset, "rows": p.rows} for p in parts]
    if not path.exists():
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(described, indent=1)))
        return list(parts), False
    recorded = json.loads(path.read_text())
    if recorded == described:
        return list(parts), False
    if {p["path"] for p in recorded} != {p["path"] for p in described}:
        raise ValueError(
            f"{out_dir} holds the scores of other input files: score these into a new folder"
        )
    kept = [Partition(i, Path(p["path"]), p["offset"], p["rows"]) for i, p in enumerate(recorded)]
    return kept, True


def partitions(paths: Sequence[Path], rows_per_partition: int | None = None) -> list[Partition]:
    """One partition per file, or each file cut into ranges of ``rows_per_partition`` rows."""
    out: list[Partition] = []
    for path in sorted(paths):
        if rows_per_partition is None:
            out.append(Partition(len(out), path))
            continue
        n = pl.scan_parquet(path).select(pl.len()).collect().item()
        for offset in range(0, max(n, 1), rows_per_partition):
            out.append(Partition(len(out), path, offset, rows_per_partition))
    return out


@dataclass(frozen=True)
class HistoryFiles:
    """The shared history as Parquet files (contract schemas) every worker can read.

    ``declarations`` should include the batch being scored when it has been lodged, so
    consignment siblings and earlier lines of the same batch are visible (as in
    :func:`~cites_risk.profiling.batch.score_stream`).
    """

    declarations: tuple[Path, ...]
    offences: tuple[Path, ...] = ()
    inspections: tuple[Path, ...] = ()
    #: (size, modification time) of every file when named here. Workers keep the history
    #: they read per ``HistoryFiles`` (``_history``): files rewritten in place (a rerun after
    #: a consent withdrawal) must make another key, or a worker would score with the old.
    stamp: tuple[tuple[int, int], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.stamp:
            stats = (p.stat() for p in (*self.declarations, *self.offences, *self.inspections))
            object.__setattr__(self, "stamp", tuple((s.st_size, s.st_mtime_ns) for s in stats))

    def history(self) -> History:
        empty = History.empty()

        def scan(paths: tuple[Path, ...], default: pl.LazyFrame) -> pl.LazyFrame:
            return pl.scan_parquet(list(paths)) if paths else default

        return History(
            declarations=scan(self.declarations, empty.declarations),
            offences=scan(self.offences, empty.offences),
            inspections=scan(self.inspections, empty.inspections),
        )

    @classmethod
    def of_scenario(cls, folder: Path) -> HistoryFiles:
        """A synthetic scenario (``write_scenario``): its declarations, offences, inspections."""
        return cls(
            declarations=tuple(sorted((folder / "declarations").glob("part-*.parquet"))),
            offences=(folder / "offences.parquet",),
            inspections=tuple(sorted((folder / "inspections").glob("part-*.parquet"))),
        )

    @classmethod
    def write(cls, history: History, folder: Path) -> HistoryFiles:
        """Materialise a (consent-filtered) history as Parquet for the workers."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, frame in (
            ("declarations", history.declarations),
            ("offences", history.offences),
            ("inspections", history.inspections),
        ):
            path = folder / f"{name}.parquet"
            atomic_parquet(frame.collect(), path)
            paths[name] = (path,)
        return cls(paths["declarations"], paths["offences"], paths["inspections"])


@dataclass(frozen=True)
class ScoreJob:
    """Everything a scoring task needs, small enough to ship with every task."""

    model_folder: Path
    history: HistoryFiles
    out_dir: Path
    model_version: str = "local"
    #: Compiled trees and reasons for the top ``explain_share`` only (see FastEngine);
    #: ``False``: exactly :meth:`Engine.score`.
    fast: bool = True
    explain_share: float = DEFAULT_EXPLAIN_SHARE
    threads: int = 1


@dataclass
class DaskScoreResult:
    out_dir: Path
    parts: list[Path] = field(default_factory=list)
    rows_scored: int = 0
    parts_skipped: int = 0
    seconds: float = 0.0
    #: The folder was started with other partitions of the same files, and kept them.
    kept_recorded_partitions: bool = False


# --- worker side ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _scorer(
    model_folder: Path, version: str, fast: bool, explain_share: float, threads: int
) -> Engine | FastEngine:
    model = RiskModel.load(model_folder)
    model.explainer(threads=threads)  # the worker's budget, not every core of its host
    engine = Engine(model, version, load_reference())
    if not fast:
        return engine
    predictor = CompiledPredictor.for_model(model, cache_dir_for(model_folder), threads=threads)
    return FastEngine(engine, predictor, explain_share=explain_share)


@functools.lru_cache(maxsize=1)
def _history(files: HistoryFiles) -> History:
    """The history collected once per worker process and kept for its next tasks."""
    h = files.history()
    declarations, offences, inspections = pl.collect_all(
        [h.declarations, h.offences, h.inspections]
    )
    return History(declarations.lazy(), offences.lazy(), inspections.lazy())


def score_partition(job: ScoreJob, part: Partition) -> tuple[int, int]:
    """Score one partition into ``job.out_dir``; returns (partition index, rows written)."""
    path = job.out_dir / part.name
    if not path.exists():
        scorer = _scorer(
            job.model_folder, job.model_version, job.fast, job.explain_share, job.threads
        )
        declarations = part.read()
        if declarations.height:
            scored = scorer.score(declarations, _history(job.history))
            out = scored.select(c for c in OUTPUT_COLUMNS if c in scored.columns)
        else:
            out = pl.DataFrame()
        atomic_parquet(out, path)
    return part.index, pl.scan_parquet(path).select(pl.len()).collect().item()


# --- driver side ---------------------------------------------------------------------------


@contextmanager
def dask_client(
    address: str | None, *, n_workers: int = 2, threads_per_worker: int = 1, processes: bool = True
) -> Iterator[Client]:
    """A client of the cluster at ``address``, or of a LocalCluster started for the call."""
    # dask ships without type hints: its entry points are typed Any here, once.
    dd: Any = importlib.import_module("distributed")
    if address:
        with dd.Client(address) as client:
            yield client
        return
    with (
        dd.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address=None,
        ) as cluster,
        dd.Client(cluster) as client,
    ):
        yield client


def score_dask(
    client: Client | None,
    parts: Sequence[Partition],
    job: ScoreJob,
    *,
    progress: Progress | None = None,
) -> DaskScoreResult:
    """Score ``parts`` on the cluster (or in this process when ``client`` is None).

    Parts already written by an earlier run are not submitted again.
    """
    started = time.perf_counter()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    result = DaskScoreResult(job.out_dir)
    parts, result.kept_recorded_partitions = recorded_partitions(parts, job.out_dir)
    todo = [p for p in parts if not (job.out_dir / p.name).exists()]
    result.parts_skipped = len(parts) - len(todo)
    done = result.parts_skipped
    if client is None:
        for p in todo:
            score_partition(job, p)
            done += 1
            if progress:
                progress(done, len(parts))
    else:
        as_completed: Any = importlib.import_module("distributed").as_completed
        futures = client.map(score_partition, [job] * len(todo), todo, pure=False)
        for future in as_completed(futures):
            future.result()  # re-raises a task's error here
            done += 1
            if progress:
                progress(done, len(parts))
    result.parts = [job.out_dir / p.name for p in parts]
    result.rows_scored = sum(
        pl.scan_parquet(p).select(pl.len()).collect().item() for p in result.parts
    )
    result.seconds = time.perf_counter() - started
    return result


def run_score_dask(
    address: str | None, parts: Sequence[Partition], job: ScoreJob, **kw: Any
) -> DaskScoreResult:
    """:func:`score_dask` on the cluster at ``address`` (a local one when None)."""
    with dask_client(address) as client:
        return score_dask(client, parts, job, **kw)


# --- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainJob:
    history: HistoryFiles
    work_dir: Path
    valid_from: datetime
    extras: tuple[tuple[str, str], ...] = ()


def labelled_partition(job: TrainJob, part: Partition) -> tuple[int, int, int, int]:
    """Features of the partition's inspected declarations with labels, written as Parquet.

    Returns (index, labelled rows, of which random, of which before ``valid_from``).
    """
    path = job.work_dir / "labelled" / part.name
    if not path.exists():
        history = _history(job.history)
        inspections = history.inspections.collect()
        # Features depend only on the row and the history: build them for inspected rows only.
        inspected = part.scan().filter(
            pl.col(D.ID).is_in(inspections.get_column("declaration_id").implode())
        )
        features = build_features(inspected, history, load_reference(), dict(job.extras))
        labelled = label_frame(collect_features(features), inspections)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_parquet(labelled, path)
    frame = pl.read_parquet(path, columns=[D.DECLARED_AT, RANDOM])
    before = int((frame.get_column(D.DECLARED_AT) < job.valid_from).sum())
    return part.index, frame.height, int(frame.get_column(RANDOM).sum()), before


def _train_arrays(
    path: Path,
    categories: CategoryCodes,
    bands: UnitValueBands,
    columns: list[str],
    valid_from: datetime,
    weight: float,
    valid: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pl.read_parquet(path)
    period = pl.col(D.DECLARED_AT) >= valid_from
    frame = frame.filter(period if valid else ~period)
    x = to_matrix(categories.transform(bands.transform(frame)), columns)
    y = frame.get_column(LABEL).to_numpy().astype(np.float64)
    w = np.where(frame.get_column(RANDOM).to_numpy(), weight, 1.0)
    return x, y, w


def train_dask(
    client: Client,
    parts: Sequence[Partition],
    job: TrainJob,
    *,
    seed: int = 0,
    num_boost_round: int = 300,
    params: dict[str, Any] | None = None,
) -> RiskModel:
    """Train a :class:`RiskModel` on the inspected declarations of ``parts`` across the cluster.

    Rows declared before ``job.valid_from`` train the trees; later rows calibrate them. No
    early stopping: ``num_boost_round`` trees.
    """
    from lightgbm.dask import DaskLGBMClassifier

    da: Any = importlib.import_module("dask.array")
    delayed: Any = importlib.import_module("dask").delayed
    cluster: Any = client

    extras = dict(job.extras)
    counts = cluster.gather(cluster.map(labelled_partition, [job] * len(parts), parts, pure=False))
    paths = {i: job.work_dir / "labelled" / p.name for i, p in enumerate(parts)}
    n_total = sum(c[1] for c in counts)
    n_random = sum(c[2] for c in counts)
    if n_total == 0 or not any(c[3] for c in counts):
        raise ValueError("no inspected declarations before valid_from to train on")
    weight = random_weight(n_random, n_total)

    # The learned preprocessing is small: fit it on the driver from the training rows.
    train_rows = pl.concat(
        [pl.scan_parquet(paths[c[0]]) for c in counts if c[3]], how="diagonal_relaxed"
    ).filter(pl.col(D.DECLARED_AT) < job.valid_from)
    cats = categorical_columns(extras)
    columns = model_columns(extras)
    fit_frame = train_rows.collect()
    categories = CategoryCodes(cats).fit(fit_frame)
    bands = UnitValueBands().fit(fit_frame)
    positives = max(1.0, float(fit_frame.get_column(LABEL).sum()))
    negatives = float(fit_frame.height) - positives
    del fit_frame

    blocks = []
    for index, _, _, before in counts:
        if not before:
            continue
        arrays = delayed(_train_arrays, nout=3)(
            paths[index], categories, bands, columns, job.valid_from, weight, False
        )
        blocks.append(
            (
                da.from_delayed(arrays[0], (before, len(columns)), dtype=np.float64),
                da.from_delayed(arrays[1], (before,), dtype=np.float64),
                da.from_delayed(arrays[2], (before,), dtype=np.float64),
            )
        )
    x = da.concatenate([b[0] for b in blocks]).persist()
    y = da.concatenate([b[1] for b in blocks]).persist()
    w = da.concatenate([b[2] for b in blocks]).persist()

    merged = {**DEFAULT_PARAMS, **(params or {})}
    merged.setdefault("scale_pos_weight", max(1.0, (negatives / positives) ** 0.5))
    merged.update(seed=seed, deterministic=True, force_row_wise=True)
    # Each worker boosts with its own threads: LightGBM's Dask layer sets them.
    merged.pop("num_threads", None)
    merged.pop("objective", None)
    classifier = DaskLGBMClassifier(
        client=client,
        objective="binary",
        n_estimators=num_boost_round,
        **merged,
    )
    classifier.fit(x, y, sample_weight=w, feature_name=columns, categorical_feature=cats)
    booster = lgb.Booster(model_str=classifier.booster_.model_to_string())

    valid = [
        _train_arrays(paths[c[0]], categories, bands, columns, job.valid_from, weight, True)
        for c in counts
        if c[1] > c[3]
    ]
    calibrator = Calibrator()
    if valid:
        xv = np.vstack([v[0] for v in valid])
        margin = np.asarray(booster.predict(xv, raw_score=True))
        calibrator.fit(
            margin, np.concatenate([v[1] for v in valid]), np.concatenate([v[2] for v in valid])
        )
    return RiskModel(
        booster=booster,
        categories=categories,
        bands=bands,
        calibrator=calibrator,
        columns=columns,
        extras=extras,
        info={
            "best_iteration": booster.num_trees(),
            "seed": seed,
            "params": {**merged, "n_estimators": num_boost_round},
            "trained_with": "lightgbm.dask",
            "rows": {"labelled": n_total, "random": n_random},
        },
    )


def run_train_dask(
    address: str | None, parts: Sequence[Partition], job: TrainJob, **kw: Any
) -> RiskModel:
    """:func:`train_dask` on the cluster at ``address`` (a local one when None)."""
    with dask_client(address) as client:
        return train_dask(client, parts, job, **kw)
