"""End-to-end batch scoring: read, features against a 1 M-declaration history, predict,
select within capacity, write. Declarations per second and peak memory.

Run: ``.venv/bin/python benchmarks/bench_scoring.py [--rows 10000000] [--chunk 500000]``
(``--rows 1000000`` for a quick run; ``--skip-baseline`` to time only the fast path).

A scenario of ``1 M + rows`` declarations is written once. The first million declarations,
their offence records and inspection results are the history; the next ``rows`` are the
batch, scored partition by partition (``--chunk`` rows), each against the history plus
itself (consignment siblings), selected with the starter profiles at 5 % capacity per office
and day, and written as Parquet. Two implementations of the same work, each in a fresh
subprocess (its own peak RSS):

* ``engine``: :meth:`Engine.score` as the batch scorer uses it today (LightGBM predictions,
  TreeSHAP reasons and sentences for every row), then :func:`decide`;
* ``fast``: :class:`FastEngine` (compiled trees, reasons for the top ``--explain-share``
  (default 1 %) of each partition only, species sentences per distinct match), then
  :func:`decide`.

The fast stage also reports where its time goes (read / features / predict / explain /
select / write).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_common import (
    DEFAULT_DATA,
    header,
    in_subprocess,
    peak_rss_mib,
    scenario,
    trained_model,
)

HISTORY_ROWS = 1_000_000


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


def run_stage(
    stage: str,
    folder: Path,
    model_folder: Path,
    rows: int,
    chunk: int,
    out: Path,
    explain_share: float,
) -> dict[str, Any]:
    from cites_risk.features.history import History
    from cites_risk.features.reference import load_reference
    from cites_risk.models.compiled import CompiledPredictor, cache_dir_for
    from cites_risk.models.explain import explain
    from cites_risk.models.risk_model import RiskModel
    from cites_risk.profiling.engine import Engine, decide
    from cites_risk.profiling.fast_score import FastEngine
    from cites_risk.profiling.profiles.model import starter_profiles
    from cites_risk.profiling.selection import SelectionConfig

    ref = load_reference()
    model = RiskModel.load(model_folder)
    engine = Engine(model, "bench", ref)
    predictor = CompiledPredictor.for_model(model, cache_dir_for(model_folder))
    fast = FastEngine(engine, predictor, explain_share=explain_share)
    profiles = starter_profiles()
    config = SelectionConfig(capacity_share=0.05, random_share=0.02)
    history = _history(folder)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    steps = {"read": 0.0, "score": 0.0, "select": 0.0, "write": 0.0}
    breakdown: dict[str, float] = {}
    done, k = 0, 0
    while done < rows:
        n = min(chunk, rows - done)
        t0 = time.perf_counter()
        batch = pl.scan_parquet(folder / "declarations").slice(HISTORY_ROWS + done, n).collect()
        t1 = time.perf_counter()
        lodged = History(
            pl.concat([history.declarations, batch.lazy()]), history.offences, history.inspections
        )
        scorer = fast if stage == "fast" else engine
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
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[name] += dt
        if k == 0 and stage == "fast":
            # Where the scoring time goes, measured once on the first partition.
            a = time.perf_counter()
            feats = engine.features(batch, lodged)
            b = time.perf_counter()
            proba = fast.predict_proba(feats)
            c = time.perf_counter()
            rows_ = fast.explained_rows(proba)
            explain(model, feats[pl.Series(rows_)])
            d = time.perf_counter()
            breakdown = {"features": b - a, "predict": c - b, "explain_top_share": d - c}
            e0 = time.perf_counter()
            explain(model, feats.head(5_000))
            breakdown["explain_rows_per_s"] = 5_000 / (time.perf_counter() - e0)
        done += n
        k += 1
    total = time.perf_counter() - t_start
    return {"seconds": total, "steps": steps, "breakdown": breakdown, "rows": done}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _, stage, folder, model_folder, rows, chunk, out, share = argv
        result = run_stage(
            stage, Path(folder), Path(model_folder), int(rows), int(chunk), Path(out), float(share)
        )
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
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    header()
    files = scenario(args.data, HISTORY_ROWS + args.rows, n_offences=30_000)
    model_folder = trained_model(args.data, trees=300)
    print(
        f"batch {args.rows:,} declarations in partitions of {args.chunk:,}; history "
        f"{HISTORY_ROWS:,} declarations + their offences and inspections; model 300 trees"
    )
    stages = ["fast"] if args.skip_baseline else ["fast", "engine"]
    results = {}
    for stage in stages:
        out = args.data / f"scored-{stage}-{args.rows}"
        results[stage] = in_subprocess(
            __file__,
            stage,
            str(files.folder),
            str(model_folder),
            str(args.rows),
            str(args.chunk),
            str(out),
            str(args.explain_share),
        )
        r = results[stage]
        # The one-off breakdown of the first partition is not part of the work.
        r["seconds"] = sum(r["steps"].values())
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in r["steps"].items())
        print(
            f"{stage:<7} {r['seconds']:8.1f} s  {args.rows / r['seconds']:>9,.0f} decl/s  "
            f"peak RSS {r['peak_rss_mib']:6.0f} MiB  ({steps})"
        )
    b = results["fast"]["breakdown"]
    print("fast path, first partition: " + ", ".join(f"{k} {v:,.2f}" for k, v in b.items()))
    if "engine" in results:
        ratio = results["engine"]["seconds"] / results["fast"]["seconds"]
        print(f"fast vs engine: {ratio:.1f}x")
    rate = args.rows / results["fast"]["seconds"]
    print(
        f"target >= 150,000 decl/s: {'met' if rate >= 150_000 else 'NOT met'}; "
        f"peak <= 3 GB: {'met' if results['fast']['peak_rss_mib'] <= 3072 else 'NOT met'}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
