"""End-to-end batch scoring: read, features against a 1 M-declaration history, predict,
select within capacity, write. Declarations per second and peak memory.

Run: ``.venv/bin/python benchmarks/bench_scoring.py [--rows 10000000] [--chunk 500000]
[--pandas-rows 1000000]`` (``--rows 1000000`` for a quick run; ``--skip-baseline`` leaves out
the engine stage, ``--pandas-rows 0`` the pandas one).

A scenario of ``1 M + rows`` declarations is written once. The first million declarations,
their offence records and inspection results are the history; the next ``rows`` are the
batch, scored partition by partition (``--chunk`` rows), each against the history plus
itself (consignment siblings; our stages fold the history, which ends before the batch,
into per-key totals once: ``features/carry.py``), selected at 5 % capacity per office and
day, and written as Parquet. Three implementations of the same work, each in a fresh
subprocess (its own peak RSS):

* ``fast``: :class:`FastEngine` (compiled trees, reasons for the top ``--explain-share``
  (default 1 %) of each partition only, species sentences per distinct match), then
  :func:`decide` with the starter profiles;
* ``engine``: :meth:`Engine.score` as the batch scorer uses it today (LightGBM predictions,
  TreeSHAP reasons and sentences for every row), then :func:`decide`;
* ``pandas``: what a team would write by hand with pandas and LightGBM
  (``benchmarks/pandas_scoring.py``): ``read_parquet``, every feature the model reads with
  pandas (history through a sort and ``merge_asof`` per key and event type), the same
  model's booster, ``pred_contrib`` top-3 feature names for the same top share, top 5 % per
  office and day by ``groupby`` + ``rank`` (2 % of it at random; no starter profiles, no
  reason sentences, no fuzzy species matching: see that module), ``to_parquet``. Slow, so
  it scores only the first ``--pandas-rows`` of the batch, in the same partitions; the
  ratio is per declaration. Its history features of the first partition are then checked
  against :meth:`Engine.features` (another subprocess, outside the timing).

The fast and pandas stages also report where their time goes (read / features / predict /
explain / select / write); the fast path's first partition is then broken down further
(features, prediction, reasons) in a subprocess of its own, so that the peak RSS reported
is what scoring needs. The memory bar is 3 GB, i.e. 2,861 MiB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_common import (
    DEFAULT_DATA,
    ScenarioFiles,
    header,
    in_subprocess,
    peak_rss_mib,
    scenario,
    trained_model,
)

HISTORY_ROWS = 1_000_000
#: The issue's bar, 3 GB, in the MiB that peak RSS is reported in.
PEAK_BAR_MIB = 3e9 / 2**20


def _history(folder: Path) -> Any:
    """The first million declarations with what was known about them, in memory."""
    from cites_risk.features.history import History

    decl = pl.scan_parquet(folder / "declarations").head(HISTORY_ROWS).collect()
    last = decl.get_column("declared_at").max()
    off = pl.scan_parquet(folder / "offences.parquet").filter(pl.col("detected_at") <= last)
    insp = pl.scan_parquet(folder / "inspections").filter(
        pl.col("declaration_id").is_in(decl.get_column("declaration_id").implode())
    )
    return History(decl.lazy(), off.collect().lazy(), insp.collect().lazy())


def _prepared(folder: Path, model_folder: Path, explain_share: float) -> dict[str, Any]:
    """What a stage loads before its clock starts: reference, model, engines, history."""
    from cites_risk.features.reference import load_reference
    from cites_risk.models.compiled import CompiledPredictor, cache_dir_for
    from cites_risk.models.risk_model import RiskModel
    from cites_risk.profiling.engine import Engine
    from cites_risk.profiling.fast_score import FastEngine

    model = RiskModel.load(model_folder)
    engine = Engine(model, "bench", load_reference())
    predictor = CompiledPredictor.for_model(model, cache_dir_for(model_folder))
    fast = FastEngine(engine, predictor, explain_share=explain_share)
    return {"model": model, "engine": engine, "fast": fast, "history": _history(folder)}


def _carried(folder: Path, history: Any, extras: dict[str, str]) -> Any:
    """The history folded into per-key totals up to the batch's first declaration.

    The history ends before the batch starts: folded once (features/carry.py), it is not
    sorted again in every partition. Same features.
    """
    from cites_risk.features.carry import carry

    first = pl.scan_parquet(folder / "declarations").slice(HISTORY_ROWS, 1).collect()
    return carry(history, first.get_column("declared_at")[0], extras)


def _partition(folder: Path, carried: Any, done: int, n: int) -> tuple[pl.DataFrame, Any]:
    """Batch declarations ``done .. done + n`` and the history they are scored against."""
    batch = pl.scan_parquet(folder / "declarations").slice(HISTORY_ROWS + done, n).collect()
    lodged = replace(
        carried,
        declarations=pl.concat([carried.declarations, batch.lazy()], how="diagonal_relaxed"),
    )
    return batch, lodged


def run_stage(
    stage: str,
    folder: Path,
    model_folder: Path,
    rows: int,
    chunk: int,
    out: Path,
    explain_share: float,
) -> dict[str, Any]:
    from cites_risk.profiling.engine import decide
    from cites_risk.profiling.profiles.model import starter_profiles
    from cites_risk.profiling.selection import SelectionConfig

    ready = _prepared(folder, model_folder, explain_share)
    profiles = starter_profiles()
    config = SelectionConfig(capacity_share=0.05, random_share=0.02)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    steps = {"carry": 0.0, "read": 0.0, "score": 0.0, "select": 0.0, "write": 0.0}
    carried = _carried(folder, ready["history"], ready["model"].extras)
    steps["carry"] = time.perf_counter() - t_start
    scorer = ready["fast"] if stage == "fast" else ready["engine"]
    done, k = 0, 0
    while done < rows:
        n = min(chunk, rows - done)
        t0 = time.perf_counter()
        batch, lodged = _partition(folder, carried, done, n)
        t1 = time.perf_counter()
        scored = scorer.score(batch, lodged)
        t2 = time.perf_counter()
        decided = decide(scored, profiles, config).frame
        t3 = time.perf_counter()
        decided.select(
            "declaration_id",
            "score",
            "final_risk",
            "lane",
            "selected",
            "selected_by",
            "profile_hits",
            "species_match",
            "reasons",
        ).write_parquet(out / f"part-{k:05d}.parquet")
        t4 = time.perf_counter()
        for name, dt in zip(
            ("read", "score", "select", "write"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True
        ):
            steps[name] += dt
        done += n
        k += 1
    total = time.perf_counter() - t_start
    return {"seconds": total, "steps": steps, "rows": done}


def run_breakdown(
    folder: Path, model_folder: Path, chunk: int, explain_share: float
) -> dict[str, Any]:
    """Where the fast path's scoring time goes, on the batch's first partition.

    Its own process: computing a partition twice beside the timed stage's frames raised
    that stage's peak RSS by ~0.7 GiB, memory the scoring itself never needs.
    """
    from cites_risk.models.explain import explain

    ready = _prepared(folder, model_folder, explain_share)
    model, engine, fast = ready["model"], ready["engine"], ready["fast"]
    batch, lodged = _partition(folder, _carried(folder, ready["history"], model.extras), 0, chunk)
    # Once untimed: the species matches are remembered from partition to partition.
    engine.features(batch, lodged)
    a = time.perf_counter()
    feats = engine.features(batch, lodged)
    b = time.perf_counter()
    proba = fast.predict_proba(feats)
    c = time.perf_counter()
    # The explainer's tables are built once per model, before its first rows: timed apart.
    model.explainer(warm=True)
    d = time.perf_counter()
    explain(model, feats[pl.Series(fast.explained_rows(proba))])
    e = time.perf_counter()
    explain(model, feats.head(5_000))
    return {
        "features": b - a,
        "predict": c - b,
        "explainer_build": d - c,
        "explain_top_share": e - d,
        "explain_rows_per_s": 5_000 / (time.perf_counter() - e),
    }


def _pandas_history(folder: Path) -> tuple[Any, Any, Any]:
    """The same history as ``_history``, as pandas frames."""
    import pandas as pd

    from benchmarks.pandas_scoring import read_rows

    declarations = read_rows(ScenarioFiles(folder).declarations, 0, HISTORY_ROWS)
    offences = pd.read_parquet(folder / "offences.parquet")
    offences = offences[offences["detected_at"] <= declarations["declared_at"].max()]
    inspections = pd.read_parquet(folder / "inspections")
    inspections = inspections[inspections["declaration_id"].isin(declarations["declaration_id"])]
    return declarations, offences.reset_index(drop=True), inspections.reset_index(drop=True)


def run_pandas(
    folder: Path, model_folder: Path, rows: int, chunk: int, out: Path, explain_share: float
) -> dict[str, Any]:
    import pandas as pd

    from benchmarks.pandas_scoring import PandasScorer, read_rows, select, species_sentence
    from cites_risk.features.reference import load_reference

    scorer = PandasScorer.load(model_folder, load_reference())
    files = ScenarioFiles(folder).declarations
    # Loaded before the clock starts, as the other stages load theirs.
    history, offences, inspections = _pandas_history(folder)
    out.mkdir(parents=True, exist_ok=True)
    steps = dict.fromkeys(("read", "features", "predict", "explain", "select", "write"), 0.0)
    done, k = 0, 0
    while done < rows:
        n = min(chunk, rows - done)
        t0 = time.perf_counter()
        batch = read_rows(files, HISTORY_ROWS + done, n)
        t1 = time.perf_counter()
        features = scorer.features(batch, history, offences, inspections)
        t2 = time.perf_counter()
        x = scorer.matrix(features)
        proba = scorer.predict(x)
        t3 = time.perf_counter()
        top = scorer.top_features(x, proba, explain_share)
        species = species_sentence(features, batch)
        t4 = time.perf_counter()
        lanes = select(features[["declaration_id", "office", "declared_at"]].assign(score=proba))
        t5 = time.perf_counter()
        pd.DataFrame(
            {
                "declaration_id": features["declaration_id"],
                "score": proba,
                "final_risk": proba,
                "lane": lanes["lane"],
                "selected": lanes["selected"],
                "selected_by": lanes["selected_by"],
                "species_match": species,
                "top_features": top,
            }
        ).to_parquet(out / f"part-{k:05d}.parquet", index=False)
        t6 = time.perf_counter()
        for name, dt in zip(
            steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True
        ):
            steps[name] += dt
        done += n
        k += 1
    return {"steps": steps, "rows": done}


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b|, 0 where both are missing and infinite where only one is."""
    a, b = a.astype(float), b.astype(float)
    missing = np.isnan(a) | np.isnan(b)
    return np.where(missing, np.where(np.isnan(a) == np.isnan(b), 0.0, np.inf), np.abs(a - b))


