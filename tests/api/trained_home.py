"""Build a trained home (store + MLflow store + history): run as a script by the fixtures.

It runs in a child process because LightGBM trains about three times slower inside the
pytest process on the 2-core reference machine; the child does the real thing (ingest the
LEMIS sample, train a real LightGBM, register it in a real MLflow store) and prints the
champion's holdout average precision.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import mlflow

from cites_risk.features.reference import load_reference
from cites_risk.models.tracking import MODEL_ARTIFACT, register_run
from cites_risk.models.training import Split
from cites_risk.profiling import workflows
from cites_risk.profiling.config import Settings
from cites_risk.profiling.roles import Role
from cites_risk.profiling.sources import LEMIS_SAMPLE
from cites_risk.profiling.store import Actor, Store

ORG = "US-FWS"
SETUP = Actor("test-setup", ORG, Role.ADMIN.value)


def worse_challenger(settings: Settings, champion_run: str, ap: float) -> None:
    """A second registered version, worse on the same holdout, sharing the champion's files."""
    tracking = workflows.tracking_for(settings)
    mlflow.set_tracking_uri(tracking.tracking_uri)
    champion = tracking.client().get_run(champion_run).data
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{champion_run}/{MODEL_ARTIFACT}/artifacts/risk_model"
    )
    with mlflow.start_run(experiment_id=tracking.experiment_id(), run_name="worse") as run:
        # Same holdout and feature set (tags), worse ranking on it.
        mlflow.set_tags({k: v for k, v in champion.tags.items() if not k.startswith("mlflow.")})
        mlflow.log_metrics(champion.metrics | {"average_precision": ap - 0.2})
        mlflow.log_artifacts(local, artifact_path=f"{MODEL_ARTIFACT}/artifacts/risk_model")
    register_run(tracking, run.info.run_id, {})


def build(home: Path) -> float:
    settings = Settings(home=home, output_dir=home.parent / "output", organisation=ORG)
    store = Store(settings.store_url)
    reference = load_reference()
    workflows.ingest(settings, store, reference, LEMIS_SAMPLE, "lemis", SETUP)
    # Train on 2016 Q1-Q3, calibrate on Q4, test on 2017 Q1: a real LightGBM that trains in
    # seconds (the whole sample stays in the history the service scores against).
    split = Split(
        datetime(2016, 10, 1, tzinfo=UTC),
        datetime(2017, 1, 1, tzinfo=UTC),
        datetime(2017, 4, 1, tzinfo=UTC),
    )
    outcome = workflows.train(settings, store, reference, split, SETUP, mapping_name="lemis")
    store.close()
    ap = float(outcome.metrics["average_precision"])
    worse_challenger(settings, outcome.run_id, ap)
    return ap


if __name__ == "__main__":
    print(f"AP={build(Path(sys.argv[1]))}")
