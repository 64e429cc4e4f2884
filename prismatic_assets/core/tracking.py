"""MLflow tracking with explicit run ids: runs, params, metrics, figures, and the student model.

Why explicit ids: `mlflow.start_run` keeps one global "active run" per process (and per
thread), which is wrong when one process logs several runs or several Dagster steps log at
once. `Tracker` goes through `mlflow.MlflowClient` only, and every call names its run, so
it never touches (or depends on) the fluent active-run state or the global tracking URI.

The student is logged with the transformers flavour in MLflow 3's shape, without a global
run: a LoggedModel is created with the run as its source and linked as the run's output,
`mlflow.transformers.save_model` writes the flavour folder (from the model folder, without
loading the weights), the folder is uploaded to the LoggedModel's artifacts, and a
registered model version is created from ``models:/<model_id>``. This is what
`mlflow.transformers.log_model` does, minus its dependence on the fluent globals.

Local default store: SQLite at ``<data_dir>/mlflow.db`` (the plain ``./mlruns`` file store
is deprecated in MLflow 3), artifacts under ``<data_dir>/mlartifacts``. SQLite lets one
writer in at a time; concurrent processes therefore wait (busy timeout) and retry on
"database is locked", and the first creation of the schema and of the experiment is
serialized with a file lock. Browse with
``mlflow ui --backend-store-uri sqlite:///<data_dir>/mlflow.db`` (see `run_url`).

What it does not: decide what to log (the assets do), or start a tracking server.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from prismatic_assets.core.models import file_lock

__all__ = ["Tracker", "default_artifact_root", "default_tracking_uri", "flatten_params"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_EXPERIMENT = "prismatic"
DEFAULT_UI_URL = "http://127.0.0.1:5000"
#: MLflow's own batch limits (per `log_batch` request).
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_CHARS = 6000
_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def default_tracking_uri(data_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI if set, else a SQLite store at ``<data_dir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(data_dir).resolve() / 'mlflow.db'}"


def default_artifact_root(data_dir: Path) -> str:
    """``<data_dir>/mlartifacts`` as a file URI."""
    return (Path(data_dir).resolve() / "mlartifacts").as_uri()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI, None for any other store."""
    prefix = "sqlite:///"  # sqlite:///relative.db and sqlite:////absolute.db
    if not uri.startswith(prefix):
        return None
    path = unquote(urlparse(uri).path[1:].split("?")[0])
    if path in ("", ":memory:"):
        return None
    return Path(path).resolve()


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; values become strings (MLflow params are text)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = str(value)
            out[name] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
    return out


def _is_locked_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in ("database is locked", "database table is locked", "sqlite_busy"))


