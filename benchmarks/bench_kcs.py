"""KCS synthetic import declarations: train 2020, validate 2021 Q1, test 2021 Q2.

Labels: ``Fraud`` (bars: precision at 5 % >= 0.90 and at 10 % >= 0.84; published LightGBM
0.762 / 0.641, plain LightGBM 0.874 / 0.807) and ``Critical Fraud == 2`` (recall at 5 %
>= 0.80; plain LightGBM about 0.75). Reads ``../shared/data/customs-declarations-kcs``.
Run: ``.venv/bin/python benchmarks/bench_kcs.py [--seeds 5]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl

from benchmarks.common import SHARED, Task, load, run, utc
from cites_risk.features.contract import I
from cites_risk.features.reference import load_reference
from cites_risk.models.training import Split

FOLDER = SHARED / "customs-declarations-kcs"
RAW_DROP = ("Declaration ID", "Date", "Fraud", "Critical Fraud")


def raw_label(raw: pl.DataFrame, task: str) -> np.ndarray:
    column, value = ("Fraud", "1") if task == "fraud" else ("Critical Fraud", "2")
    return (raw.get_column(column) == value).cast(pl.Float64).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=0)
    parser.add_argument(
        "--split",
        nargs=3,
        default=["2021-01-01", "2021-04-01", "2021-07-01"],
        metavar=("VALID_FROM", "TEST_FROM", "TEST_UNTIL"),
        help="another period, e.g. a backtest fold: 2020-07-01 2020-10-01 2021-01-01",
    )
    parser.add_argument("--tasks", nargs="+", choices=["fraud", "critical"], default=None)
    parser.add_argument("--critical-bag", type=int, default=5, help="seeds per critical model")
    args = parser.parse_args()
    files = [FOLDER / f"df_syn_{part}_eng.csv" for part in ("train", "valid", "test")]
    data = load(files, "kcs", load_reference())
    split = Split(*(utc(day) for day in args.split))
    ok = run(
        data,
        [
            task
            for task in (
                Task("fraud", None, {"precision_at_5": 0.90, "precision_at_10": 0.84}),
                # 1 % positives: a model per seed ranks them unsteadily, five averaged do
                # better on both backtest folds (README, *Seeds averaged*).
                Task(
                    "critical",
                    pl.col(I.FINDING) == "critical",
                    {"recall_at_5": 0.80},
                    bag=args.critical_bag,
                ),
            )
            if args.tasks is None or task.name in args.tasks
        ],
        split,
        seeds=range(args.seeds),
        raw_drop=RAW_DROP,
        raw_label=raw_label,
        raw_times=data.raw.get_column("Date").str.to_datetime(time_zone="UTC"),
        trials=args.trials,
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
