"""LEMIS amphibian imports: train 2016-2019, test 2020-2021, label = refused (action R).

Bars: average precision >= 0.75 and recall at 5 % >= 0.80 (plain LightGBM on the raw
columns: 0.67 / 0.71). Run: ``.venv/bin/python benchmarks/bench_lemis.py [--seeds 5]``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import polars as pl

from benchmarks.common import Task, load, run, utc
from cites_risk.features.reference import load_reference
from cites_risk.models.training import Split
from cites_risk.profiling.sources import LEMIS_SAMPLE

#: Columns of the raw file that are outcomes (or ids) and must not be model inputs.
RAW_DROP = (
    "action",
    "disposition",
    "disposition_date",
    "disposition_year",
    "control_number",
    "cleaning_notes",
    "shipment_date",
)
#: Validation from, test from, test until: the benchmark's test period 2020-2021.
TEST_SPLIT = ("2019-07-01", "2020-01-01", "2022-01-01")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=0)
    parser.add_argument(
        "--split",
        nargs=3,
        default=list(TEST_SPLIT),
        metavar=("VALID_FROM", "TEST_FROM", "TEST_UNTIL"),
        help="another period, e.g. the backtest fold 2019-H2: 2019-01-01 2019-07-01 2020-01-01",
    )
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="leave out the mapping's extra columns (x_species_code) and their history",
    )
    args = parser.parse_args()
    data = load([LEMIS_SAMPLE], "lemis", load_reference())
    if args.no_extras:
        data = replace(data, extras={})
    split = Split(*(utc(day) for day in args.split))
    times = data.raw.get_column("shipment_date").str.to_datetime(time_zone="UTC")
    ok = run(
        data,
        [Task("refused", None, {"average_precision": 0.75, "recall_at_5": 0.80})],
        split,
        seeds=range(args.seeds),
        raw_drop=RAW_DROP,
        raw_label=lambda raw, _: (raw.get_column("action") == "R").cast(pl.Float64).to_numpy(),
        raw_times=times,
        # When each refusal or clearance was recorded: the plain model reads only the labels
        # known at the test period's start, as ours does.
        raw_known=data.raw.get_column("disposition_date").str.to_datetime(time_zone="UTC"),
        trials=args.trials,
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
