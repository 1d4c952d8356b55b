"""MLflow tracking and registry: every trained model is a run and a registered version.

The model folder (booster, fitted state, feature-set metadata) is logged as an MLflow
pyfunc so that it carries a signature and can be served by MLflow too; the engine itself
loads the folder directly, which is faster and checks the feature set.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from cites_risk.models.registry import HOLDOUT_TAG, Candidate, Decision, decide
from cites_risk.models.risk_model import RiskModel

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"


class RegistryError(RuntimeError):
    pass


class _PyfuncModel(PythonModel):
    """Lets ``mlflow models serve`` score feature frames with our model folder."""

    def load_context(self, context: Any) -> None:
        self.model = RiskModel.load(Path(context.artifacts["risk_model"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # Untyped on purpose: MLflow derives its input schema from these hints.
        return self.model.predict_proba(pl.from_pandas(model_input))


@dataclass(frozen=True)
class Tracking:
    tracking_uri: str
    artifact_root: str
    experiment: str
    model_name: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        mlflow.set_tracking_uri(self.tracking_uri)
        found = mlflow.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(mlflow.create_experiment(self.experiment, artifact_location=self.artifact_root))


def log_model_run(
    tracking: Tracking,
    model: RiskModel,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    example: pl.DataFrame,
    artifacts: dict[str, Path] | None = None,
    run_name: str | None = None,
    register: bool = True,
    tags: dict[str, str] | None = None,
) -> tuple[str, str | None]:
    """Log params, metrics, tags, artifacts and the model; returns (run id, version).

    Tags always name the feature set, its version and columns, and the holdout (test
    period) the metrics were measured on, which is what makes two runs comparable.
    """
    mlflow.set_tracking_uri(tracking.tracking_uri)
    exp_id = tracking.experiment_id()
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.set_tags(
            {
                "feature_set": model.feature_set,
                "feature_version": model.feature_version,
                "feature_columns": ",".join(model.columns)[:5000],
                HOLDOUT_TAG: str(model.info.get("holdout", "")),
                **(tags or {}),
            }
        )
        for name, path in (artifacts or {}).items():
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=name)
            else:
                mlflow.log_artifact(str(path), artifact_path=name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = model.save(Path(tmp) / "risk_model")
            sample = example.select(model.input_columns).head(20)
            signature = infer_signature(sample.to_pandas(), model.predict_proba(example.head(20)))
            mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=_PyfuncModel(),
                artifacts={"risk_model": str(folder)},
                signature=signature,
                pip_requirements=["cites-risk"],
            )
        run_id = run.info.run_id
    version = None
    if register:
        version = register_run(tracking, run_id, metrics)
    return run_id, version


def register_run(tracking: Tracking, run_id: str, metrics: dict[str, float]) -> str:
    """Register the run's model; the first version becomes champion, later ones challenger."""
    client = tracking.client()
    try:
        client.get_registered_model(tracking.model_name)
    except MlflowException:
        client.create_registered_model(tracking.model_name)
    mv = client.create_model_version(
        tracking.model_name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id
    )
    alias = CHALLENGER if _alias_version(client, tracking.model_name, CHAMPION) else CHAMPION
    client.set_registered_model_alias(tracking.model_name, alias, mv.version)
    return str(mv.version)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_model(tracking: Tracking, alias_or_version: str = CHAMPION) -> tuple[RiskModel, str]:
    """The registered model by alias or version number, and its version."""
    client = tracking.client()
    try:
        if alias_or_version.isdigit():
            mv = client.get_model_version(tracking.model_name, alias_or_version)
        else:
            mv = client.get_model_version_by_alias(tracking.model_name, alias_or_version)
    except MlflowException as exc:
        raise RegistryError(
            f"no model {tracking.model_name!r} {alias_or_version!r} in {tracking.tracking_uri}: "
            "train one first (cites-risk train)"
        ) from exc
    mlflow.set_tracking_uri(tracking.tracking_uri)
    # The model is read whole into memory, so its download goes when it is loaded: a
    # service that reloads its champion would otherwise leave a folder behind per load.
    with tempfile.TemporaryDirectory(prefix="cites-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{mv.run_id}/{MODEL_ARTIFACT}/artifacts/risk_model", dst_path=tmp
        )
        return RiskModel.load(Path(local)), str(mv.version)


def list_versions(tracking: Tracking) -> list[dict[str, Any]]:
    client = tracking.client()
    try:
        model = client.get_registered_model(tracking.model_name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name='{tracking.model_name}'"):
        run = client.get_run(str(mv.run_id))
        out.append(
            {
                "version": str(mv.version),
                "aliases": aliases.get(str(mv.version), []),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                "metrics": dict(run.data.metrics),
                "tags": {
                    k: v
                    for k, v in run.data.tags.items()
                    if k.startswith("feature") or k == HOLDOUT_TAG
                },
            }
        )
    return sorted(out, key=lambda r: int(r["version"]))


def set_alias(tracking: Tracking, alias: str, version: str) -> None:
    tracking.client().set_registered_model_alias(tracking.model_name, alias, version)


def alias_version(tracking: Tracking, alias: str) -> str | None:
    return _alias_version(tracking.client(), tracking.model_name, alias)


def candidate(tracking: Tracking, alias_or_version: str) -> Candidate | None:
    """A registered version's metrics and tags, for :func:`registry.decide`; None if absent."""
    client = tracking.client()
    try:
        if alias_or_version.isdigit():
            mv = client.get_model_version(tracking.model_name, alias_or_version)
        else:
            mv = client.get_model_version_by_alias(tracking.model_name, alias_or_version)
    except MlflowException:
        return None
    run = client.get_run(str(mv.run_id))
    return Candidate(str(mv.version), dict(run.data.metrics), dict(run.data.tags))


def promote(tracking: Tracking, version: str, *, force: bool = False) -> Decision:
    """Make ``version`` champion if :func:`registry.decide` allows it (or ``force``).

    The replaced champion becomes challenger, so one command undoes a promotion. The caller
    audits the decision (who, which version, forced or not, why).
    """
    challenger = candidate(tracking, version)
    if challenger is None:
        raise RegistryError(f"no version {version} of model {tracking.model_name!r}")
    champion = candidate(tracking, CHAMPION)
    decision = decide(challenger, champion, force=force)
    if decision.allowed and (champion is None or champion.version != challenger.version):
        client = tracking.client()
        client.set_registered_model_alias(tracking.model_name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_registered_model_alias(tracking.model_name, CHALLENGER, champion.version)
    return decision