def _with_retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Call `fn`, retrying SQLite lock errors with jittered exponential backoff."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MlflowException and SQLAlchemy's OperationalError both end up here
            if attempt == attempts - 1 or not _is_locked_error(exc):
                raise
            log.debug("MLflow store busy (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


class Tracker:
    """MLflow runs addressed by explicit run ids (safe with parallel processes and threads).

    `tracking_uri`: e.g. `default_tracking_uri(data_dir)` or ``http://host:5000``.
    `experiment`: created on first use. `artifact_root`: where the experiment's artifacts go
    when it is created (default: ``mlartifacts`` next to a SQLite database; the server's
    default otherwise). `registry_uri`: defaults to `tracking_uri`. `ui_url`: where an MLflow
    UI serving this store answers, for `run_url` (default: the tracking URI when it is
    http(s), else $MLFLOW_UI_URL or http://127.0.0.1:5000).
    """

    def __init__(self, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                 artifact_root: str | Path | None = None, registry_uri: str | None = None,
                 ui_url: str | None = None) -> None:
        from mlflow import MlflowClient

        if not experiment:
            raise ValueError("experiment is empty: name the MLflow experiment, e.g. 'prismatic'")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.experiment_name = experiment
        db = _sqlite_path(tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        if artifact_root is None and db is not None:
            artifact_root = (db.parent / "mlartifacts").as_uri()
        elif isinstance(artifact_root, Path) or (artifact_root and "://" not in str(artifact_root)):
            artifact_root = Path(artifact_root).resolve().as_uri()
        self.artifact_root = artifact_root
        if ui_url is None:
            ui_url = tracking_uri if tracking_uri.startswith(("http://", "https://")) else \
                os.environ.get("MLFLOW_UI_URL", DEFAULT_UI_URL)
        self.ui_url = ui_url.rstrip("/")
        # Serialize schema creation/migration and experiment creation across processes.
        with file_lock(db.with_name(db.name + ".lock") if db is not None else None):
            self.client = _with_retry(lambda: MlflowClient(tracking_uri=tracking_uri,
                                                           registry_uri=self.registry_uri))
            self.experiment_id = _with_retry(self._ensure_experiment)

    def _ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise ValueError(f"MLflow experiment {self.experiment_name!r} is deleted: restore it "
                                 "(mlflow experiments restore) or choose another experiment name")
            return exp.experiment_id
        location = f"{self.artifact_root}/{self.experiment_name}" if self.artifact_root else None
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except MlflowException as exc:  # another process created it first
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise exc
            return exp.experiment_id

    # ------------------------------------------------------------------------ runs

    def start_run(self, name: str, tags: Mapping[str, Any] | None = None) -> str:
        """Create a run in the experiment and return its id (no global active run)."""
        tags = {k: str(v) for k, v in (tags or {}).items()}
        run = _with_retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags))
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        if status not in _RUN_STATUSES:
            raise ValueError(f"status={status!r}: use one of {_RUN_STATUSES}")
        _with_retry(lambda: self.client.set_terminated(run_id, status=status))

    @contextmanager
    def run(self, name: str, tags: Mapping[str, Any] | None = None,
            end_status: Callable[[], str] | None = None) -> Iterator[str]:
        """``with tracker.run("sft") as run_id:`` ends FINISHED (or `end_status()`, for a run that
        records a failure without raising), FAILED on an exception, KILLED on Ctrl-C."""
        run_id = self.start_run(name, tags)
        try:
            yield run_id
        except BaseException as exc:
            self.end_run(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        self.end_run(run_id, end_status() if end_status is not None else "FINISHED")

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        if batch:
            _with_retry(lambda: self.client.log_batch(run_id, tags=batch))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log parameters (nested dicts flattened to dotted keys, values as text).

        MLflow parameters are write-once: logging a key again with another value fails.
        """
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            chunk = items[i:i + _MAX_PARAMS_PER_BATCH]
            _with_retry(functools.partial(self.client.log_batch, run_id, params=chunk))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log several metrics at one step (default 0)."""
        self._log_metric_objects(run_id, [(k, float(v), step or 0) for k, v in metrics.items()])

    def log_metric_history(self, run_id: str, key: str, history: Sequence[tuple[int, float]]) -> None:
        """Log a whole series, e.g. an SFT loss curve [(step, loss), ...]."""
        self._log_metric_objects(run_id, [(key, float(v), int(s)) for s, v in history])

    def _log_metric_objects(self, run_id: str, triples: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        bad = [k for k, v, _ in triples if math.isinf(v)]
        if bad:
            raise ValueError(f"metric(s) {sorted(set(bad))} are infinite: log a finite value (or skip them)")
        items = [Metric(k, v, now, s) for k, v, s in triples]
        for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
            chunk = items[i:i + _MAX_METRICS_PER_BATCH]
            _with_retry(functools.partial(self.client.log_batch, run_id, metrics=chunk))

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact, e.g. ``plots/loss.png``."""
        _with_retry(lambda: self.client.log_figure(run_id, figure, artifact_file))

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Save JSON/YAML-serializable data as an artifact, e.g. ``eval/records.json``."""
        _with_retry(lambda: self.client.log_dict(run_id, data, artifact_file))

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under `artifact_path` of the run."""
        local_path = Path(local_path)
        if not local_path.exists():
            raise FileNotFoundError(f"artifact {local_path} does not exist")
        if local_path.is_dir():
            _with_retry(lambda: self.client.log_artifacts(run_id, str(local_path), artifact_path))
        else:
            _with_retry(lambda: self.client.log_artifact(run_id, str(local_path), artifact_path))

    # ------------------------------------------------------------------------ models

    def log_transformers_model(self, run_id: str, model_dir: str | Path, registered_name: str,
                               task: str = "llm/v1/chat", name: str = "model",
                               tags: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """Log a saved model folder with the transformers flavour and register a version.

        Returns (model_uri, version): ``models:/<model_id>`` of the LoggedModel (linked to
        `run_id` as its source and output) and the new version of `registered_name`.
        `task`: the flavour's task (``llm/v1/chat`` gives the pyfunc a chat signature;
        ``text-generation`` a plain one). `tags` go on the LoggedModel and the version.
        """
        import mlflow.transformers
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a saved transformers model (no config.json): "
                                    "pass the folder written by save_pretrained, e.g. SFTResult.final_model_dir")
        if not registered_name:
            raise ValueError("registered_name is empty: name the registered model, e.g. 'prismatic-student'")
        tags = {k: str(v) for k, v in (tags or {}).items()}
        client = self.client
        logged = _with_retry(lambda: client._create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, tags=tags or None,
            flavor="transformers"))
        model_id = logged.model_id
        try:
            _with_retry(lambda: client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)]))
            with tempfile.TemporaryDirectory(prefix="prismatic-mlflow-") as tmp:
                local = Path(tmp) / "model"
                mlflow_model = Model(artifact_path=logged.artifact_location, run_id=run_id,
                                     model_uuid=model_id, model_id=model_id)
                mlflow.transformers.save_model(
                    transformers_model=str(model_dir), path=str(local), task=task,
                    mlflow_model=mlflow_model, pip_requirements=_pip_requirements())
                for pycache in local.rglob("__pycache__"):
                    shutil.rmtree(pycache, ignore_errors=True)
                _with_retry(lambda: client.log_model_artifacts(model_id, str(local)))
            _with_retry(lambda: client.finalize_logged_model(model_id, "READY"))
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                client.finalize_logged_model(model_id, "FAILED")
            raise
        version = self._register(registered_name, logged.artifact_location, model_id, run_id, tags)
        return f"models:/{model_id}", version

    def _register(self, registered_name: str, source: str, model_id: str, run_id: str,
                  tags: dict[str, str]) -> str:
        # The source is the LoggedModel's artifact location, not ``models:/<model_id>``: MLflow
        # 3.17's SQL registry resolves a models:/ source through a new MlflowClient() bound to
        # the *global* tracking URI, which is not ours (and must not be set from here).
        from mlflow.exceptions import MlflowException

        try:
            _with_retry(lambda: self.client.create_registered_model(registered_name))
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and getattr(exc, "error_code", "") not in (
                    "RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mv = _with_retry(lambda: self.client.create_model_version(
            registered_name, source=source, run_id=run_id, tags=tags or None,
            model_id=model_id))
        return str(mv.version)

    def set_model_version_tags(self, name: str, version: str | int, tags: Mapping[str, Any]) -> None:
        """Attach tags (e.g. held-out accuracy) to a registered model version."""
        for key, value in tags.items():
            _with_retry(functools.partial(self.client.set_model_version_tag, name, str(version), key, str(value)))

    # ------------------------------------------------------------------------ display

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI at `ui_url`."""
        return f"{self.ui_url}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        """The registered version's page in the MLflow UI at `ui_url`."""
        return f"{self.ui_url}/#/models/{name}/versions/{version}"


def _pip_requirements() -> list[str]:
    """Pinned requirements of the logged model (given explicitly: no inference, no model load)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for package in ("mlflow", "torch", "transformers", "accelerate", "safetensors", "tokenizers"):
        try:
            reqs.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return reqs
