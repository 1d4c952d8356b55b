"""Profiles: validation errors, evaluation (dates, enabled, lists), starter library, versions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cites_risk.features.contract import DECLARATION, conform
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features
from cites_risk.features.reference import load_reference
from cites_risk.profiling.profiles.evaluate import evaluate, hit_column
from cites_risk.profiling.profiles.model import (
    STARTER_PATH,
    Profile,
    ProfileError,
    load_profiles_yaml,
    parse_profile,
    starter_profiles,
)
from cites_risk.profiling.profiles.repository import ProfileConflictError, ProfileRepository
from cites_risk.profiling.store import Actor, Store

ANALYST = Actor("ana", "US-FWS", "analyst")


def _profile(**overrides: Any) -> Profile:
    body: dict[str, Any] = {
        "id": "p1",
        "title": "test profile",
        "owner": "tests",
        "rationale": "because",
        "source": "tests",
        "weight": 0.3,
        "criteria": {"all": [{"field": "hs_code", "hs_prefix": "0106"}]},
    }
    body.update(overrides)
    return parse_profile(body)


def _declarations(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return conform(pl.DataFrame(rows).lazy(), DECLARATION).collect()


def _scoring_frame(decl: pl.DataFrame) -> pl.DataFrame:
    """Contract columns + features, as scoring hands them to profiles."""
    features = build_features(decl.lazy(), History.empty(), load_reference()).collect()
    own = [c for c in decl.columns if c == "declaration_id" or c not in features.columns]
    return decl.select(own).join(features, on="declaration_id", maintain_order="left")


def _at(day: int, month: int = 1, year: int = 2024) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        (
            {"all": [{"field": "hs_cod", "equals": "1"}]},
            "unknown field 'hs_cod'; did you mean 'hs_code'",
        ),
        ({"all": [{"field": "hs_code", "contains": "01"}]}, "unknown operator 'contains'"),
        ({"all": [{"regex": "ivory(?=x)"}]}, "bad regex"),
        ({"all": [{"regex": "[a-"}]}, "unclosed character class"),
        ({"all": [{"field": "log_value", "regex": "x"}]}, "regex needs a text field"),
        ({"all": [{"field": "hs_code", "range": {"min": 1}}]}, "range needs a numeric field"),
        ({"all": [{"field": "hs_code", "equals": "1", "in": ["1"]}]}, "exactly one operator"),
        ({"all": [{"appendix": ["IV"]}]}, "appendix must be I, II, III"),
        ({"all": [], "any": []}, "at least 1 item"),
        (
            {"any": [{"all": [{"field": "nope", "equals": 1}]}]},
            "criteria.any.0.all.0: unknown field",
        ),
    ],
)
def test_bad_criteria_give_a_clear_error(criteria: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError) as err:
        _profile(criteria=criteria)
    assert message in str(err.value)
    assert "profile 'p1'" in str(err.value)


def test_a_profile_needs_an_effect_and_ordered_dates() -> None:
    with pytest.raises(ProfileError, match="weight, a lane or both"):
        _profile(weight=None)
    with pytest.raises(ProfileError, match="after valid_to"):
        _profile(valid_from="2024-02-01", valid_to="2024-01-01")
    with pytest.raises(ProfileError, match="lane"):
        _profile(lane="green")


def test_a_yaml_file_with_one_bad_profile_is_rejected_whole() -> None:
    text = """
profiles:
  - {id: ok, title: t, owner: o, rationale: r, source: s, weight: 0.1,
     criteria: {all: [{field: hs_code, hs_prefix: "01"}]}}
  - {id: bad, title: t, owner: o, rationale: r, source: s, weight: 0.1,
     criteria: {all: [{field: importr, equals: x}]}}
  - {id: ok, title: t, owner: o, rationale: r, source: s, weight: 0.1,
     criteria: {all: [{field: hs_code, hs_prefix: "02"}]}}
