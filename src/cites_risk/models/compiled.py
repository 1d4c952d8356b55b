"""Fast prediction: the LightGBM trees of a :class:`RiskModel` compiled to machine code.

`lleaves <https://github.com/siboehm/lleaves>`_ turns a LightGBM text model into LLVM IR
and compiles it for the host CPU: the same raw margins (fp64, within 1e-9 of
``Booster.predict(raw_score=True)``), several times faster, and the GIL is released
during prediction. Compiling 300 trees takes tens of seconds, so the object code is cached
in ``cache_dir`` under a key made of

* the SHA-256 of the booster's text (a changed or retrained model never meets a stale file),
* the compiler (lleaves and llvmlite versions and the settings below),
* the host CPU name and features (code compiled for one CPU may not run on another, which
  matters when a cache folder is shared by several machines, e.g. Dask workers).

Where lleaves is not installed or compilation fails, :meth:`CompiledPredictor.for_model`
returns a :class:`LightGBMPredictor` on the booster itself and logs why, once per reason.
Nothing here reads settings or the environment: the caller passes the cache folder and the
thread count.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightgbm as lgb
import numpy as np

from cites_risk.models.risk_model import RiskModel, prediction_threads

log = logging.getLogger(__name__)

#: Folder name of the cache beside a saved model folder (``<model>/compiled``).
CACHE_FOLDER = "compiled"
_SUFFIX = ".lleaves.o"
#: Compiler settings that change the object code: part of the cache key. Trees are
#: evaluated in blocks of ``_FBLOCKSIZE`` per row block; on the 300-tree benchmark model
#: and 150 k rows (2 threads), blocks of 64 predicted in 225-230 ms against 272-279 ms
#: for lleaves' default of 34 (8: 366, 16: 336, 100: 229, 150: 246, 300: 263).
_FBLOCKSIZE = 64
_FCODEMODEL = "large"
_warned: set[str] = set()
_warn_lock = threading.Lock()


class CompilationUnavailableError(RuntimeError):
    """lleaves is not installed, or it could not compile this booster."""


@runtime_checkable
class Predictor(Protocol):
    """Raw margins (log-odds) of a booster for a float64 matrix in the model's column order."""

    backend: str

    def margin(self, matrix: np.ndarray) -> np.ndarray: ...


@dataclass
class LightGBMPredictor:
    """The booster itself: the reference implementation and the fallback."""

    booster: lgb.Booster
    threads: int = 2
    backend: str = "lightgbm"

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.zeros(0)
        return np.asarray(
            self.booster.predict(
                matrix,
                raw_score=True,
                num_threads=prediction_threads(matrix.shape[0], self.threads),
            ),
            dtype=np.float64,
        )


@dataclass
class CompiledPredictor:
    """lleaves-compiled trees. Build with :meth:`for_model` or :meth:`for_booster`."""

    compiled: Any = field(repr=False)
    n_features: int
    artefact: Path
    threads: int = 2
    backend: str = "lleaves"

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix of {self.n_features} columns, got {matrix.shape}")
        if matrix.shape[0] == 0:
            return np.zeros(0)
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        # lleaves splits rows into one contiguous range per thread.
        jobs = prediction_threads(data.shape[0], self.threads)
        return np.asarray(self.compiled.predict(data, n_jobs=jobs), dtype=np.float64)

    @classmethod
    def for_model(
        cls, model: RiskModel, cache_dir: Path, *, threads: int = 2, fallback: bool = True
    ) -> Predictor:
        """The compiled trees of ``model`` (from the cache when present), else LightGBM."""
        return cls.for_booster(model.booster, cache_dir, threads=threads, fallback=fallback)

    @classmethod
    def for_booster(
        cls, booster: lgb.Booster, cache_dir: Path, *, threads: int = 2, fallback: bool = True
    ) -> Predictor:
        try:
            return compile_booster(booster, cache_dir, threads=threads)
        except CompilationUnavailableError as exc:
            if not fallback:
                raise
            _warn_once(str(exc))
            return LightGBMPredictor(booster, threads=threads)


def compiler_version() -> str:
    """Versions of the compiler toolchain; empty when lleaves is not installed."""
    try:
        return "lleaves-{}+llvmlite-{}".format(
            importlib.metadata.version("lleaves"), importlib.metadata.version("llvmlite")
        )
    except importlib.metadata.PackageNotFoundError:
        return ""


def _host_cpu() -> str:
    import llvmlite.binding as llvm

    return f"{llvm.get_host_cpu_name()}:{llvm.get_host_cpu_features().flatten()}"


def cache_key(model_text: str) -> str:
    """Hash of the booster text, the compiler and its settings, and the host CPU."""
    h = hashlib.sha256()
    for part in (
        model_text,
        compiler_version(),
        f"fp64 raw blocksize={_FBLOCKSIZE} codemodel={_FCODEMODEL}",
        _host_cpu(),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def compile_booster(
    booster: lgb.Booster, cache_dir: Path, *, threads: int = 2
) -> CompiledPredictor:
    """Compile (or load from ``cache_dir``) the booster's trees; raises if unavailable."""
    try:
        import lleaves
    except ImportError as exc:
        raise CompilationUnavailableError(
            f"lleaves is not installed ({exc}); predicting with LightGBM. "
            "Install the 'fast' extra: pip install 'cites-risk[fast]'"
        ) from exc
    text = booster.model_to_string()
    try:
        key = cache_key(text)
    except Exception as exc:  # llvmlite present but unusable on this platform
        raise CompilationUnavailableError(f"LLVM is unusable here: {exc}") from exc
    artefact = cache_dir / f"{key}{_SUFFIX}"
    model_path = ""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # lleaves reads the model from a file; a private temp file per call is race-free.
        fd, model_path = tempfile.mkstemp(suffix=".txt", prefix=".booster-", dir=cache_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        compiled = lleaves.Model(model_file=model_path)
        started = time.perf_counter()
        if artefact.exists():
            compiled.compile(
                cache=str(artefact), raw_score=True, fblocksize=_FBLOCKSIZE, fcodemodel=_FCODEMODEL
            )
        else:
            # Compile into a private file, then rename: concurrent processes (Dask workers
            # sharing a folder) never read a half-written artefact.
            tmp = cache_dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                compiled.compile(
                    cache=str(tmp), raw_score=True, fblocksize=_FBLOCKSIZE, fcodemodel=_FCODEMODEL
                )
                tmp.replace(artefact)
            finally:
                tmp.unlink(missing_ok=True)
            log.info(
                "compiled %d trees in %.1f s -> %s",
                booster.num_trees(),
                time.perf_counter() - started,
                artefact,
            )
    except CompilationUnavailableError:
        raise
    except Exception as exc:
        raise CompilationUnavailableError(
            f"lleaves could not compile the model ({type(exc).__name__}: {exc}); "
            "predicting with LightGBM"
        ) from exc
    finally:
        if model_path:
            Path(model_path).unlink(missing_ok=True)
    return CompiledPredictor(compiled, booster.num_feature(), artefact, threads=threads)


def cache_dir_for(model_folder: Path) -> Path:
    """The conventional cache folder beside a saved model: ``<model folder>/compiled``."""
    return model_folder / CACHE_FOLDER


def prune_cache(cache_dir: Path, keep: set[str]) -> list[Path]:
    """Delete cached artefacts whose key is not in ``keep``; returns what was removed."""
    removed = []
    for path in cache_dir.glob(f"*{_SUFFIX}"):
        if path.name.removesuffix(_SUFFIX) not in keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _warn_once(reason: str) -> None:
    with _warn_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    log.warning("%s", reason)
