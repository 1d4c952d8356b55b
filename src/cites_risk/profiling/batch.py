"""Streaming batch scoring: files larger than memory, bounded memory, resumable.

Two passes over the source, both in fixed chunks of ``chunk_rows`` source rows:

1. *lodge*: each chunk's valid declarations are appended to the declaration history (so that
   consignment siblings and earlier lines are visible to every row, wherever its chunk).
   An id already accepted in an earlier chunk is rejected as a duplicate, as one repeated
   within a chunk is (``sources.Repeats``, which ``cites-risk ingest`` uses as well);
2. *score*: each chunk is scored against the full history and written as
   ``part-NNNNN.parquet``. The history is carried from chunk to chunk
   (``features/carry.py``): chunks in time order sort only their own events. Offence records
   are those the store holds when a chunk starts: a consent withdrawn mid-job reaches the
   chunks still to come.

3. *decide*: once every part exists, selection runs over the whole batch (capacity per
   office and day spans chunks) and writes ``decisions.parquet``: final risk, lane, how
   each declaration was selected and its reasons.

Chunk k always holds source rows ``k * chunk_rows + 1 .. (k + 1) * chunk_rows``, and a part
is written under a temporary name and renamed when complete. A rerun after a crash
therefore skips the parts that exist and never writes a row twice. The chunk size is
recorded when the first pass ends, and a rerun keeps it whatever it is asked for: parts
cut at another size would skip or repeat rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import polars as pl

from cites_risk.features.adapters import ROW, SourceMapping
from cites_risk.features.carry import HistoryWalk
from cites_risk.features.contract import D, schema_of
from cites_risk.features.history import History
from cites_risk.features.reference import Reference
from cites_risk.features.validation import REJECT_SCHEMA
from cites_risk.models.risk_model import RiskModel
from cites_risk.profiling.atomic_files import atomic_parquet, atomic_write
from cites_risk.profiling.config import Settings
from cites_risk.profiling.engine import REASONS, SCORE, SPECIES, decide
from cites_risk.profiling.fast_score import FastEngine
from cites_risk.profiling.history_store import DeclarationHistory, batch_name, history_for
from cites_risk.profiling.profiles.model import Profile
from cites_risk.profiling.profiles.watchlist import WatchlistIndex
from cites_risk.profiling.roles import Role
from cites_risk.profiling.selection import (
    FINAL_RISK,
    LANE,
    PROFILE_HITS,
    SELECTED,
    SELECTED_BY,
    LaneQuota,
    SelectionConfig,
    SelectionReport,
)
from cites_risk.profiling.sources import (
    Loaded,
    Repeats,
    check_records,
    source_chunks,
    write_rejects,
)
from cites_risk.profiling.store import Actor, Store, Topic, counter

Progress = Callable[[int, int | None], None]
OUTPUT_COLUMNS = (
    D.ID,
    D.CONSIGNMENT,
    D.DECLARED_AT,
    D.OFFICE,
    D.HS,
    D.IMPORTER,
    D.EXPORTER,
    D.ORIGIN,
    SCORE,
    SPECIES,
    REASONS,
    "top_features",
    "sp_appendix",
    "sp_taxon",
)
_LODGED = "_lodged.json"
#: Rejects of the ids repeated across chunks, found once every chunk is lodged.
_REPEATED = "repeated-ids.parquet"
#: Declarations per selection pool (office and day), counted while lodging (``LaneQuota``).
_POOLS = "_pools.parquet"


DECISIONS = "decisions.parquet"


class Scorer(Protocol):
    """What scores a chunk: an :class:`~cites_risk.profiling.engine.Engine` (reasons for
    every row) or a :class:`~cites_risk.profiling.fast_score.FastEngine` (reasons for the
    top rows only)."""

    @property
    def model(self) -> RiskModel: ...

    def score(self, declarations: pl.DataFrame, history: History) -> pl.DataFrame: ...


@dataclass(frozen=True)
class Deciding:
    """What the decide pass needs: the enabled profiles, capacity, viewer and watch-lists."""

    profiles: Sequence[Profile]
    config: SelectionConfig
    role: Role = Role.INSPECTOR
    watchlist: WatchlistIndex | None = None

    def columns(self) -> set[str]:
        """Columns the parts must keep for the profiles to be evaluated."""
        return {c for p in self.profiles for c in p.columns}


@dataclass
class BatchResult:
    out_dir: Path
    parts: list[Path] = field(default_factory=list)
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    rejects_path: Path | None = None
    decisions_path: Path | None = None
    report: SelectionReport | None = None


def _validated(
    chunk: pl.DataFrame,
    mapping: SourceMapping,
    reference: Reference,
    skipped: pl.Series | None = None,
) -> Loaded:
    """The chunk's declarations checked: the accepted (with their source rows) and rejects.

    ``skipped``: source rows rejected since (repeats of an earlier chunk's id), left out of
    the accepted once the chunk is validated whole, as when it was lodged: left out before,
    a later repeat within the chunk would take their place."""
    rows, rejects = check_records(chunk.lazy(), mapping, "declaration", reference)
    if skipped is not None:
        rows = rows.filter(pl.col(ROW).is_in(skipped.implode()).not_())
    return Loaded.checked("declaration", rows, rejects, chunk.height)


class _StoredRecords:
    """The history a job scores against, with the offence records the store holds when
    each chunk starts.

    A job can run for as long as its file is large. An offence record withdrawn from the
    job's organisation in the meantime (consent, MoU clause 10) must not reach the chunks
    still to come: when the store's offence counter moved, the history is read again and
    the walk starts over from it (one full carry, paid only after such a change).
    Inspection results, recorded all day long, do not restart it: the job keeps those it
    read at its start, as a job started a minute earlier would (no consent governs them).
    """

    def __init__(
        self,
        store: Store,
        files: DeclarationHistory,
        organisation: str,
        extras: dict[str, str] | None,
    ) -> None:
        self.store = store
        self.files = files
        self.organisation = organisation
        self.extras = extras
        #: The store's offence counter when the history was read.
        self._offences: int | None = None
        self._walk: HistoryWalk | None = None

    def walk(self) -> HistoryWalk:
        # Read before the records it guards (see ``Database.stamps``).
        offences = counter(self.store.stamps(), Topic.OFFENCES)
        if self._walk is None or offences != self._offences:
            history = history_for(self.store, self.files, self.organisation)
            # Chunks in time order fold the history forward instead of sorting it again.
            self._walk = HistoryWalk(history, self.extras)
            self._offences = offences
        return self._walk


def score_stream(
    settings: Settings,
    store: Store,
    reference: Reference,
    engine: Scorer,
    source: Path,
    mapping: SourceMapping,
    actor: Actor,
    out_dir: Path,
    *,
    chunk_rows: int = 200_000,
    progress: Progress | None = None,
    deciding: Deciding | None = None,
    lodging: Progress | None = None,
) -> BatchResult:
    """Score ``source`` into ``out_dir/part-*.parquet``; rerunning resumes where it stopped.

    With ``deciding``, also select within capacity over the whole batch (``decisions``).
    ``progress`` hears (rows scored, rows in the source) after each part, ``lodging``
    (rows lodged, None) after each chunk of the first pass.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_dir = out_dir / "_rejects"
    rejects_dir.mkdir(exist_ok=True)
    history_files = DeclarationHistory(settings.history_dir)
    lodged_batch = batch_name(mapping.name, out_dir)
    result = BatchResult(out_dir)

    def lodged_as(k: int) -> str:
        return DeclarationHistory.part(lodged_batch, k)

    marker = out_dir / _LODGED
    repeated_path = rejects_dir / _REPEATED
    pools_path = out_dir / _POOLS
    quota = LaneQuota(deciding.config) if deciding is not None else None
    if marker.exists():
        lodged = json.loads(marker.read_text())
        total = int(lodged["rows"])
        chunk_rows = int(lodged.get("chunk_rows", chunk_rows))
        if quota is not None and pools_path.exists():
            quota.sizes = pl.read_parquet(pools_path)
    else:
        # A first pass cut short, maybe in chunks of another size: nothing of it may stay.
        for stale in rejects_dir.glob("part-*.parquet"):
            stale.unlink()
        history_files.discard_parts(lodged_batch)
        total = 0
        repeats = Repeats("declaration")
        repeated: list[pl.DataFrame] = [pl.DataFrame(schema=REJECT_SCHEMA)]
        for k, chunk in source_chunks(source, mapping, chunk_rows):
            checked = _validated(chunk, mapping, reference)
            loaded = repeats.drop_repeats(checked)
            if quota is not None:
                quota.counted(loaded.accepted)
            history_files.append(loaded.accepted, lodged_as(k))
            atomic_parquet(checked.rejects, rejects_dir / f"part-{k:05d}.parquet")
            # Accepted rows have no rejects of their own: the rest are repeats, which the
            # scoring pass must skip as well.
            before = checked.rejects.get_column("row").implode()
            repeated.append(loaded.rejects.filter(pl.col("row").is_in(before).not_()))
            total += chunk.height
            if lodging:
                lodging(total, None)
        atomic_parquet(pl.concat(repeated), repeated_path)
        if quota is not None and quota.sizes is not None:
            atomic_parquet(quota.sizes, pools_path)
        text = json.dumps({"rows": total, "source": str(source), "chunk_rows": chunk_rows})
        atomic_write(marker, lambda tmp: tmp.write_text(text))
    result.rows_read = total
    # Runs lodged before repeats were looked for across chunks have no such file.
    skipped = (
        pl.read_parquet(repeated_path).get_column("row")
        if repeated_path.exists()
        else pl.Series("row", [], pl.Int64)
    )

    records = _StoredRecords(store, history_files, actor.organisation, engine.model.extras)
    # The lanes are decided over the whole batch after its chunks: each chunk explains the
    # rows ranking may put in a lane, from the pools' sizes counted while lodging.
    if isinstance(engine, FastEngine) and quota is not None and quota.sizes is not None:
        engine = replace(engine, quota=quota)
    done = 0
    for k, chunk in source_chunks(source, mapping, chunk_rows):
        part = out_dir / f"part-{k:05d}.parquet"
        if part.exists():
            if isinstance(engine, FastEngine) and engine.quota is not None:
                engine.quota.seen(
                    pl.read_parquet(part, columns=[D.ID, D.OFFICE, D.DECLARED_AT, SCORE])
                )
        else:
            accepted = _validated(chunk, mapping, reference, skipped).accepted
            keep = set(OUTPUT_COLUMNS) | (deciding.columns() if deciding else set())
            scored = engine.score(accepted, records.walk().for_batch(accepted))
            atomic_parquet(scored.select(c for c in scored.columns if c in keep), part)
        result.parts.append(part)
        done += chunk.height
        if progress:
            progress(done, total)

    rejects = pl.concat(
        [pl.read_parquet(p) for p in sorted(rejects_dir.glob("*.parquet"))]
        or [pl.DataFrame(schema=REJECT_SCHEMA)]
    ).sort("row")
    result.rows_rejected = rejects.get_column("row").n_unique()
    if rejects.height:
        result.rejects_path = write_rejects(rejects, out_dir / "rejects.csv")
    result.rows_scored = sum(
        pl.scan_parquet(p).select(pl.len()).collect().item() for p in result.parts
    )
    if deciding is not None:
        result.decisions_path, result.report = _decide(out_dir, deciding)
    return result


def _decide(out_dir: Path, deciding: Deciding) -> tuple[Path | None, SelectionReport | None]:
    """Selection over every part at once; the slim columns of 10 M rows fit in memory."""
    path = out_dir / DECISIONS
    if path.exists():
        return path, None
    if not any(out_dir.glob("part-*.parquet")):
        return None, None  # a source without rows (a header only): nothing to select
    needed = {D.ID, D.OFFICE, D.DECLARED_AT, SCORE, REASONS, SPECIES} | deciding.columns()
    scored = read_parts(out_dir)
    frame = scored.select(c for c in schema_of(scored).names() if c in needed).collect()
    decisions = decide(
        frame,
        deciding.profiles,
        deciding.config,
        role=deciding.role,
        watchlist=deciding.watchlist,
    )
    columns = [D.ID, FINAL_RISK, LANE, SELECTED, SELECTED_BY, PROFILE_HITS, REASONS]
    atomic_parquet(decisions.frame.select(columns), path)
    return path, decisions.report


def read_parts(out_dir: Path) -> pl.LazyFrame:
    """All scored parts of a batch as one lazy frame."""
    parts = sorted(out_dir.glob("part-*.parquet"))
    return pl.scan_parquet(parts) if parts else pl.LazyFrame()
