"""MLflow tracking from the driver: one run per pipeline, per stage, and per trial, resume-safe.

Only the driver writes to MLflow (a Tune callback runs there), so the default
SQLite database in the experiment folder also serves a cluster; a team's
tracking server is a ``tracking_uri`` away. Runs are found again by a
``medseg.key`` tag (``pipeline``, ``stage/<stage>``, ``<stage>/<trial id>``),
so after any interruption and resume there is exactly one run per trial. A
resumed trial replays epochs after its last checkpoint; epochs already logged
are not logged again, so every metric history stays continuous. Ray's own
``MLflowLoggerCallback`` opens a duplicate run per resumed trial and leaves the
old one RUNNING, which is why it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ray import tune

KEY_TAG = "medseg.key"
PIPELINE_TAG = "medseg.pipeline"
MAX_PARAM_LENGTH = 500


def default_uri(folder: Path) -> str:
    """The SQLite database of an experiment folder (MLflow 3.17 refuses the old file store)."""
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted MLflow params (values as short strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class Tracking:
    """A pipeline's MLflow experiment. Holds only strings, so Tune can pickle callbacks that use it."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None, pipeline: str) -> None:
        self.uri, self.experiment, self.pipeline = uri, experiment, pipeline
        self.artifact_root = str(artifact_root.resolve()) if artifact_root else None
        self._client: Any = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_experiment_id": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                location = Path(self.artifact_root).as_uri() if self.artifact_root else None
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=location
                )
            else:
                self._experiment_id = found.experiment_id
        return str(self._experiment_id)

    def find(self, key: str) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{KEY_TAG}` = '{key}' and tags.`{PIPELINE_TAG}` = '{self.pipeline}'",
            max_results=1,
        )
        return runs[0] if runs else None

    def run(
        self, key: str, name: str, parent: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """The run id for ``key``: found again, or created (nested under ``parent``); RUNNING either way."""
        found = self.find(key)
        if found is not None:
            if found.info.status != "RUNNING":
                self.client.update_run(found.info.run_id, status="RUNNING")
            return str(found.info.run_id)
        all_tags = {KEY_TAG: key, PIPELINE_TAG: self.pipeline, **(tags or {})}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent
        created = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return str(created.info.run_id)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def last_step(self, run_id: str, metric: str = "epoch") -> int:
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=0)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_artifacts(self, run_id: str, paths: Iterable[Path], folder: str | None = None) -> None:
        for path in paths:
            if path.exists():
                self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def finish_open_runs(self, status: str = "FINISHED") -> int:
        """End every run of this pipeline still RUNNING; how many there were."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{self.pipeline}' and attributes.status = 'RUNNING'",
            max_results=10000,
        )
        for run in runs:
            self.client.set_terminated(run.info.run_id, status=status)
        return len(runs)

    def runs(self, stage: str | None = None) -> list[Any]:
        """Every run of this pipeline (of one stage's trials when ``stage`` is given)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{self.pipeline}'",
            max_results=10000,
        )
        if stage is None:
            return list(runs)
        return [r for r in runs if r.data.tags.get(KEY_TAG, "").startswith(f"{stage}/")]


class MlflowTracker(tune.Callback):
    """One nested MLflow run per trial of a stage: params = config, metrics by epoch, end status.

    ``on_complete`` tags (stop reason, peak) and artifacts are added by
    :func:`describe_trial`, given the trial's folder.
    """

    def __init__(self, tracking: Tracking, stage: str, parent_key: str) -> None:
        self.tracking, self.stage, self.parent_key = tracking, stage, parent_key
        self._runs: dict[str, str] = {}
        self._logged: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_logged": {}}

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            parent = self.tracking.find(self.parent_key)
            key = f"{self.stage}/{trial.trial_id}"
            existed = self.tracking.find(key) is not None
            run_id = self.tracking.run(
                key,
                str(trial),
                parent.info.run_id if parent else None,
                tags=lineage_tags(self.tracking, trial.config),
            )
            if not existed:
                self.tracking.log_params(run_id, flatten(trial.config))
            self._runs[trial.trial_id] = run_id
            self._logged[run_id] = self.tracking.last_step(run_id)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        run_id = self._run_id(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        if epoch <= self._logged[run_id]:
            return  # replayed after a restore: already in the history
        self.tracking.log_metrics(run_id, {k: v for k, v in result.items() if k != "config"}, epoch)
        self._logged[run_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        describe_trial(self.tracking, run_id, self.stage, Path(trial.path))
        self.tracking.finish(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.tracking.finish(self._run_id(trial), "FAILED")


def lineage_tags(tracking: Tracking, config: Mapping[str, Any]) -> dict[str, str]:
    """For a downstream trial: where its encoder came from (pretraining run, trial, epoch, score, kind)."""
    source = config.get("source")
    if not isinstance(source, Mapping):
        return {}
    tags = {
        "medseg.source.kind": str(source.get("kind")),
        "medseg.source.encoder": str(source.get("encoder")),
        "medseg.source.trial_id": str(source.get("trial_id") or ""),
        "medseg.source.epoch": str(source.get("epoch") if source.get("epoch") is not None else ""),
        "medseg.source.score": str(source.get("score") if source.get("score") is not None else ""),
    }
    if source.get("trial_id"):
        pretraining = tracking.find(f"pretrain/{source['trial_id']}")
        if pretraining is not None:
            tags["medseg.source.run_id"] = pretraining.info.run_id
    return tags


def describe_trial(tracking: Tracking, run_id: str, stage: str, trial_dir: Path) -> None:
    """Stage-specific tags and artifacts of a finished trial (pretraining: stop reason, peak, plot)."""
    if stage != "pretrain" or not trial_dir.is_dir():
        return
    from search.plots import plot_score_curve
    from search.selection import read_outcome

    outcome = read_outcome(trial_dir)
    if outcome is None:
        return
    peak_row = outcome.row(outcome.peak_epoch) if outcome.peak_epoch is not None else {}
    tracking.set_tags(
        run_id,
        {
            "medseg.stop_reason": outcome.stop_reason,
            "medseg.peak_epoch": outcome.peak_epoch if outcome.peak_epoch is not None else "",
            "medseg.peak_score": peak_row.get(outcome.metric, ""),
            "medseg.epochs_trained": outcome.epochs_trained,
        },
    )
    tracking.log_artifacts(run_id, [plot_score_curve(outcome, trial_dir / "score_curve.png")])
