"""One declaration scored at a time against a large history: the carried path and the full one.

The service scores a request dated after its history against that history carried to its
latest declaration (``features/carry.py``), with features focused on the request's own keys.
A request dated inside the history, or one re-scoring a lodged id, needs the full history.
This times ``Engine.score`` (features, prediction, TreeSHAP reasons) for one declaration at
a time on both paths, against the synthetic scenario of ``--rows`` declarations (with its
offence records and inspection results) and the 300-tree model of ``bench_scoring``. The
baseline in the same run is the full-history path; both must give the same scores.

HTTP, validation, selection and storage are not in these figures (``bench_api`` has them, on
the small LEMIS sample).

    .venv/bin/python benchmarks/bench_online.py [--rows 1000000] [--requests 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_common import (
    DEFAULT_DATA,
    header,
    peak_rss_mib,
    percentiles,
    scenario,
    timed,
    trained_model,
)
from cites_risk.features.carry import carry, narrowed
from cites_risk.features.contract import D
from cites_risk.features.history import History
from cites_risk.features.reference import load_reference
from cites_risk.models.compiled import CompiledPredictor, cache_dir_for
from cites_risk.models.risk_model import RiskModel
from cites_risk.profiling.engine import SCORE, Engine


def requests(declarations: pl.DataFrame, n: int, after: datetime) -> list[pl.DataFrame]:
    """``n`` declarations of the scenario, as new ones lodged a day after ``after``."""
    picked = declarations.sample(n, seed=7, shuffle=True)
    when = after + timedelta(days=1)
    return [
        picked.slice(i, 1).with_columns(
            pl.lit(f"online-{i}").alias(D.ID),
            pl.lit(when).cast(pl.Datetime("us", "UTC")).alias(D.DECLARED_AT),
        )
        for i in range(n)
    ]


def lodged(history: History, request: pl.DataFrame, extras: dict[str, str]) -> History:
    """The history as the service gives it to one request: the carried totals cut to the
    request's keys (``narrowed``; nothing to cut in a full history), the request lodged."""
    history = narrowed(history, request, extras)
    declarations = pl.concat([history.declarations, request.lazy()], how="diagonal_relaxed")
    return History(declarations, history.offences, history.inspections, history.carried)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--full-requests", type=int, default=10)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    header()
    files = scenario(args.data, args.rows, n_offences=max(40, args.rows // 15))
    folder = trained_model(args.data, 300, args.rows)
    model = RiskModel.load(folder)
    predictor = CompiledPredictor.for_model(model, cache_dir_for(folder))
    engine = Engine(model, "bench", load_reference(), predictor)

    declarations = pl.read_parquet(files.declarations)
    offences = pl.read_parquet(files.offences)
    inspections = pl.read_parquet(files.inspections)
    full = History(declarations.lazy(), offences.lazy(), inspections.lazy())
    latest = declarations.get_column(D.DECLARED_AT).max()
    assert isinstance(latest, datetime)
    carried, carry_s = timed(lambda: carry(full, latest, model.extras, index_offences=True))
    print(
        f"history: {declarations.height:,} declarations, {offences.height:,} offence records, "
        f"{inspections.height:,} inspection results; carried to its latest declaration "
        f"once, in {carry_s:.1f} s"
    )
    asked = requests(declarations, max(args.requests, args.full_requests), latest)

    def run(history: History, frames: list[pl.DataFrame]) -> tuple[list[float], list[float]]:
        engine.score(
            frames[0], lodged(history, frames[0], model.extras)
        )  # warm: compiled trees, caches
        seconds, scores = [], []
        for frame in frames:
            started = time.perf_counter()
            scored = engine.score(frame, lodged(history, frame, model.extras))
            seconds.append(time.perf_counter() - started)
            scores.append(float(scored.get_column(SCORE)[0]))
        return seconds, scores

    fast, fast_scores = run(carried, asked[: args.requests])
    slow, slow_scores = run(full, asked[: args.full_requests])
    both = min(len(fast_scores), len(slow_scores))
    worst = float(np.max(np.abs(np.subtract(fast_scores[:both], slow_scores[:both]))))
    print(f"{'path':<34}{'requests':>9}  latency of Engine.score, one declaration")
    print(f"{'carried history (online)':<34}{len(fast):>9}  {percentiles(fast)}")
    print(f"{'full history (baseline)':<34}{len(slow):>9}  {percentiles(slow)}")
    print(
        f"carried vs full, p50: {np.median(slow) / np.median(fast):.1f}x faster; "
        f"largest score difference {worst:.1e} over {both} requests"
    )
    print(f"peak RSS {peak_rss_mib():,.0f} MiB")
    if worst > 1e-9:
        raise SystemExit("the carried and full paths gave different scores")


if __name__ == "__main__":
    main()
