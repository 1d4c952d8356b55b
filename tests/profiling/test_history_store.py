"""The declaration history on disk: what ingesting files gives the features to read."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.reference import Reference
from cites_risk.profiling.config import Settings
from cites_risk.profiling.history_store import _HELD, RETIRE_AFTER, DeclarationHistory
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.workflows import ingest

ACTOR = Actor("clerk", "US-FWS", "analyst")
MAPPING = """
name: export
records:
  declaration:
    declaration_id: id
    declared_at: date
    office: office
    quantity: qty
"""


def _ingest(settings: Settings, store: Store, reference: Reference, path: Path, rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id,date,office,qty\n" + rows)
    mapping = path.parent.parent / "export.yaml"
    mapping.write_text(MAPPING)
    ingest(settings, store, reference, path, str(mapping), ACTOR)


def _lodged(settings: Settings) -> dict[str, float]:
    frame = DeclarationHistory(settings.history_dir).scan().collect()
    return dict(frame.select("declaration_id", "quantity").iter_rows())


def test_each_days_export_of_one_name_is_kept(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    """A national system exports export.csv every day: day 2 must add to day 1, not replace it."""
    day1 = "a,2024-01-01,JFK,1\nbad1,2024-01-01,JFK,-1\n"
    _ingest(settings, store, reference, tmp_path / "day1" / "export.csv", day1)
    day2 = "b,2024-01-02,JFK,2\nbad2,2024-01-02,JFK,-2\n"
    _ingest(settings, store, reference, tmp_path / "day2" / "export.csv", day2)
    assert _lodged(settings) == {"a": 1.0, "b": 2.0}
    # And each day's rejects are kept for its clerk to fix.
    rejected = sorted(settings.output_dir.glob("*.rejects.csv"))
    assert [f.read_text().count("must not be negative") for f in rejected] == [1, 1]
    # The same file lodged again replaces its own batch: nothing doubles.
    _ingest(settings, store, reference, tmp_path / "day2" / "export.csv", "b,2024-01-02,JFK,5\n")
    assert _lodged(settings) == {"a": 1.0, "b": 5.0}
    assert len(DeclarationHistory(settings.history_dir).files()) == 2


def test_a_correction_lodged_later_wins_whatever_its_file_is_called(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    _ingest(settings, store, reference, tmp_path / "in" / "b.csv", "x,2024-01-01,JFK,1\n")
    _ingest(settings, store, reference, tmp_path / "in" / "a.csv", "x,2024-01-01,JFK,7\n")
    assert _lodged(settings) == {"x": 7.0}


def _frame(*ids: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "declaration_id": list(ids),
            "declared_at": [datetime(2024, 1, 1, tzinfo=UTC)] * len(ids),
            "office": ["JFK"] * len(ids),
        }
    )


def _ids(history: DeclarationHistory) -> list[str]:
    return sorted(history.scan().collect().get_column("declaration_id"))


def _publish(history: DeclarationHistory, batch: str, *chunks: pl.DataFrame) -> None:
    """One load of ``batch`` in ``chunks`` (chunk 0, 1, ...), published."""
    with history.loading(batch) as loading:
        for k, chunk in enumerate(chunks):
            loading.stage(chunk, k)
        loading.publish()


def test_of_two_loads_of_a_source_the_later_publish_is_the_whole_result(tmp_path: Path) -> None:
    """A retried job and the first attempt, or a score of the file during its ingest: each
    load stages its own chunks, and publishing one never takes in or deletes the other's."""
    history = DeclarationHistory(tmp_path / "history")
    history.append(_frame("old"), "src")  # the source as an earlier version lodged it, whole
    first, second = history.loading("src"), history.loading("src")
    first.stage(_frame("a", "b"), 0)
    first.stage(_frame("c"), 1)
    second.stage(_frame("x"), 0)
    second.publish()
    assert _ids(history) == ["x"]
    first.publish()
    assert _ids(history) == ["a", "b", "c"]
    assert not list((tmp_path / "history" / "_staging").glob("*/*"))


def test_a_load_abandoned_leaves_the_source_as_it_was(tmp_path: Path) -> None:
    history = DeclarationHistory(tmp_path / "history")
    history.append(_frame("old"), "src")
    with pytest.raises(RuntimeError), history.loading("src") as loading:
        loading.stage(_frame("a"), 0)
        raise RuntimeError("the source broke at its second chunk")
    assert _ids(history) == ["old"]
    assert not list((tmp_path / "history" / "_staging").glob("*/*"))


