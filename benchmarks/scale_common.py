"""Shared machinery of the scale benchmarks: scenarios, a model, machine facts, memory.

Scenarios are written once by ``cites_risk.profiling.synth.write_scenario`` into a cache
folder (``--data``, default ``/tmp/cites-risk-bench``) keyed by size, offence count and seed,
so repeated runs measure the work, not the generator. Big stages run in a fresh subprocess
(:func:`in_subprocess`) so that peak RSS (``ru_maxrss``) belongs to that stage alone.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

DEFAULT_DATA = Path("/tmp/cites-risk-bench")


def machine() -> str:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
        f"RAM {mem_kb / 1024**2:.1f} GiB, load {load[0]:.1f}/{load[1]:.1f}, "
        f"Python {platform.python_version()}, polars {pl.__version__}"
    )


def header() -> None:
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def in_subprocess(script: str, *args: str) -> dict[str, Any]:
    """Run ``script --child args``; its last stdout line is a JSON dict of results."""
    child = subprocess.run(
        [sys.executable, script, "--child", *args], check=False, capture_output=True, text=True
    )
    if child.returncode != 0:
        sys.stderr.write(child.stdout[-4000:] + child.stderr[-4000:])
        raise SystemExit(f"child {args} failed with code {child.returncode}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def percentiles(samples: list[float]) -> str:
    arr = np.asarray(samples) * 1e6
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return f"p50 {p50:.0f} µs, p95 {p95:.0f} µs, p99 {p99:.0f} µs"


@dataclass(frozen=True)
class ScenarioFiles:
    folder: Path

    @property
    def declarations(self) -> list[Path]:
        return sorted((self.folder / "declarations").glob("part-*.parquet"))

    @property
    def inspections(self) -> list[Path]:
        return sorted((self.folder / "inspections").glob("part-*.parquet"))

    @property
    def offences(self) -> Path:
        return self.folder / "offences.parquet"

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / "manifest.json").read_text())
        return data


def scenario(
    data: Path,
    rows: int,
    *,
    n_offences: int | None = None,
    seed: int = 0,
    chunk_rows: int = 500_000,
) -> ScenarioFiles:
    """A synthetic scenario of ``rows`` declarations, written once and reused."""
    from cites_risk.features.reference import load_reference
    from cites_risk.profiling.synth import write_scenario

    folder = data / f"synth-{rows}-{n_offences or 'auto'}-{seed}-{chunk_rows}"
    files = ScenarioFiles(folder)
    if not (folder / "manifest.json").exists():
        started = time.perf_counter()
        write_scenario(
            folder,
            rows,
            seed=seed,
            reference=load_reference(),
            n_offences=n_offences,
            chunk_rows=chunk_rows,
        )
        print(f"  (wrote scenario {folder.name} in {time.perf_counter() - started:.0f} s)")
    return files


def trained_model(data: Path, trees: int = 300, rows: int = 1_000_000) -> Path:
    """A RiskModel of exactly ``trees`` trees trained on a synthetic scenario, saved once."""
    from cites_risk.features.pipeline import FEATURE_VERSION, build_features, collect_features

    # A model of other features would be refused by the scorer: one folder per version.
    folder = data / f"model-{rows}-{trees}-v{FEATURE_VERSION}"
    if (folder / "model.json").exists():
        return folder
    from cites_risk.features.history import History
    from cites_risk.features.reference import load_reference
    from cites_risk.models.risk_model import TrainingData, fit_risk_model
    from cites_risk.models.training import LABEL, WEIGHT, label_frame

    files = scenario(data, rows, n_offences=max(40, rows // 15))
    declarations = pl.scan_parquet(files.declarations)
    inspections = pl.read_parquet(files.inspections)
    history = History(declarations, pl.scan_parquet(files.offences), inspections.lazy())
    features = collect_features(build_features(declarations, history, load_reference()))
    labelled = label_frame(features, inspections)
    cut = int(labelled.height * 0.8)
    train, valid = labelled.head(cut), labelled.slice(cut)

    def td(frame: pl.DataFrame) -> TrainingData:
        return TrainingData(frame, frame[LABEL].to_numpy(), frame[WEIGHT].to_numpy())

    model = fit_risk_model(td(train), td(valid), num_boost_round=trees, early_stopping=0)
    assert model.booster.num_trees() == trees, model.booster.num_trees()
    model.save(folder)
    return folder
