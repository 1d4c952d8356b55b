"""Category codes: the vocabulary a model keeps must not depend on hash or row order."""

from __future__ import annotations

import pickle
import random

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from cites_risk.models.preprocess import CategoryCodes


def test_equally_frequent_categories_are_coded_in_order_of_their_values() -> None:
    # Twenty categories seen five times each, then one seen more often than all of them.
    values = [f"c{i:02d}" for i in range(20)] * 5 + ["zz"] * 6
    vocab = CategoryCodes(["hs"]).fit(pl.DataFrame({"hs": values})).vocab_["hs"]
    assert list(vocab) == ["zz", *sorted(set(values) - {"zz"})]
    assert list(vocab.values()) == list(range(1, 22))


def test_a_tie_at_the_level_limit_keeps_the_smallest_values() -> None:
    values = ["b", "a", "d", "c"] * 5
    vocab = CategoryCodes(["hs"], max_levels=2).fit(pl.DataFrame({"hs": values})).vocab_["hs"]
    assert vocab == {"a": 1, "b": 2}


@settings(max_examples=60, deadline=None)
@given(
    counts=st.dictionaries(
        st.text(alphabet="abcdefgh", min_size=1, max_size=3),
        st.integers(min_value=1, max_value=9),
        min_size=1,
        max_size=30,
    ),
    order=st.randoms(use_true_random=False),
    max_levels=st.integers(min_value=1, max_value=40),
)
def test_the_vocabulary_is_the_most_frequent_values_whatever_the_row_order(
    counts: dict[str, int], order: random.Random, max_levels: int
) -> None:
    rows = [v for v, n in counts.items() for _ in range(n)]
    order.shuffle(rows)
    vocab = CategoryCodes(["k"], max_levels=max_levels).fit(pl.DataFrame({"k": rows})).vocab_["k"]
    expected = sorted((v for v, n in counts.items() if n >= 5), key=lambda v: (-counts[v], v))
    assert vocab == {v: i + 1 for i, v in enumerate(expected[:max_levels])}


def test_codes_follow_the_latest_fit_and_survive_a_save() -> None:
    first = pl.DataFrame({"k": ["a"] * 5 + ["b"] * 6})
    codes = CategoryCodes(["k"]).fit(first)
    probe = pl.DataFrame({"k": ["a", "b", "c", None]})
    assert codes.transform(probe).get_column("k").to_list() == [2, 1, 0, 0]
    # Refitted on other rows, the same object codes by its new vocabulary.
    codes.fit(pl.DataFrame({"k": ["c"] * 5 + ["a"] * 7}))
    assert codes.transform(probe).get_column("k").to_list() == [1, 0, 2, 0]
    loaded = pickle.loads(pickle.dumps(codes))
    assert "_codes" not in loaded.__dict__
    assert loaded.transform(probe).equals(codes.transform(probe))
