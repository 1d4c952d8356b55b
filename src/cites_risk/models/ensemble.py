"""Several boosters as one: the mean of their margins, in a single LightGBM booster.

A label with a few dozen positives (critical fraud: 1 % of KCS declarations) gives models
that differ a lot from seed to seed; the mean of several seeds' margins ranks better than
a typical one of them (``README.md``, *Seeds averaged*). Trees add up, so the mean of ``k``
boosters is one booster holding all their trees with every leaf value divided by ``k``.
Everything downstream (calibration, compiled trees, TreeSHAP, saving, the registry) then
sees an ordinary booster: contributions are linear in the leaf values, so they are the
mean of the members' contributions as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb

_SCALED = ("leaf_value=", "internal_value=")


def average(boosters: Sequence[lgb.Booster]) -> lgb.Booster:
    """One booster whose raw margin is the mean of ``boosters``' raw margins."""
    if not boosters:
        raise ValueError("nothing to average")
    if len(boosters) == 1:
        return boosters[0]
    headers, trees, trailer = [], [], ""
    for booster in boosters:
        header, blocks, trailer = _parts(booster.model_to_string())
        headers.append(header)
        trees.extend(blocks)
    shapes = {_shape(h) for h in headers}
    if len(shapes) > 1:
        raise ValueError("the boosters do not share features, objective and classes")
    scale = 1.0 / len(boosters)
    blocks = [_scaled(block, i, scale) for i, block in enumerate(trees)]
    sizes = " ".join(str(len(block.encode())) for block in blocks)
    header = "\n".join(
        f"tree_sizes={sizes}" if line.startswith("tree_sizes=") else line
        for line in headers[0].split("\n")
    )
    return lgb.Booster(model_str=header + "".join(blocks) + trailer)


def _parts(model: str) -> tuple[str, list[str], str]:
    """Header, tree blocks (each ``Tree=...`` up to the next) and the rest of a model."""
    first = model.index("\nTree=") + 1
    end = model.index("end of trees")
    body = model[first:end]
    blocks = ["Tree=" + b for b in body.split("Tree=")[1:]]
    return model[:first], blocks, model[end:]


def _shape(header: str) -> tuple[str, ...]:
    """What must agree for trees to add up: the header but for the tree sizes and the
    feature ranges, which each member took from its own sample of rows (LightGBM bins
    200,000 of them) and which prediction does not read."""
    skipped = ("tree_sizes=", "feature_infos=")
    return tuple(line for line in header.split("\n") if not line.startswith(skipped))


def _scaled(block: str, index: int, scale: float) -> str:
    lines = block.split("\n")
    out = [f"Tree={index}"]
    for line in lines[1:]:
        if line == "is_linear=1":
            raise ValueError("linear trees cannot be averaged leaf by leaf")
        field = next((f for f in _SCALED if line.startswith(f)), None)
        if field is not None:
            values = (repr(float(v) * scale) for v in line[len(field) :].split(" ") if v)
            line = field + " ".join(values)
        out.append(line)
    return "\n".join(out)
