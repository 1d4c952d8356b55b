"""Exact TreeSHAP contributions of a LightGBM booster, compiled with numba.

``Booster.predict(pred_contrib=True)`` runs path-dependent TreeSHAP, which costs
O(leaves · depth²) per tree with a path array extended and unwound at every split. It was
the largest single cost of batch scoring. :class:`TreeShap` gives the same numbers (within
1e-9; tests) from a closed form that a compiled loop evaluates with few operations.

For a leaf of value ``v`` whose path splits on the distinct features ``U`` (``d = |U|``),
let ``r_j`` be the share of training rows that followed the path's splits on feature ``j``
(the product of child/parent counts over those splits) and ``z_j`` be 1 when the row meets
every split on ``j`` along the path, else 0. The leaf adds to ``φ_i`` for each ``i`` in ``U``

    v (z_i − r_i) Σ_{S ⊆ U∖{i}} |S|! (d − |S| − 1)! / d! · Π_{j∈S} z_j · Π_{j∉S, j≠i} r_j.

The Shapley weight is a Beta integral, ``|S|! (d−|S|−1)! / d! = ∫₀¹ t^|S| (1−t)^(d−|S|−1) dt``,
so the sum equals ``∫₀¹ Π_{j≠i} (r_j + t (z_j − r_j)) dt``: the integral of a polynomial of
degree ``d − 1``, which Gauss–Legendre quadrature with ``⌈d/2⌉`` points gives exactly.
Everything but ``z`` is known when the model is loaded, so each slot (a leaf's feature)
stores its factor ``r + t (z − r)``, the factor's inverse and ``v (z − r)`` for both values
of ``z``: per leaf and row that leaves about ``2 d ⌈d/2⌉`` multiply-adds (points padded to groups
of 4, held in registers), with no path
bookkeeping. A row's decisions are taken once per split, as bits of one word.

A leaf's contributions depend on the row only through its ``d`` bits ``z``. For leaves of
at most ``_TABLE_SLOTS`` features, every pattern of those bits is evaluated once, when the
model loads, and a row looks its pattern up: ``d`` additions instead of the quadrature.

On the 300-tree benchmark model (31 leaves, 174 features) and the 1,500 top rows of a
150 k-row partition, this runs at ~5,700 rows/s with tables up to 11 features (~3,700 with
tables up to 8, ~3,200 up to 6) against LightGBM's ~1,200 on the same 2 cores.

The bias column is each tree's expected value (leaf values weighted by training counts),
as LightGBM computes it. Splits follow LightGBM's rules for missing values (``None``,
``Zero``, ``NaN`` with the default direction) and categorical sets. Boosters this module
does not know (linear trees, several classes, averaged output, trees of more than 64
splits, splits without training rows) raise :class:`TreeShapUnavailableError`, and
:func:`for_booster` falls back to LightGBM (which itself cannot explain linear trees).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np

from cites_risk.features.jit import compiled
from cites_risk.models.risk_model import DEFAULT_PARAMS, prediction_threads

log = logging.getLogger(__name__)
_warned: set[str] = set()
_warn_lock = threading.Lock()
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
#: LightGBM's ``kZeroThreshold``, the float 1e-35f (not the double 1e-35): ``Zero`` splits
#: send values this close to 0 the default way.
_ZERO = float(np.float32(1e-35))
#: Rows per task when several threads share a matrix: small enough to balance the threads.
_ROWS_PER_TASK = 256
#: A row's decisions in one tree are the bits of one 64-bit word (num_leaves <= 65).
_MAX_SPLITS = 64
#: Leaves with at most this many distinct path features get a table of their contributions
#: for every pattern of met conditions (2^d × d values): a row then costs a lookup instead
#: of the quadrature. The leaves left out cost the most (~2 d ⌈d/2⌉ operations for d
#: features against d): at 8, 82 % of the benchmark model's 9,300 leaves were tabled in
#: 37 MB; at 11, 98 % in 142 MB, and its top rows were explained 1.55x faster.
_TABLE_SLOTS = 11
#: Bytes the tables of one booster may take (an averaged bag has several models' trees):
#: past it, fewer leaves are tabled.
_TABLE_BYTES = 160 * 2**20


def _count_splits(node: dict[str, Any]) -> int:
    if "split_index" not in node:
        return 0
    return 1 + _count_splits(node["left_child"]) + _count_splits(node["right_child"])


class TreeShapUnavailableError(RuntimeError):
    """The booster has trees this module does not handle."""


@dataclass(frozen=True)
class _Trees:
    """A booster's trees as flat arrays (see the module docstring for ``r`` and ``z``).

    Splits and leaves of tree ``t`` are ``split_start[t]:split_start[t+1]`` and
    ``leaf_start[t]:leaf_start[t+1]``; a leaf's distinct path features are its *slots*
    (``slot_start``), and a slot's splits are its *conditions* (``cond_start``), each a
    split of the same tree (index within the tree) and the side the path takes.
    """

    feature: np.ndarray
    threshold: np.ndarray
    categorical: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    category_start: np.ndarray
    categories: np.ndarray
    split_start: np.ndarray
    leaf_start: np.ndarray
    leaf_weights: np.ndarray
    slot_start: np.ndarray
    slot_feature: np.ndarray
    slot_factor: np.ndarray
    slot_inverse: np.ndarray
    slot_scale: np.ndarray
    slot_mask: np.ndarray
    slot_left: np.ndarray
    slot_lanes: np.ndarray
    leaf_table: np.ndarray
    tables: np.ndarray
    bias: float
    n_features: int

    def arrays(self) -> tuple[Any, ...]:
        return (
            self.feature,
            self.threshold,
            self.categorical,
            self.default_left,
            self.missing,
            self.category_start,
            self.categories,
            self.split_start,
            self.leaf_start,
            self.leaf_weights,
            self.slot_start,
            self.slot_feature,
            self.slot_factor,
            self.slot_inverse,
            self.slot_scale,
            self.slot_mask,
            self.slot_left,
            self.slot_lanes,
            self.leaf_table,
            self.tables,
            self.bias,
        )


@dataclass
class _Builder:
    """Collects the flat arrays of :class:`_Trees` tree by tree."""

    feature: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    categorical: list[bool] = field(default_factory=list)
    default_left: list[bool] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    category_start: list[int] = field(default_factory=list)
    categories: list[float] = field(default_factory=list)
    split_start: list[int] = field(default_factory=list)
    leaf_start: list[int] = field(default_factory=list)
    leaf_value: list[float] = field(default_factory=list)
    slot_start: list[int] = field(default_factory=list)
    slot_feature: list[int] = field(default_factory=list)
    slot_share: list[float] = field(default_factory=list)
    slot_mask: list[int] = field(default_factory=list)
    slot_left: list[int] = field(default_factory=list)
    bias: float = 0.0
    depth: int = 0

    def add_tree(self, root: dict[str, Any]) -> None:
        first_split = len(self.feature)
        self.split_start.append(first_split)
        self.leaf_start.append(len(self.leaf_value))
        if "split_index" not in root:  # a single leaf: only the bias moves
            self.bias += float(root["leaf_value"])
            return
        total = float(root["internal_count"])
        if total <= 0:
            raise TreeShapUnavailableError("a tree without training rows")
        if _count_splits(root) > _MAX_SPLITS:
            raise TreeShapUnavailableError(f"a tree has more than {_MAX_SPLITS} splits")
        leaves: dict[int, tuple[float, list[tuple[int, bool, int, float]]]] = {}
        stack: list[tuple[dict[str, Any], list[tuple[int, bool, int, float]]]] = [(root, [])]
        while stack:
            node, path = stack.pop()
            if "split_index" not in node:
                if "leaf_coeff" in node:
                    raise TreeShapUnavailableError("linear trees")
                leaves[int(node["leaf_index"])] = (float(node["leaf_value"]), path)
                self.bias += float(node["leaf_value"]) * float(node["leaf_count"]) / total
                continue
            split = int(node["split_index"])
            self._add_split(first_split + split, node)
            count = float(node["internal_count"])
            if count <= 0:  # LightGBM's shares would be 0/0 here
                raise TreeShapUnavailableError("a split without training rows")
            for side, left in (("left_child", True), ("right_child", False)):
                child = node[side]
                share = float(child.get("internal_count", child.get("leaf_count"))) / count
                stack.append((child, [*path, (split, left, int(node["split_feature"]), share)]))
        for index in range(len(leaves)):
            value, path = leaves[index]
            self._add_leaf(value, path)

    def _add_split(self, at: int, node: dict[str, Any]) -> None:
        while len(self.feature) <= at:  # splits arrive depth first, indices in any order
            self.feature.append(0)
            self.threshold.append(0.0)
            self.categorical.append(False)
            self.default_left.append(False)
            self.missing.append(0)
            self.category_start.append(0)
        self.feature[at] = int(node["split_feature"])
        self.default_left[at] = bool(node["default_left"])
        self.missing[at] = _MISSING[str(node["missing_type"])]
        if node["decision_type"] == "==":
            self.categorical[at] = True
            self.category_start[at] = len(self.categories)
            self.threshold[at] = float(len(str(node["threshold"]).split("||")))
            self.categories.extend(float(c) for c in str(node["threshold"]).split("||"))
        elif node["decision_type"] == "<=":
            self.threshold[at] = float(node["threshold"])
        else:
            raise TreeShapUnavailableError(f"unknown decision type {node['decision_type']!r}")

    def _add_leaf(self, value: float, path: list[tuple[int, bool, int, float]]) -> None:
        self.leaf_value.append(value)
        self.slot_start.append(len(self.slot_feature))
        by_feature: dict[int, list[tuple[int, bool, float]]] = {}
        for split, left, feature, share in path:
            by_feature.setdefault(feature, []).append((split, left, share))
        self.depth = max(self.depth, len(by_feature))
        for feature, conditions in by_feature.items():
            self.slot_feature.append(feature)
            self.slot_share.append(math.prod(share for _, _, share in conditions))
            self.slot_mask.append(sum(1 << split for split, _, _ in conditions))
            self.slot_left.append(sum(1 << split for split, left, _ in conditions if left))

    def build(self, n_features: int, table_slots: int) -> _Trees:
        self.split_start.append(len(self.feature))
        self.leaf_start.append(len(self.leaf_value))
        self.slot_start.append(len(self.slot_feature))

        def ints(values: list[int]) -> np.ndarray:
            return np.asarray(values, dtype=np.int64)

        def floats(values: list[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)

        # Everything that depends on the path only is computed here, once: each slot's
        # factor r + t (z - r) at its leaf's quadrature points for z = 0 and z = 1, its
        # inverse and v (z - r). The compiled loop is then products and sums alone.
        slot_start = ints(self.slot_start)
        width = np.diff(slot_start)
        nodes, weights = _quadrature(max(self.depth, 1))
        points = (width + 1) // 2
        slot_points = np.repeat(points, width)
        share = floats(self.slot_share)[:, None, None]
        met = np.array([0.0, 1.0])[None, :, None]
        t = nodes[slot_points][:, None, :]
        # Past a leaf's own points: factor 1 and weight 0, so every leaf runs the same loop.
        factor = np.where(t > 0.0, share + t * (met - share), 1.0)
        inverse = np.divide(1.0, factor, out=np.zeros_like(factor), where=factor > 0.0)
        value = np.repeat(floats(self.leaf_value), width)[:, None]
        leaf_start = ints(self.leaf_start)
        slot_factor = np.ascontiguousarray(factor)
        slot_inverse = np.ascontiguousarray(inverse)
        slot_scale = value * (met[:, :, 0] - share[:, :, 0])
        slot_lanes = (slot_points + 3) // 4 * 4
        leaf_weights = weights[points]
        leaf_width = np.diff(slot_start)
        # 2^d × d values a leaf: beyond 16 features no table could fit the budget anyway.
        table_slots = min(max(table_slots, 0), 16)
        sizes = _table_sizes(leaf_width, table_slots)
        while table_slots > 0 and sizes.sum() * 8 > _TABLE_BYTES:
            table_slots -= 1
            sizes = _table_sizes(leaf_width, table_slots)
        leaf_table = np.where(leaf_width <= table_slots, np.cumsum(sizes) - sizes, -1)
        tables = np.empty(int(sizes.sum()))
        _fill_tables(
            slot_start,
            leaf_weights,
            slot_factor,
            slot_inverse,
            slot_scale,
            slot_lanes,
            leaf_table,
            tables,
        )
        return _Trees(
            feature=ints(self.feature),
            threshold=floats(self.threshold),
            categorical=np.asarray(self.categorical, dtype=np.bool_),
            default_left=np.asarray(self.default_left, dtype=np.bool_),
            missing=ints(self.missing),
            category_start=ints(self.category_start),
            categories=floats(self.categories),
            split_start=ints(self.split_start),
            leaf_start=leaf_start,
            leaf_weights=leaf_weights,
            slot_start=slot_start,
            slot_feature=ints(self.slot_feature),
            slot_factor=slot_factor,
            slot_inverse=slot_inverse,
            slot_scale=slot_scale,
            slot_mask=np.asarray(self.slot_mask, dtype=np.uint64),
            slot_left=np.asarray(self.slot_left, dtype=np.uint64),
            # Points in whole SIMD lanes of 4; the padding has weight 0 and factor 1.
            slot_lanes=slot_lanes,
            leaf_table=leaf_table,
            tables=tables,
            bias=self.bias,
            n_features=n_features,
        )


def _table_sizes(leaf_width: np.ndarray, table_slots: int) -> np.ndarray:
    """Values in each leaf's table (2^d × d), 0 for leaves of more than ``table_slots``."""
    return np.where(
        leaf_width <= table_slots, (1 << np.minimum(leaf_width, table_slots)) * leaf_width, 0
    )


