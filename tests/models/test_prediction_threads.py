"""Predicting a few rows starts no OpenMP threads: a team started from a thread other than
the main one lives as long as that thread, and once a process holds more OpenMP threads than
cores, LightGBM's training in it runs about 2x slower (every team sleeps at its barriers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cites_risk.models.risk_model import THREADED_ROWS, prediction_threads
from cites_risk.models.training import TrainResult

#: Run in a fresh interpreter, where no other code starts or ends threads meanwhile: each
#: way of predicting runs on a new thread that stays alive, and the OS threads it leaves
#: behind are counted.
_CHILD = """
import os, sys, threading
from pathlib import Path
import numpy as np
from cites_risk.models.compiled import LightGBMPredictor
from cites_risk.models.risk_model import RiskModel
from cites_risk.models.treeshap import LightGBMContributions

model = RiskModel.load(Path(sys.argv[1]))
matrix = np.load(sys.argv[2])
calls = {
    "model": lambda: model.margin(None, matrix),
    "predictor": lambda: LightGBMPredictor(model.booster, threads=2).margin(matrix),
    "explainer": lambda: LightGBMContributions(model.booster).contributions(matrix),
    # LightGBM left to its own thread count: the count must see the team it starts.
    "unlimited": lambda: model.booster.predict(matrix, raw_score=True, num_threads=0),
}

def threads():
    return len(os.listdir(f"/proc/{os.getpid()}/task"))

for name, call in calls.items():
    done, leave = threading.Event(), threading.Event()
    def run():
        call()
        done.set()
        leave.wait()
    before = threads()
    threading.Thread(target=run, daemon=True).start()
    done.wait(60)
    print(name, threads() - before - 1)
"""


def _left_behind(trained: TrainResult, rows: int, tmp_path: Path) -> dict[str, int]:
    folder = trained.model.save(tmp_path / "model")
    matrix = trained.model.matrix(trained.test.features.head(rows))
    np.save(tmp_path / "matrix.npy", matrix)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(tmp_path / "matrix.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: int(v) for k, v in (line.split() for line in done.stdout.splitlines())}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc (Linux)")
def test_few_rows_are_predicted_and_explained_on_the_calling_thread_alone(
    trained: TrainResult, tmp_path: Path
) -> None:
    left = _left_behind(trained, 50, tmp_path)
    assert {k: left[k] for k in ("model", "predictor", "explainer")} == {
        "model": 0,
        "predictor": 0,
        "explainer": 0,
    }
    assert left["unlimited"] >= 1


def test_threads_only_from_the_threshold_up() -> None:
    assert prediction_threads(0, 2) == 1
    assert prediction_threads(THREADED_ROWS - 1, 4) == 1
    assert prediction_threads(THREADED_ROWS, 4) == 4