def test_chunk_100000_and_on_are_published(tmp_path: Path) -> None:
    """Part names grow a sixth digit there; they are still the source's chunks."""
    history = DeclarationHistory(tmp_path / "history")
    with history.loading("src") as loading:
        loading.stage(_frame("a"), 99_999)
        loading.stage(_frame("b"), 100_000)
        loading.publish()
    assert _ids(history) == ["a", "b"]
    _publish(history, "src", _frame("c"))
    assert _ids(history) == ["c"]


def test_a_load_counts_as_lodged_when_it_is_published(tmp_path: Path) -> None:
    """Another batch lodged while a long load runs holds the same id: the load, published
    after it, is the later word."""
    history = DeclarationHistory(tmp_path / "history")
    loading = history.loading("long-load")
    loading.stage(_frame("x").with_columns(pl.lit("LOAD").alias("office")), 0)
    history.append(_frame("x").with_columns(pl.lit("MEANWHILE").alias("office")), "other")
    loading.publish()
    assert history.scan().collect().get_column("office").to_list() == ["LOAD"]


def test_a_query_planned_before_a_publish_reads_the_load_it_listed_whole(tmp_path: Path) -> None:
    """A reader lists the files when it plans and opens them when it runs: a load published
    in between must neither mix into nor break what it listed, and the next reader sees
    the new load whole."""
    history = DeclarationHistory(tmp_path / "history")
    _publish(history, "src", _frame("a"), _frame("b"))
    planned = history.scan()
    _publish(history, "src", _frame("c"))
    assert sorted(planned.collect().get_column("declaration_id")) == ["a", "b"]
    assert _ids(history) == ["c"]


def test_a_replaced_generation_is_removed_once_it_has_been_retired_long_enough(
    tmp_path: Path,
) -> None:
    kept = DeclarationHistory(tmp_path / "kept")
    swept = DeclarationHistory(tmp_path / "swept", retire_after=0.0)
    for history in (kept, swept):
        for ids in (["a"], ["b"], ["c"]):
            _publish(history, "src", _frame(*ids))
        assert _ids(history) == ["c"]
    generations = [p for p in (tmp_path / "kept").iterdir() if p.name != "_staging"]
    assert len(generations) == 3  # replaced within the last hour: a reader may hold them
    assert [p.name for p in (tmp_path / "swept").iterdir() if p.name != "_staging"] == [
        swept.files()[0].parent.name
    ]


