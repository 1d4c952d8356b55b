"""Watch-lists: fuzzy matching on standardised names, expiry, audit, use in profiles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from cites_risk.profiling.profiles.evaluate import evaluate, hit_column, watch_column
from cites_risk.profiling.profiles.model import EntityKind, parse_profile
from cites_risk.profiling.profiles.watchlist import (
    WatchlistEntry,
    WatchlistIndex,
    WatchlistRepository,
    entity_key,
)
from cites_risk.profiling.store import Actor, Store

ANALYST = Actor("ana", "US-FWS", "analyst")
OTHER = Actor("olu", "NG-CUSTOMS", "analyst")
ORG = ANALYST.organisation
NOW = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def _index(*names: str, kind: EntityKind = EntityKind.IMPORTER) -> WatchlistIndex:
    return WatchlistIndex(
        WatchlistEntry(f"e{i}", kind, n, entity_key(n), "reason", None, "ana", NOW, ORG)
        for i, n in enumerate(names)
    )


def test_entity_key_drops_case_punctuation_accents_and_legal_forms() -> None:
    assert entity_key("ACME Trading Co., Ltd.") == "acme trading"
    assert entity_key("Acmé  Trading Company Limited") == "acme trading"
    assert entity_key("Ltd") == "ltd"  # nothing but a legal form: kept


@pytest.mark.parametrize(
    ("declared", "matches"),
    [
        ("Acme Trading Company Limited", True),  # legal forms differ
        ("TRADING ACME LTD", True),  # word order
        ("Acme Tradng Co", True),  # typo, above 90
        ("Acme Foods", False),
        ("Acme", False),
        ("Zenith Pet Supplies", False),
        ("Acme Trading 2 Ltd", False),  # a number the entry lacks: another company
    ],
)
def test_fuzzy_match_on_standardised_names(declared: str, matches: bool) -> None:
    found = _index("ACME Trading Co., Ltd.").match(EntityKind.IMPORTER, [declared])
    assert (declared in found) is matches
    if matches:
        assert found[declared].entry_id == "e0"
        assert found[declared].score >= 90


def test_numbered_names_match_only_the_same_number() -> None:
    found = _index("Importer 1").match(EntityKind.IMPORTER, ["IMPORTER 1", "Importer 10"])
    assert set(found) == {"IMPORTER 1"}


def test_a_batch_is_matched_on_its_distinct_names() -> None:
    index = _index("Acme Trading", "Beta Exotics")
    names = ["Acme Trading"] * 1000 + ["beta exotics"] * 1000 + [None] * 10 + ["Other"]
    found = index.match(EntityKind.IMPORTER, names)
    assert set(found) == {"Acme Trading", "beta exotics"}
    # Kinds are separate lists.
    assert index.match(EntityKind.EXPORTER, names) == {}


def test_add_list_remove_with_expiry_and_audit(store: Store) -> None:
    repo = WatchlistRepository(store)
    live = repo.add("importer", "Acme Trading Co", "seizure 2023-17", ANALYST)
    expired = repo.add(
        EntityKind.EXPORTER, "Old Exports SARL", "lapsed", ANALYST, NOW - timedelta(days=1)
    )
    assert [e.entry_id for e in repo.entries(ORG, at=NOW)] == [live.entry_id]
    assert {e.entry_id for e in repo.entries(ORG, include_expired=True)} == {
        live.entry_id,
        expired.entry_id,
    }
    index = repo.index(ORG, at=NOW)
    assert index.match(EntityKind.EXPORTER, ["Old Exports"]) == {}
    assert "ACME TRADING" in index.match(EntityKind.IMPORTER, ["ACME TRADING"])

    assert repo.remove(live.entry_id, ANALYST)
    assert not repo.remove(live.entry_id, ANALYST)
    assert repo.get(live.entry_id, ORG) is None
    events = store.audit.query(limit=10)
    assert [e["action"] for e in reversed(events)] == [
        "watchlist.add",
        "watchlist.add",
        "watchlist.remove",
    ]
    assert events[0]["detail"]["name"] == "Acme Trading Co"  # the log keeps what was removed
    with pytest.raises(ValueError, match="reason"):
        repo.add("importer", "X", " ", ANALYST)


def test_watchlist_condition_in_a_profile(store: Store) -> None:
    repo = WatchlistRepository(store)
    repo.add("declarant", "Fast Brokers GmbH", "linked to case 12", ANALYST)
    profile = parse_profile(
        {
            "id": "wl",
            "title": "watched",
            "owner": "o",
            "rationale": "r",
            "source": "s",
            "lane": "red",
            "criteria": {"any": [{"watchlist": "declarant"}, {"watchlist": "importer"}]},
        }
    )
    frame = pl.DataFrame(
        {
            "declaration_id": ["a", "b", "c"],
            "declared_at": [NOW, NOW, NOW],
            "declarant": ["FAST BROKERS", "Slow Brokers", None],
            "importer": ["x", "y", "z"],
        }
    )
    hits = evaluate(frame, [profile], watchlist=repo.index(ORG))
    assert hits.get_column(hit_column("wl")).to_list() == [True, False, False]
    sentence = hits.get_column(watch_column(EntityKind.DECLARANT))[0]
    assert "'FAST BROKERS'" in sentence and "'Fast Brokers GmbH'" in sentence
    # Without the watch-list, a watch-list condition matches nothing.
    assert not evaluate(frame, [profile]).get_column(hit_column("wl")).any()


def test_each_organisation_keeps_its_own_list(store: Store) -> None:
    repo = WatchlistRepository(store)
    ours = repo.add("importer", "Acme Trading Co", "seizure 2023-17", ANALYST)
    theirs = repo.add("importer", "Beta Exotics", "case NG-4", OTHER)
    assert (ours.organisation, theirs.organisation) == ("US-FWS", "NG-CUSTOMS")
    assert [e.entry_id for e in repo.entries(ORG)] == [ours.entry_id]
    assert [e.entry_id for e in repo.entries(OTHER.organisation)] == [theirs.entry_id]
    # Another organisation's entry is neither read, matched nor removed.
    assert repo.get(theirs.entry_id, ORG) is None
    assert repo.index(ORG).match(EntityKind.IMPORTER, ["Beta Exotics"]) == {}
    assert "Beta Exotics" in repo.index(OTHER.organisation).match(
        EntityKind.IMPORTER, ["Beta Exotics"]
    )
    assert not repo.remove(theirs.entry_id, ANALYST)
    assert repo.get(theirs.entry_id, OTHER.organisation) is not None
