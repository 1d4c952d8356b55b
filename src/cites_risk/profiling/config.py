"""Settings: read once from the environment (prefix ``CITES_RISK_``) and passed down.

Nothing else in the project reads environment variables; the CLI and the API factory build
one :class:`Settings` and hand it to what needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITES_RISK_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    home: Path = Field(
        default=Path(".cites-risk"),
        description="Working folder: the SQLite store, the MLflow store, declaration history.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default a SQLite file in home."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default a SQLite file in home."
    )
    mlflow_artifact_root: str | None = Field(
        default=None, description="Where new MLflow experiments keep artifacts (default home)."
    )
    model_name: str = Field(default="cites-risk", description="Registered model name.")
    experiment: str = Field(default="cites-risk", description="MLflow experiment name.")
    organisation: str = Field(
        default="local", description="Organisation the CLI acts for (consent filtering)."
    )
    output_dir: Path = Field(default=Path("output"), description="Where reports are written.")
    compile_trees: bool = Field(
        default=False,
        description="Compile the model's trees to machine code (lleaves) for large batches; "
        "compiled once per model and cached in home/compiled.",
    )
    api_max_batch: int = Field(default=10_000, ge=1, description="Rows in one JSON batch.")
    api_max_body_mb: int = Field(default=200, ge=1, description="Largest request body (MiB).")
    api_scoring_threads: int = Field(
        default=4,
        ge=1,
        description="Scoring requests one API process computes at once; the others wait "
        "their turn in arrival order.",
    )
    api_coalesce_max: int = Field(
        default=32,
        ge=1,
        description="Single-declaration requests (POST /v1/score) that arrive while others "
        "are being scored wait for the next call and are scored together in it, this many "
        "at most per call.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Folder where the processes of one server count their metrics "
        "(``serve --workers`` sets it; empty means each process counts alone).",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a batch job's claim holds without renewal (renewed every third "
        "of it): after a process dies, another takes its job over this long after.",
    )
    job_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often an idle API process looks for jobs submitted to another one.",
    )

    @model_validator(mode="after")
    def _safe_in_production(self) -> Self:
        # The embedded defaults are for one analyst's machine; a shared service must say
        # where its data lives rather than scatter SQLite files in a working directory.
        if self.environment == "production":
            missing = [
                name
                for name in ("database_url", "mlflow_tracking_uri")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    "in production set "
                    + ", ".join(f"CITES_RISK_{m.upper()}" for m in missing)
                    + " explicitly"
                )
        return self

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'store.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or (self.home / "mlartifacts").resolve().as_uri()

    @property
    def history_dir(self) -> Path:
        return self.home / "history"