def test_a_host_whose_clock_runs_a_day_ahead_does_not_retire_a_fresh_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts share one history folder. One publishes a load replacing another; a host
    whose clock is two days ahead then starts a load of its own: the generation replaced a
    moment ago is kept for readers that listed it, because its age is read off the file
    system's clock, not the host's."""
    history = DeclarationHistory(tmp_path / "history")
    _publish(history, "src", _frame("a"))
    planned = history.scan()
    _publish(history, "src", _frame("b"))
    two_days = 2 * 24 * 3600 * 10**9
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + two_days)
    _publish(history, "other", _frame("z"))
    assert len([p for p in history.folder.glob("src@*")]) == 2
    # Dated by the file system too: a later load elsewhere is not dated two days ahead.
    (other,) = history.folder.glob("other@*")
    assert int(other.name.rpartition("@")[2]) < real() + 60 * 10**9
    assert planned.collect().get_column("declaration_id").to_list() == ["a"]
    assert _ids(history) == ["b", "z"]


def test_a_load_replaces_chunks_published_as_files_of_the_history_folder(tmp_path: Path) -> None:
    """A history written before generations held a load's chunks beside the batches: the
    first generation hides them at once, and they go once retired, as a generation would."""
    for retire_after, left in ((RETIRE_AFTER, ["src-00000.parquet", "src-00001.parquet"]), (0, [])):
        folder = tmp_path / str(retire_after)
        history = DeclarationHistory(folder, retire_after=retire_after)
        history.append(_frame("a"), DeclarationHistory.part("src", 0))
        history.append(_frame("b"), DeclarationHistory.part("src", 1))
        history.append(_frame("z"), "other")
        planned = history.scan()
        _publish(history, "src", _frame("x"))
        assert _ids(history) == ["x", "z"]
        assert sorted(p.name for p in folder.glob("src*.parquet")) == left
        if left:
            assert sorted(planned.collect().get_column("declaration_id")) == ["a", "b", "z"]


def test_a_load_published_after_the_clock_stepped_back_is_still_the_later_word(
    tmp_path: Path,
) -> None:
    history = DeclarationHistory(tmp_path / "history")
    _publish(history, "a", _frame("x").with_columns(pl.lit("FIRST").alias("office")))
    ahead = time.time_ns() + 120 * 10**9  # published by a clock two minutes ahead
    for path in history.files():
        os.utime(path, ns=(ahead, ahead))
    _publish(history, "b", _frame("x").with_columns(pl.lit("LATER").alias("office")))
    assert history.scan().collect().get_column("office").to_list() == ["LATER"]


def test_a_load_whose_staged_chunks_were_removed_publishes_nothing(tmp_path: Path) -> None:
    """Another host may take a live load's staging for a dead one's and remove it: the
    load must fail, not publish the chunks staged after."""
    history = DeclarationHistory(tmp_path / "history")
    history.append(_frame("old"), "src")
    for removed_before in ("stage", "publish"):
        loading = history.loading("src")
        loading.stage(_frame("a"), 0)
        shutil.rmtree(loading.folder)
        with pytest.raises(RuntimeError, match="are gone"):
            if removed_before == "stage":
                loading.stage(_frame("b"), 1)  # at once, not after the rest of the file
            else:
                loading.publish()
        loading.abandon()
        assert _ids(history) == ["old"]


def test_the_stamp_changes_with_what_the_history_holds_and_only_then(tmp_path: Path) -> None:
    """The API keeps its history between requests while this stamp stays the same."""
    history = DeclarationHistory(tmp_path / "history")
    seen = [history.stamp()]
    history.append(_frame("a"), "whole")
    seen.append(history.stamp())
    with history.loading("src") as loading:
        loading.stage(_frame("b"), 0)
        assert history.stamp() == seen[-1]  # staged is not published
        loading.publish()
    seen.append(history.stamp())
    history.append(_frame("a", "c"), "whole")  # a file replaced
    seen.append(history.stamp())
    _publish(history, "src", _frame("b"))
    seen.append(history.stamp())
    assert len(set(seen)) == len(seen)
    assert history.stamp() == seen[-1]


def test_a_staged_load_is_removed_only_once_no_load_holds_it(tmp_path: Path) -> None:
    """A load on another host (or in another PID namespace) carries a process id that is
    not alive here: it is told from an abandoned one by the lock it holds on its staging."""
    history = DeclarationHistory(tmp_path / "history")
    staging = tmp_path / "history" / "_staging"
    gone_pid = 2**22 + 1  # past Linux's largest process id: alive nowhere here
    elsewhere = staging / f"src.{gone_pid}-elsewhere"
    elsewhere.mkdir(parents=True)
    (elsewhere / "src-00000.parquet").write_bytes(b"a chunk")
    legacy = staging / f"src.{gone_pid}-before-locks"  # staged before loads held a lock
    legacy.mkdir()
    with (elsewhere / _HELD).open("a") as held:  # the other host's live load
        fcntl.flock(held, fcntl.LOCK_EX)
        history.loading("src").abandon()
        assert elsewhere.is_dir() and not legacy.exists()
    history.loading("src").abandon()  # its holder is gone
    assert not elsewhere.exists()
    assert not [p for p in staging.iterdir() if p.is_dir()]  # nor anything of the two loads


def test_a_staging_left_under_its_hidden_name_is_removed_an_hour_on(tmp_path: Path) -> None:
    """A load that crashed between making its staging and holding it leaves the folder
    under its hidden name. The next load of the batch removes it once it is an hour old
    (by the file system's clock); a younger one may be another load being made."""
    history = DeclarationHistory(tmp_path / "history")
    staging = tmp_path / "history" / "_staging"
    crashed = staging / ".src.4194305-crashed"
    making = staging / ".src.4194305-being-made"
    other = staging / ".other.4194305-crashed"
    for folder in (crashed, making, other):
        folder.mkdir(parents=True)
        (folder / _HELD).touch()
    two_hours_ago = (staging / ".src.4194305-crashed").stat().st_mtime_ns - 7200 * 10**9
    for folder in (crashed, other):
        os.utime(folder, ns=(two_hours_ago, two_hours_ago))
    history.loading("src").abandon()
    assert not crashed.exists()
    assert making.is_dir()
    assert other.is_dir()  # another batch's: its own next load removes it