"""
    with pytest.raises(ProfileError) as err:
        load_profiles_yaml(text)
    assert "profiles[1] ('bad')" in str(err.value)
    assert "'importr'" in str(err.value)
    assert "duplicate profile id 'ok'" in str(err.value)


# --- evaluation -----------------------------------------------------------------------


def _frame_on_days(days: list[datetime], **cols: list[Any]) -> pl.DataFrame:
    n = len(days)
    rows = {
        "declaration_id": [f"d{i}" for i in range(n)],
        "declared_at": days,
        "office": ["X"] * n,
        "hs_code": ["010690"] * n,
        **cols,
    }
    return _declarations(
        [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
    )


def test_validity_dates_compare_with_each_declaration() -> None:
    frame = _frame_on_days([_at(9), _at(10), _at(20), _at(21)])
    profile = _profile(valid_from=date(2024, 1, 10), valid_to=date(2024, 1, 20))
    hits = evaluate(frame, [profile]).get_column(hit_column("p1")).to_list()
    assert hits == [False, True, True, False]  # both ends inclusive, whole days in UTC
    ignoring = evaluate(frame, [profile], check_validity=False)
    assert ignoring.get_column(hit_column("p1")).all()


def test_disabled_profiles_never_hit() -> None:
    frame = _frame_on_days([_at(1), _at(2)])
    on, off = _profile(id="on"), _profile(id="off", enabled=False)
    hits = evaluate(frame, [on, off])
    assert hits.get_column(hit_column("on")).all()
    assert not hits.get_column(hit_column("off")).any()
    # Backtests of a not-yet-enabled profile evaluate its criteria anyway.
    assert evaluate(frame, [off], check_enabled=False).get_column(hit_column("off")).all()


def test_operators_on_lists_nulls_and_negation() -> None:
    frame = _frame_on_days(
        [_at(1), _at(2), _at(3)],
        countries_transit=[["QA", "MY"], [], None],
        country_export=["NG", None, "VN"],
        goods_description=["Raw IVORY tusks", "cashews", None],
    )
    profile = _profile(
        criteria={
            "any": [
                {"field": "countries_transit", "in": ["MY"]},
                {"all": [{"regex": r"\bivory\b"}, {"field": "country_export", "in": ["NG"]}]},
            ]
        }
    )
    negated = _profile(
        id="p2", criteria={"all": [{"field": "country_export", "in": ["NG"], "negate": True}]}
    )
    missing = _profile(id="p3", criteria={"all": [{"field": "country_export", "is_null": True}]})
    hits = evaluate(frame, [profile, negated, missing])
    assert hits.get_column(hit_column("p1")).to_list() == [True, False, False]
    # A null value fails the test, so it satisfies the negation.
    assert hits.get_column(hit_column("p2")).to_list() == [False, True, True]
    assert hits.get_column(hit_column("p3")).to_list() == [False, True, False]


def test_a_profile_on_a_column_the_frame_lacks_raises() -> None:
    frame = _frame_on_days([_at(1)]).drop("goods_description")
    with pytest.raises(ProfileError, match="no column 'goods_description'"):
        evaluate(frame, [_profile(criteria={"all": [{"regex": "x"}]})])


def test_starter_library_parses_and_evaluates_on_built_features() -> None:
    profiles = starter_profiles()
    assert 10 <= len(profiles) <= 20
    assert all(p.source and p.rationale for p in profiles)
    base = {"office": "X", "cites_purpose": "T", "net_mass_kg": 10.0, "declared_value": 1000.0}
    decl = _declarations(
        [
            {
                **base,
                "declaration_id": "newt",
                "declared_at": _at(5, 3, 2017),
                "hs_code": "010690",
                "declared_taxon": "Cynops orientalis",
                "goods_description": "live newts",
                "country_destination": "US",
                "country_origin": "CN",
                "cites_source": "C",
                "importer": "Pets Inc",
            },
            {
                **base,
                "declaration_id": "newt-early",
                "declared_at": _at(5, 1, 2015),
                "hs_code": "010690",
                "declared_taxon": "Cynops orientalis",
                "country_destination": "US",
                "country_origin": "CN",
            },
            {
                **base,
                "declaration_id": "ivory",
                "declared_at": _at(5),
                "hs_code": "050790",
                "goods_description": "raw ivory tusks",
                "declared_taxon": "Loxodonta africana",
                "cites_source": "W",
                "country_origin": "NG",
                "country_export": "NG",
                "country_destination": "VN",
                "countries_transit": ["QA"],
            },
            {
                **base,
                "declaration_id": "cashew",
                "declared_at": _at(5),
                "hs_code": "080131",
                "goods_description": "cashew nuts",
                "country_origin": "NG",
                "country_export": "NG",
                "country_destination": "VN",
                "countries_transit": ["MY"],
            },
        ]
    )
    frame = _scoring_frame(decl)
    hits = evaluate(frame, profiles, keep=["declaration_id"])
    by_row = {
        row["declaration_id"]: {k.removeprefix("hit__") for k, v in row.items() if v is True}
        for row in hits.to_dicts()
    }
    assert "lacey-injurious-salamanders-2016" in by_row["newt"]
    assert "lacey-injurious-salamanders-2016" not in by_row["newt-early"]  # before the rule
    assert {"ivory-pangolin-rhino-keywords", "app1-commercial"} <= by_row["ivory"]
    assert {"cover-commodity-africa-asia", "cover-commodity-via-hub"} <= by_row["cashew"]
    assert "ivory-pangolin-rhino-keywords" not in by_row["cashew"]


# --- store: versions and audit --------------------------------------------------------


def test_every_change_is_versioned_and_audited(store: Store) -> None:
    repo = ProfileRepository(store)
    created = repo.save(_profile(), ANALYST)
    assert (created.action, created.stored.version) == ("profile.create", 1)
    assert repo.save(_profile(), ANALYST).action is None  # nothing changed, nothing written

    updated = repo.save(_profile(weight=0.5, title="sharper"), ANALYST, expected_version=1)
    assert (updated.action, updated.stored.version) == ("profile.update", 2)
    with pytest.raises(ProfileConflictError):
        repo.save(_profile(weight=0.6), ANALYST, expected_version=1)

    disabled = repo.set_enabled("p1", False, Actor("bob", "US-FWS", "analyst"))
    assert (disabled.action, disabled.stored.version) == ("profile.disable", 3)
    assert repo.enabled() == []

    history = repo.history("p1")
    assert [v.version for v in history] == [1, 2, 3]
    assert history[1].change["fields"] == ["title", "weight"]
    assert history[1].change["from"]["weight"] == 0.3
    assert history[1].change["to"]["weight"] == 0.5
    assert history[2].changed_by == "bob"
    actions = [e["action"] for e in reversed(store.audit.query(action=None, limit=10))]
    assert actions == ["profile.create", "profile.update", "profile.disable"]
    assert store.audit.query(action="profile.update")[0]["detail"]["fields"] == ["title", "weight"]


def test_starter_yaml_imports_into_the_store(store: Store) -> None:
    repo = ProfileRepository(store)
    results = repo.import_yaml(STARTER_PATH, ANALYST)
    assert {r.action for r in results} == {"profile.create"}
    assert {p.id for p in repo.enabled()} == {p.id for p in starter_profiles()}
    # Stored bodies round-trip to equal profiles.
    assert sorted(repo.enabled(), key=lambda p: p.id) == sorted(
        starter_profiles(), key=lambda p: p.id
    )
    assert {r.action for r in repo.import_yaml(STARTER_PATH, ANALYST)} == {None}