def _quadrature(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [0, 1]: row ``k`` holds the rule of ``k`` points."""
    points = (depth + 1) // 2
    lanes = (points + 3) // 4 * 4  # whole groups of 4 (see the kernel), padded with weight 0
    nodes = np.zeros((points + 1, lanes))
    weights = np.zeros((points + 1, lanes))
    for k in range(1, points + 1):
        x, w = np.polynomial.legendre.leggauss(k)
        nodes[k, :k] = (x + 1.0) / 2.0
        weights[k, :k] = w / 2.0
    return nodes, weights


def _flatten(booster: lgb.Booster, table_slots: int = _TABLE_SLOTS) -> _Trees:
    dump = booster.dump_model()
    if dump.get("num_class", 1) != 1 or dump.get("average_output", False):
        raise TreeShapUnavailableError("only single-output boosters without averaging")
    builder = _Builder()
    for tree in dump["tree_info"]:
        builder.add_tree(tree["tree_structure"])
    return builder.build(int(dump["max_feature_idx"]) + 1, table_slots)


@compiled
def _leaf(
    leaf: int,
    a: int,
    b: int,
    met: np.ndarray,
    acc: np.ndarray,
    leaf_weights: np.ndarray,
    slot_factor: np.ndarray,
    slot_inverse: np.ndarray,
    slot_scale: np.ndarray,
    slot_lanes: np.ndarray,
) -> None:
    """``acc[k]``: what leaf ``leaf`` adds to the feature of its slot ``a + k`` when the row
    meets the slots' conditions as ``met[k]`` (1 or 0) says."""
    for slot in range(a, b):
        acc[slot - a] = 0.0
    # The quadrature points in groups of 4 held in registers; a contribution is the sum
    # over the groups of its partial sums.
    for g in range(0, slot_lanes[a] if b > a else 0, 4):
        w0 = leaf_weights[leaf, g]
        w1 = leaf_weights[leaf, g + 1]
        w2 = leaf_weights[leaf, g + 2]
        w3 = leaf_weights[leaf, g + 3]
        for slot in range(a, b):
            z = met[slot - a]
            w0 *= slot_factor[slot, z, g]
            w1 *= slot_factor[slot, z, g + 1]
            w2 *= slot_factor[slot, z, g + 2]
            w3 *= slot_factor[slot, z, g + 3]
        for slot in range(a, b):
            z = met[slot - a]
            total = (
                w0 * slot_inverse[slot, z, g]
                + w1 * slot_inverse[slot, z, g + 1]
                + w2 * slot_inverse[slot, z, g + 2]
                + w3 * slot_inverse[slot, z, g + 3]
            )
            # A factor of 0 (a path no training row took, not taken by this row either)
            # zeroes the leaf's products, and its inverse is stored as 0.
            acc[slot - a] += slot_scale[slot, z] * total


@compiled
def _fill_tables(
    slot_start: np.ndarray,
    leaf_weights: np.ndarray,
    slot_factor: np.ndarray,
    slot_inverse: np.ndarray,
    slot_scale: np.ndarray,
    slot_lanes: np.ndarray,
    leaf_table: np.ndarray,
    tables: np.ndarray,
) -> None:
    """Every tabled leaf's contributions for each pattern of met conditions (bit ``k`` of
    the pattern: slot ``k``), ``d`` values per pattern from ``leaf_table[leaf]`` on."""
    met = np.empty(2 * leaf_weights.shape[1], dtype=np.int64)
    acc = np.empty(2 * leaf_weights.shape[1])
    for leaf in range(leaf_table.shape[0]):
        at = leaf_table[leaf]
        if at < 0:
            continue
        a = slot_start[leaf]
        d = slot_start[leaf + 1] - a
        for pattern in range(1 << d):
            for k in range(d):
                met[k] = (pattern >> k) & 1
            _leaf(
                leaf, a, a + d, met, acc, leaf_weights, slot_factor, slot_inverse, slot_scale,
                slot_lanes,
            )  # fmt: skip
            for k in range(d):
                tables[at + pattern * d + k] = acc[k]


def _contributions(
    x: np.ndarray,
    out: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    categorical: np.ndarray,
    default_left: np.ndarray,
    missing: np.ndarray,
    category_start: np.ndarray,
    categories: np.ndarray,
    split_start: np.ndarray,
    leaf_start: np.ndarray,
    leaf_weights: np.ndarray,
    slot_start: np.ndarray,
    slot_feature: np.ndarray,
    slot_factor: np.ndarray,
    slot_inverse: np.ndarray,
    slot_scale: np.ndarray,
    slot_mask: np.ndarray,
    slot_left: np.ndarray,
    slot_lanes: np.ndarray,
    leaf_table: np.ndarray,
    tables: np.ndarray,
    bias: float,
) -> None:
    """Adds every row's contributions to ``out`` (rows × features + 1, zeroed by the caller)."""
    n_trees = len(split_start) - 1
    met = np.empty(2 * leaf_weights.shape[1], dtype=np.int64)  # >= a leaf's slots
    acc = np.empty(2 * leaf_weights.shape[1])
    bias_column = out.shape[1] - 1
    # Tree by tree over the rows (not row by row over the trees): a tree's arrays then stay
    # in cache across the rows, where the whole model's (~20 MB) would be read per row.
    for t in range(n_trees):
        for row in range(x.shape[0]):
            first = split_start[t]
            lefts = np.uint64(0)  # bit s: the row goes left at the tree's split s
            for s in range(first, split_start[t + 1]):
                value = x[row, feature[s]]
                if categorical[s]:
                    left = False
                    # LightGBM truncates towards zero first: -0.5 is category 0, -1 none.
                    if not math.isnan(value) and int(value) >= 0:
                        whole = float(int(value))
                        start = category_start[s]
                        for c in range(start, start + int(threshold[s])):
                            if categories[c] == whole:
                                left = True
                                break
                else:
                    kind = missing[s]
                    if kind != 2 and math.isnan(value):
                        value = 0.0
                    if (kind == 1 and abs(value) <= _ZERO) or (kind == 2 and math.isnan(value)):
                        left = default_left[s]
                    else:
                        left = value <= threshold[s]
                if left:
                    lefts |= np.uint64(1) << np.uint64(s - first)
            for leaf in range(leaf_start[t], leaf_start[t + 1]):
                a = slot_start[leaf]
                b = slot_start[leaf + 1]
                pattern = 0
                for slot in range(a, b):
                    z = 1 if (lefts ^ slot_left[slot]) & slot_mask[slot] == 0 else 0
                    met[slot - a] = z
                    pattern |= z << (slot - a)
                at = leaf_table[leaf]
                if at >= 0:
                    # Looked up: the leaf's contributions for this pattern of met conditions.
                    at += pattern * (b - a)
                    for slot in range(a, b):
                        out[row, slot_feature[slot]] += tables[at + slot - a]
                else:
                    _leaf(
                        leaf, a, b, met, acc, leaf_weights, slot_factor, slot_inverse,
                        slot_scale, slot_lanes,
                    )  # fmt: skip
                    for slot in range(a, b):
                        out[row, slot_feature[slot]] += acc[slot - a]
    for row in range(x.shape[0]):
        out[row, bias_column] += bias


_kernel = compiled(_contributions)


class Contributions(Protocol):
    """SHAP values on the raw margin: rows × (features + 1), the bias last."""

    backend: str

    def contributions(self, matrix: np.ndarray) -> np.ndarray: ...

    def warm(self, width: int) -> None:
        """Load what the first call would load (compiled code), on a row of ``width``."""


@dataclass
class LightGBMContributions:
    """The booster's own ``pred_contrib``: the reference and the fallback."""

    booster: lgb.Booster
    backend: str = "lightgbm"

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        threads = prediction_threads(matrix.shape[0], DEFAULT_PARAMS["num_threads"])
        contributions = self.booster.predict(matrix, pred_contrib=True, num_threads=threads)
        return np.asarray(contributions, dtype=np.float64)

    def warm(self, width: int) -> None:
        """Nothing to load (and LightGBM refuses to explain some boosters, e.g. linear trees:
        that must surface when explaining, not when the model loads)."""


class TreeShap:
    """``pred_contrib`` of one booster, several times faster (module docstring)."""

    backend = "treeshap-numba"

    def __init__(
        self, booster: lgb.Booster, threads: int | None = None, table_slots: int = _TABLE_SLOTS
    ) -> None:
        self._trees = _flatten(booster, table_slots)
        self.threads = max(1, threads or _usable_cores())

    def warm(self, width: int) -> None:
        self.contributions(np.zeros((1, width)))

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(matrix, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._trees.n_features:
            raise ValueError(
                f"expected a matrix of {self._trees.n_features} columns, got shape {x.shape}"
            )
        out = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.float64)
        arrays = self._trees.arrays()
        tasks = range(0, x.shape[0], _ROWS_PER_TASK)
        if self.threads == 1 or len(tasks) <= 1:
            _kernel(x, out, *arrays)
            return out
        # The kernel releases the GIL: threads share the model arrays and write disjoint rows.
        with ThreadPoolExecutor(self.threads) as pool:
            list(
                pool.map(
                    lambda i: _kernel(
                        x[i : i + _ROWS_PER_TASK], out[i : i + _ROWS_PER_TASK], *arrays
                    ),
                    tasks,
                )
            )
        return out


def _usable_cores() -> int:
    """Cores this process may be scheduled on (its CPU affinity; a CPU quota is not seen)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def for_booster(booster: lgb.Booster, threads: int | None = None) -> Contributions:
    """:class:`TreeShap` where it applies, else LightGBM's own (logged once per reason).
    ``threads``: the caller's budget (default: every core the process may use)."""
    try:
        return TreeShap(booster, threads)
    except TreeShapUnavailableError as e:
        with _warn_lock:
            if str(e) not in _warned:
                _warned.add(str(e))
                log.warning("TreeSHAP falls back to LightGBM's pred_contrib: %s", e)
        return LightGBMContributions(booster)
