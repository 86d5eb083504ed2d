"""One MLflow run: started (or reopened), logged into in batches, and always ended with a status."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline import __version__
from pipeline.config_load import mask_secrets
from pipeline.faults import storage_fault
from pipeline.tracking import experiment_id, get_client

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def now_ms() -> int:
    return int(time.time() * 1000)


class RunLogger:
    """One open MLflow run: batched params, metrics and tags; figures and text as artifacts."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, mask_secrets(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        self.client.log_batch(self.run_id, params=items)  # MLflow splits large batches itself

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = now_ms()
        self.log_metric_points([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_metric_points(self, points: Sequence[Metric]) -> None:
        if points:
            self.client.log_batch(self.run_id, metrics=list(points))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            items = [RunTag(k, mask_secrets(str(v))[:5000]) for k, v in tags.items()]
            self.client.log_batch(self.run_id, tags=items)

    def log_figure(self, fig: Figure, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        self.client.log_figure(self.run_id, fig, artifact_file)
        plt.close(fig)

    def log_image(self, fig: Figure, key: str, step: int) -> Image.Image:
        """A step-indexed image: the MLflow UI shows a slider over the steps of ``key``. Returns
        the rendered image (for a file of the same picture)."""
        import matplotlib.pyplot as plt

        from pipeline.plots import figure_image

        image = figure_image(fig)
        self.client.log_image(self.run_id, image, key=key, step=step)
        plt.close(fig)
        return image

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_training_data(self, features: np.ndarray, name: str,
                          source: str | Mapping[str, str] | None) -> None:
        """The training set as an MLflow dataset input (the run page's Datasets): its name, a
        digest of its contents, its shape and its source, a file path or (for data drawn by
        code) a description of the code."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        origin = source if isinstance(source, str) else CodeDatasetSource(dict(source or {}))
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and then warns that a path "can be
            # interpreted in multiple ways: LocalArtifactDatasetSource, LocalArtifactDatasetSource".
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            dataset = from_numpy(features, source=origin, name=name)
        inputs = [DatasetInput(dataset._to_mlflow_entity(),
                               tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException:
            # An experiment holds one row per dataset (name, digest). Workers that start their
            # first trials together insert it at once and all but one fail on the unique key;
            # by then the winner's row is there, and a second try links this run to it.
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_dir(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)


@dataclass(frozen=True)
class Ending:
    """How a run ends when an exception of some type leaves it."""

    status: str  # FINISHED, KILLED or FAILED
    tags: Mapping[str, str] = field(default_factory=dict)


def start_run(client: MlflowClient, experiment: str, *, run_name: str | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Create a run as ``mlflow.start_run`` would (user, source, git commit from MLflow's
    context providers) without touching MLflow's global active-run state."""
    all_tags = {"package_version": __version__, **(tags or {})}
    if run_name:
        all_tags[MLFLOW_RUN_NAME] = run_name
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    resolved = resolve_tags({k: mask_secrets(str(v)) for k, v in all_tags.items()})
    run = client.create_run(experiment_id(client, experiment), tags=resolved, run_name=run_name)
    return str(run.info.run_id)


# Ctrl-C or SIGTERM: the run ends KILLED and says why, and that the command resumes it
STOPPED = Ending("KILLED", {"killed_reason": "run the same command again to resume"})


@contextmanager
def mlflow_run(
    uri: str,
    experiment: str,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    ended_by: Mapping[type[BaseException], Ending] | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[RunLogger]:
    """Open a run (or reopen ``run_id`` to continue it) and always close it with a status.

    Normal exit -> FINISHED. An exception whose type is in ``ended_by`` ends the run as that
    entry says (a study ends a pruned trial FINISHED with tag optuna_state=PRUNED); Ctrl-C and
    SIGTERM -> KILLED; any other exception -> FAILED with the error in tag ``error``. The
    exception propagates.
    """
    client = get_client(uri)
    resumed = run_id is not None
    if run_id is None:
        run_id = start_run(client, experiment, run_name=run_name, parent_run_id=parent_run_id,
                           tags=tags)
    else:
        client.update_run(run_id, status="RUNNING")
    logger = RunLogger(client, run_id)
    endings: dict[type[BaseException], Ending] = {KeyboardInterrupt: STOPPED}
    endings.update(ended_by or {})
    monitor = start_system_metrics(uri, run_id, resume=resumed) if system_metrics else None
    try:
        yield logger
    except BaseException as exc:
        if monitor is not None:
            monitor.finish()
        for exc_type, ending in endings.items():
            if isinstance(exc, exc_type):
                tags = dict(ending.tags)
                if ending is STOPPED:
                    tags["killed_reason"] = f"stopped by {exc or 'Ctrl-C'}: {tags['killed_reason']}"
                status = ending.status
                break
        else:
            status, tags = "FAILED", {"error": f"{type(exc).__name__}: {exc}"}
        try:
            close_run(logger, status, tags)
        except Exception:
            if storage_fault(exc) is None:
                raise
            # the store refused the write that caused this: the run stays RUNNING until a
            # resume ends it (sweep.close_orphan_runs); the fault is what the user must hear of
        raise
    else:
        if monitor is not None:
            monitor.finish()
        client.set_terminated(logger.run_id, "FINISHED")


def start_system_metrics(uri: str, run_id: str, *, resume: bool) -> Any:
    """MLflow's own system-metrics monitor (a thread sampling CPU, memory and disk every 10 s
    into system/* metrics), on this run of this store."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri)
    monitor.start()
    return monitor


def close_run(logger: RunLogger, status: str, tags: dict[str, str]) -> None:
    """End a run with a status, retried: it runs while a study is being stopped, when every
    worker writes at once."""
    for attempt in range(3):
        try:
            logger.set_tags(tags)
            logger.client.set_terminated(logger.run_id, status)
            return
        except Exception as exc:
            if attempt == 2 or storage_fault(exc):  # a full disk does not clear in seconds
                raise
            time.sleep(1.0 + attempt)