def check_pandas(folder: Path, model_folder: Path, rows: int) -> dict[str, Any]:
    """The pandas stage's features and scores of the first partition against the engine's.

    Computed again here, not kept by the timed stage, so that its peak RSS is its own.
    """
    import pandas as pd

    from benchmarks.pandas_scoring import PandasScorer, read_rows
    from cites_risk.features.history import History
    from cites_risk.features.pairs import PAIR_COLUMNS
    from cites_risk.features.pipeline import (
        CONSIGNMENT_MIX,
        HISTORY_KEYS,
        HISTORY_STATS,
        NEWCOMER_KEYS,
    )
    from cites_risk.features.reference import load_reference
    from cites_risk.models.risk_model import RiskModel
    from cites_risk.profiling.engine import Engine

    model = RiskModel.load(model_folder)
    engine = Engine(model, "bench", load_reference())
    history = _history(folder)
    batch = pl.scan_parquet(folder / "declarations").slice(HISTORY_ROWS, rows).collect()
    lodged = History(
        pl.concat([history.declarations, batch.lazy()]), history.offences, history.inspections
    )
    ours = engine.features(batch, lodged)
    proba = engine.predict_proba(ours)
    scorer = PandasScorer.load(model_folder, engine.reference)
    frames = _pandas_history(folder)
    theirs = scorer.features(
        read_rows(ScenarioFiles(folder).declarations, HISTORY_ROWS, rows), *frames
    )
    theirs_proba = scorer.predict(scorer.matrix(theirs))
    history_columns = [
        *(f"{k.name}_{s}" for k in HISTORY_KEYS for s in HISTORY_STATS),
        *(f"{k}_newcomer" for k in NEWCOMER_KEYS),
        "transit_offences_max",
        "importer_partner_offences",
        "exporter_partner_offences",
        "consignment_lines",
        *CONSIGNMENT_MIX,
        *PAIR_COLUMNS,
    ]
    worst, worst_column = 0.0, ""
    for c in history_columns:
        d = float(_abs_diff(ours[c].cast(pl.Float64).to_numpy(), theirs[c].to_numpy()).max())
        if d > worst:
            worst, worst_column = d, c
    differing = np.zeros(len(theirs), dtype=bool)
    for c in model.input_columns:
        if c in history_columns:
            continue
        if ours.schema[c] == pl.String:
            a, b = ours[c].to_numpy().astype(object), theirs[c].to_numpy(dtype=object)
            differing |= pd.isna(a) != pd.isna(b)
            differing |= ~pd.isna(a) & ~pd.isna(b) & (a != b)
        else:
            differing |= _abs_diff(ours[c].cast(pl.Float64).to_numpy(), theirs[c].to_numpy()) > 1e-9
    return {
        "history_columns": len(history_columns),
        "max_abs_diff": worst,
        "worst_column": worst_column,
        "rows_other_inputs_differ": int(differing.sum()),
        "score_max_abs_diff": float(np.abs(theirs_proba - proba).max()),
    }


