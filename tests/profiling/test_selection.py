"""Selection: capacity, forced lanes, random stream, runaway guard, confidentiality, reasons."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from cites_risk.profiling.engine import decide
from cites_risk.profiling.profiles.model import Profile, parse_profile
from cites_risk.profiling.roles import Confidentiality, Role
from cites_risk.profiling.selection import (
    HIDDEN_RATIONALE,
    SelectionConfig,
    capacity_of,
    select,
)

T0 = datetime(2024, 3, 1, 8, tzinfo=UTC)


def _profile(pid: str, flag: str, **extra: Any) -> Profile:
    body: dict[str, Any] = {
        "id": pid,
        "title": f"title {pid}",
        "owner": "tests",
        "rationale": f"rationale of {pid}",
        "source": "tests",
        "criteria": {"all": [{"field": flag, "equals": True}]},
    }
    body.update(extra)
    return parse_profile(body)


def _frame(
    scores: list[float],
    *,
    offices: list[str] | None = None,
    days: list[int] | None = None,
    **flags: list[bool],
) -> pl.DataFrame:
    n = len(scores)
    return pl.DataFrame(
        {
            "declaration_id": [f"d{i:05d}" for i in range(n)],
            "office": offices or ["X"] * n,
            "declared_at": [T0 + timedelta(days=d) for d in (days or [0] * n)],
            "score": scores,
            **{name: values for name, values in flags.items()},
        },
        schema_overrides={"declared_at": pl.Datetime("us", "UTC")},
    )


def _selected(frame: pl.DataFrame, result: pl.DataFrame) -> pl.DataFrame:
    return frame.select("declaration_id", "office", "declared_at").join(result, on="declaration_id")


rows = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),
        st.integers(0, 2),
        st.floats(0, 1),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=rows,
    share=st.floats(0.01, 0.5),
    count=st.one_of(st.none(), st.integers(0, 5)),
    random_share=st.floats(0, 0.3),
    red_share=st.floats(0, 1),
)
def test_capacity_is_never_exceeded_except_by_forced_red(
    data: list[tuple[str, int, float, bool, bool]],
    share: float,
    count: int | None,
    random_share: float,
    red_share: float,
) -> None:
    offices, days, scores, weighted, red = (list(x) for x in zip(*data, strict=True))
    red = [r and (i / len(red)) < red_share for i, r in enumerate(red)]
    frame = _frame(scores, offices=offices, days=days, x_w=weighted, x_red=red)
    config = SelectionConfig(
        capacity_share=None if count is not None else share,
        capacity_count=count,
        random_share=random_share,
        max_profile_share=None,
    )
    profiles = [_profile("w", "x_w", weight=0.4), _profile("red", "x_red", lane="red")]
    out = select(frame, profiles, config).frame
    assert out.height == frame.height
    assert (
        out.get_column("declaration_id").to_list() == frame.get_column("declaration_id").to_list()
    )
    joined = _selected(frame, out).with_columns(
        pl.col("declared_at").dt.date().alias("day"), pl.Series("forced", red)
    )
    # Every forced red hit is selected.
    assert joined.filter("forced").get_column("selected").all()
    per_group = joined.group_by("office", "day").agg(
        pl.len().alias("n"), pl.col("selected").sum(), pl.col("forced").sum()
    )
    for g in per_group.iter_rows(named=True):
        cap = capacity_of(g["n"], config, g["office"])
        assert g["selected"] <= max(cap, g["forced"]) <= cap + g["forced"]
    # Selected means red lane, and a selection method is always recorded.
    assert (out.get_column("selected") == (out.get_column("lane") == "red")).all()
    assert (out.get_column("selected") == out.get_column("selected_by").is_not_null()).all()
    assert out.get_column("final_risk").is_between(0, 1).all()


def test_forced_red_hits_are_selected_beyond_capacity() -> None:
    frame = _frame([0.9] * 10 + [0.0] * 10, x_red=[False] * 10 + [True] * 10)
    config = SelectionConfig(capacity_count=3, random_share=0.0, max_profile_share=None)
    out = select(frame, [_profile("red", "x_red", lane="red")], config).frame
    assert out.get_column("selected").sum() == 10  # the red ones: capacity 3 is used up
    assert set(out.filter("selected").get_column("selected_by")) == {"rule"}
    # High model scores did not get in: forced hits use capacity first.
    assert not out.head(10).get_column("selected").any()


def test_final_risk_combines_probability_and_weights() -> None:
    frame = _frame(
        [0.1, 0.1, 0.1, None], x_a=[False, True, True, True], x_b=[False, False, True, False]
    )  # type: ignore[list-item]
    profiles = [_profile("a", "x_a", weight=0.5), _profile("b", "x_b", weight=0.5)]
    out = select(frame, profiles, SelectionConfig(capacity_count=0, random_share=0)).frame
    assert out.get_column("final_risk").to_list() == pytest.approx([0.1, 0.55, 0.775, 0.5])


def test_the_highest_risk_is_selected_and_its_method_recorded() -> None:
    # Capacity 2: d0 on the model alone (0.8); d2 because a profile lifted 0.1 to 0.82.
    frame = _frame([0.8, 0.5, 0.1, 0.3], x_w=[False, False, True, False])
    config = SelectionConfig(capacity_count=2, random_share=0.0, yellow_share=0.25)
    out = select(frame, [_profile("w", "x_w", weight=0.8)], config).frame
    assert out.get_column("selected_by").to_list() == ["model", None, "rule", None]
    assert out.get_column("lane").to_list() == ["red", "yellow", "red", "green"]


def test_a_row_no_profile_raised_is_selected_by_the_model() -> None:
    # Real calibrated scores, bit-exact: 1 - (1 - p) lands a few ulps above p, which made
    # each row miss its own cut and read "profile hits raised the risk from 0.0 to 0.0".
    scores = [
        float.fromhex(h)
        for h in (
            "0x1.7645c3d59e1c9p-10",
            "0x1.1fd7a891fcf2cp-4",
            "0x1.cd8c25037d489p-9",
            "0x1.93258049e7527p-10",
        )
    ]
    # One row per office, so each row is its office-day's cut; the last row is also hit by
    # a yellow-lane profile, which adds no weight: the model alone still selects it.
    frame = _frame(scores, offices=["A", "B", "C", "D"], x_y=[False, False, False, True])
    config = SelectionConfig(capacity_share=0.05, random_share=0.0)
    for profiles in ([], [_profile("y", "x_y", lane="yellow")]):
        out = select(frame, profiles, config).frame
        assert out.get_column("selected_by").to_list() == ["model"] * 4
        assert out.get_column("reasons").list.first().str.contains("final risk").all()


def test_a_small_raise_by_a_profile_reads_with_the_digits_that_show_it() -> None:
    # 0.0012 raised to 0.0042 by a weak profile: two decimals would say "0.0 to 0.0".
    frame = _frame([0.0012, 0.003], x_w=[True, False])
    config = SelectionConfig(capacity_count=1, random_share=0.0, max_profile_share=None)
    out = select(frame, [_profile("w", "x_w", weight=0.003)], config).frame
    assert out.get_column("selected_by").to_list() == ["rule", None]
    assert out.get_column("reasons")[0][0] == (
        "Physical inspection (red lane): profile hits raised the risk from 0.0012 to 0.0042."
    )


def test_a_share_of_traffic_that_is_a_whole_number_of_rows_is_not_rounded_up() -> None:
    # 0.07 * 100 is 7.000000000000001 in binary: 7 % of 100 declarations is 7, not 8.
    frame = _frame([i / 100 for i in range(100)])
    config = SelectionConfig(capacity_share=0.07, random_share=0.0, yellow_share=0.07)
    out = select(frame, [], config).frame
    assert capacity_of(100, config) == 7
    assert out.get_column("selected").sum() == 7
    assert (out.get_column("lane") == "yellow").sum() == 7


def test_random_share_is_recorded_as_random_and_reproducible_by_seed() -> None:
    n = 1000
    frame = _frame([i / n for i in range(n)], offices=["A", "B"] * (n // 2))
    config = SelectionConfig(capacity_share=0.1, random_share=0.03, seed=7)
    first = select(frame, [], config).frame
    randoms = first.filter(pl.col("selected_by") == "random")
    assert randoms.height == 2 * math.floor(0.03 * 500)
    assert (
        not randoms.get_column("final_risk")
        .is_in(first.filter(pl.col("selected_by") == "model").get_column("final_risk").implode())
        .any()
    )
    assert (randoms.get_column("lane") == "red").all()
    assert all("random" in r[0] for r in randoms.get_column("reasons").to_list())
    # Same batch and seed, rows shuffled: the same declarations are drawn.
    shuffled = select(frame.sample(fraction=1.0, shuffle=True, seed=1), [], config).frame
    same = shuffled.filter(pl.col("selected_by") == "random").get_column("declaration_id")
    assert set(same) == set(randoms.get_column("declaration_id"))
    other = select(frame, [], config.model_copy(update={"seed": 8})).frame
    drawn = other.filter(pl.col("selected_by") == "random").get_column("declaration_id")
    assert set(drawn) != set(randoms.get_column("declaration_id"))


def test_runaway_profile_is_suspended_for_the_batch_and_reported() -> None:
    n = 400
    frame = _frame(
        [0.01] * n, x_all=[i % 2 == 0 for i in range(n)], x_few=[i < 4 for i in range(n)]
    )
    profiles = [
        _profile("runaway", "x_all", weight=0.9, lane="red"),
        _profile("few", "x_few", weight=0.5),
    ]
    config = SelectionConfig(capacity_count=10, random_share=0.0, max_profile_share=0.05)
    result = select(frame, profiles, config)
    assert [s.profile_id for s in result.report.suspended] == ["runaway"]
    assert result.report.suspended[0].share == pytest.approx(0.5)
    assert result.report.profile_hits == {"runaway": 200, "few": 4}
    out = result.frame
    assert "runaway" not in set(out.get_column("profile_hits").explode().drop_nulls())
    assert out.get_column("selected").sum() == 10  # its red lane was ignored too
    assert out.head(4).get_column("final_risk").to_list() == pytest.approx([1 - 0.99 * 0.5] * 4)
    # One declaration scored alone is 100 % of its batch: the guard does not apply.
    alone = select(frame.head(1), profiles, config)
    assert alone.report.suspended == []
    assert alone.frame.get_column("selected_by").to_list() == ["rule"]


@pytest.mark.parametrize(
    ("level", "role", "visible"),
    [
        (Confidentiality.PUBLIC, Role.INSPECTOR, True),
        (Confidentiality.RESTRICTED, Role.INSPECTOR, False),
        (Confidentiality.RESTRICTED, Role.TARGETING, True),
        (Confidentiality.SECRET, Role.TARGETING, False),
        (Confidentiality.SECRET, Role.ANALYST, True),
    ],
)
def test_rationale_respects_confidentiality_per_role(
    level: Confidentiality, role: Role, visible: bool
) -> None:
    frame = _frame([0.2], x_f=[True])
    profile = _profile("conf", "x_f", weight=0.2, confidentiality=level.value)
    reasons = select(frame, [profile], role=role).frame.get_column("reasons")[0].to_list()
    assert ("title conf: rationale of conf" in reasons) is visible
    assert (HIDDEN_RATIONALE in reasons) is not visible
    assert not any("rationale of conf" in r for r in reasons) or visible


def test_yellow_lane_profiles_and_extra_reasons() -> None:
    frame = _frame([0.0, 0.0], x_y=[True, False]).with_columns(
        pl.Series("model_reasons", [["value per kg is low"], None], dtype=pl.List(pl.String)),
        pl.Series("species_match", ["matches Manis", None]),
    )
    config = SelectionConfig(capacity_count=0, random_share=0.0)
    out = select(
        frame,
        [_profile("y", "x_y", lane="yellow")],
        config,
        extra_reasons=["model_reasons", "species_match"],
    ).frame
    assert out.get_column("lane").to_list() == ["yellow", "green"]
    first = out.get_column("reasons")[0].to_list()
    assert first[0].startswith("Documentary check (yellow lane)")
    assert first[-2:] == ["value per kg is low", "matches Manis"]
    assert out.get_column("reasons")[1].to_list() == ["Release (green lane)."]


def test_rows_with_too_many_hits_go_first() -> None:
    frame = _frame([0.9, 0.0], x_a=[False, True], x_b=[False, True])
    profiles = [_profile("a", "x_a", weight=0.01), _profile("b", "x_b", weight=0.01)]
    config = SelectionConfig(capacity_count=1, random_share=0.0, max_unselected_hits=1)
    out = select(frame, profiles, config).frame
    assert out.get_column("selected_by").to_list() == [None, "rule"]
    relaxed = select(frame, profiles, config.model_copy(update={"max_unselected_hits": 2})).frame
    assert relaxed.get_column("selected_by").to_list() == ["model", None]


@pytest.mark.parametrize("n", [7, 2_500], ids=["few-rows", "batch"])
def test_a_row_per_input_row_in_input_order_even_with_repeated_ids(n: int) -> None:
    # Ids out of input order and each given twice: selection ranks by id, yet answers a row
    # per input row, in input order, each with its own reasons.
    frame = _frame(
        [(i * 37 % 101) / 101 for i in range(n)], x_a=[i % 5 == 0 for i in range(n)]
    ).with_columns(
        pl.format("d{}", (n - pl.int_range(n)) // 2).alias("declaration_id"),
        pl.Series("reasons", [[f"row {i}"] for i in range(n)], dtype=pl.List(pl.String)),
        pl.lit(None, pl.String).alias("species_match"),
    )
    profiles = [_profile("a", "x_a", weight=0.5)]
    config = SelectionConfig(capacity_share=0.2, random_share=0.05)
    out = select(frame, profiles, config, extra_reasons=["reasons"]).frame
    ids = frame.get_column("declaration_id").to_list()
    assert out.get_column("declaration_id").to_list() == ids
    assert out.get_column("reasons").list.last().to_list() == [f"row {i}" for i in range(n)]
    decided = decide(frame, profiles, config).frame
    assert decided.get_column("declaration_id").to_list() == ids
    assert decided.get_column("selected").to_list() == out.get_column("selected").to_list()
    assert decided.get_column("reasons").list.last().to_list() == [f"row {i}" for i in range(n)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=rows, share=st.floats(0.05, 1.0), min_risk=st.floats(0, 1))
def test_declarations_decided_one_by_one_ignore_each_other(
    data: list[tuple[str, int, float, bool, bool]], share: float, min_risk: float
) -> None:
    """``pool="declaration"`` (online scoring): a row's decision is the one it gets alone,
    whatever else is selected in the same call; each row is a capacity of its own."""
    offices, days, scores, weighted, red = (list(x) for x in zip(*data, strict=True))
    frame = _frame(scores, offices=offices, days=days, x_w=weighted, x_red=red)
    config = SelectionConfig(
        pool="declaration",
        capacity_share=share,
        random_share=0.0,
        yellow_share=0.0,
        min_risk=min_risk,
        max_profile_share=None,
    )
    profiles = [_profile("w", "x_w", weight=0.4), _profile("red", "x_red", lane="red")]
    together = select(frame, profiles, config)
    first = min(3, frame.height)
    alone = pl.concat([select(frame[i : i + 1], profiles, config).frame for i in range(first)])
    assert_frame_equal(together.frame.head(first), alone)
    assert together.report.per_group.get_column("capacity").sum() == frame.height