def child(argv: list[str]) -> dict[str, Any]:
    stage, folder, model_folder, rows, chunk, out, share = argv
    if stage == "pandas":
        return run_pandas(
            Path(folder), Path(model_folder), int(rows), int(chunk), Path(out), float(share)
        )
    if stage == "pandas-check":
        return check_pandas(Path(folder), Path(model_folder), int(chunk))
    if stage == "breakdown":
        return run_breakdown(Path(folder), Path(model_folder), int(chunk), float(share))
    return run_stage(
        stage, Path(folder), Path(model_folder), int(rows), int(chunk), Path(out), float(share)
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        result = child(argv[1:])
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--explain-share",
        type=float,
        default=0.01,
        help="share of each partition given model reasons on the fast path (the red lane)",
    )
    parser.add_argument(
        "--pandas-rows",
        type=int,
        default=1_000_000,
        help="the pandas stage scores the first N declarations of the batch (0: no pandas stage)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    header()
    files = scenario(args.data, HISTORY_ROWS + args.rows, n_offences=30_000)
    model_folder = trained_model(args.data, trees=300)
    pandas_rows = min(args.pandas_rows, args.rows)
    print(
        f"batch {args.rows:,} declarations in partitions of {args.chunk:,}; history "
        f"{HISTORY_ROWS:,} declarations + their offences and inspections; model 300 trees"
    )
    stages = {"fast": args.rows}
    if not args.skip_baseline:
        stages["engine"] = args.rows
    if pandas_rows > 0:
        stages["pandas"] = pandas_rows
    results = {}
    for stage, scored in stages.items():
        results[stage] = in_subprocess(
            __file__,
            stage,
            str(files.folder),
            str(model_folder),
            str(scored),
            str(args.chunk),
            str(args.data / f"scored-{stage}-{scored}"),
            str(args.explain_share),
        )
        r = results[stage]
        r["seconds"] = sum(r["steps"].values())
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in r["steps"].items())
        scope = "" if scored == args.rows else f"  [first {scored:,} declarations of the batch]"
        print(
            f"{stage:<7} {r['seconds']:8.1f} s  {scored / r['seconds']:>9,.0f} decl/s  "
            f"peak RSS {r['peak_rss_mib']:6.0f} MiB  ({steps}){scope}"
        )
    b = in_subprocess(
        __file__,
        "breakdown",
        str(files.folder),
        str(model_folder),
        "0",
        str(min(args.chunk, args.rows)),
        "-",
        str(args.explain_share),
    )
    b.pop("peak_rss_mib", None)
    print("fast path, first partition: " + ", ".join(f"{k} {v:,.2f}" for k, v in b.items()))
    if "engine" in results:
        ratio = results["engine"]["seconds"] / results["fast"]["seconds"]
        print(f"fast vs engine: {ratio:.1f}x")
    if "pandas" in results:
        per_pandas = results["pandas"]["seconds"] / pandas_rows
        per_fast = results["fast"]["seconds"] / args.rows
        print(
            f"pandas / fast time per declaration: {per_pandas / per_fast:.2f} "
            f"(pandas {per_pandas * 1e6:,.1f} µs/decl on the first {pandas_rows:,} declarations, "
            f"fast {per_fast * 1e6:,.1f} µs/decl on all {args.rows:,}; partitions of "
            f"{args.chunk:,}, same history, same run)"
        )
        check = in_subprocess(
            __file__,
            "pandas-check",
            str(files.folder),
            str(model_folder),
            str(pandas_rows),
            str(min(args.chunk, pandas_rows)),
            "-",
            str(args.explain_share),
        )
        print(
            f"pandas vs Engine.features, first partition: {check['history_columns']} history "
            f"columns, max |difference| {check['max_abs_diff']:.1e} ({check['worst_column']}); "
            f"other model inputs differ on {check['rows_other_inputs_differ']:,} rows, "
            f"score max |difference| {check['score_max_abs_diff']:.1e}"
        )
    rate = args.rows / results["fast"]["seconds"]
    print(
        f"target >= 150,000 decl/s: {'met' if rate >= 150_000 else 'NOT met'}; "
        f"peak <= 3 GB ({PEAK_BAR_MIB:,.0f} MiB): "
        f"{'met' if results['fast']['peak_rss_mib'] <= PEAK_BAR_MIB else 'NOT met'}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
