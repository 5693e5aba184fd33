"""``medseg-search pipeline``: the whole study, resumable, tracked in MLflow.

Stages: pretraining search with peak stopping -> selection -> downstream
search and test -> report. Everything lives in ``<storage_path>/<name>/``:
``pretrain/`` and ``downstream/`` (Tune experiments), ``selection.json``,
``report/``, ``environment.json``, ``pipeline.json`` (which stages are done)
and, by default, ``mlflow.db``.

Running the same command again after a crash, a Ctrl+C or a SIGKILL resumes:
finished stages are not redone, unfinished trials continue from their last
checkpoints (``Tuner.restore``), finished trials are not re-run. A stage whose
trials failed is retried (its failed trials run again) on up to ``retries``
reruns; after that the pipeline goes on with the trials that finished. After
a Ctrl+C, Tune's ``fit()`` returns as if done: the pipeline checks for
unfinished trials, says it was interrupted and exits non-zero instead of
going on with partial results.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from search.config import (
    CONFIG_FILE,
    NAME_PATTERN,
    Experiment,
    load_experiment,
    parse_overrides,
    read_yaml,
    set_dotted,
)
from search.downstream_config import DownstreamConfig, DownstreamExperiment, load_downstream, plain
from search.experiments import save_or_compare, unfinished_trials
from search.progress import print_line
from search.tracking import MlflowTracker, Tracking, default_uri
from trainables.errors import MedsegError
from trainables.settings import Bool, Int, absolute_path, validate

STATE_FILE = "pipeline.json"
STAGES = ("pretrain", "select", "downstream", "report")
_STRICT = ConfigDict(extra="forbid")


class Interrupted(MedsegError):
    """A stage stopped before its trials finished (Ctrl+C); rerunning the command resumes it."""

    exit_code = 130  # as for any program stopped by Ctrl+C


class StageFailed(MedsegError):
    """Trials of a stage failed; rerunning the command retries them."""


@dataclass(frozen=True, config=_STRICT)
class SelectSettings:
    """Which checkpoints go downstream (see ``medseg-search select``)."""

    top_k: Int = Field(default=1, ge=1)
    per_trial: Bool = True
    baselines: tuple[Literal["final", "best_accuracy"], ...] = ("final",)


@dataclass(frozen=True, config=_STRICT)
class PipelineConfig:
    """A study: the pretraining and downstream configs (inline, or paths to their YAML files)."""

    name: str
    pretrain: dict[str, Any]
    downstream: dict[str, Any]
    select: SelectSettings = Field(default_factory=SelectSettings)
    storage_path: str = "./results"
    tracking_uri: str | None = None
    retries: Int = Field(default=1, ge=0)
    ray_address: str | None = None  # "auto" or "HOST:6379": an existing cluster (--address wins)

    _storage = field_validator("storage_path")(absolute_path)

    @field_validator("storage_path")
    @classmethod
    def _mounted(cls, value: str) -> str:
        if "://" in value:
            raise ValueError(
                f"storage_path {value!r} is a URI: the pipeline keeps its state, manifest and MLflow "
                "database as files, so mount the bucket or share (NFS, s3fs, gcsfuse) at the same path "
                "on every node and give that path"
            )
        return value

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"name {value!r} becomes a folder name: use letters, digits, '_', '-' and '.'")
        return value


@plain_dataclass(frozen=True)
class Pipeline:
    """A validated study: its config and its validated pretraining experiment."""

    config: PipelineConfig
    pretrain: Experiment

    @property
    def path(self) -> Path:
        return Path(self.config.storage_path) / self.config.name

    @property
    def manifest_path(self) -> Path:
        return self.path / "selection.json"

    def resolved(self) -> dict[str, Any]:
        """The saved config. Not ``ray_address``: where a study runs is not what it is, so it may
        resume on another cluster."""
        resolved: dict[str, Any] = plain(self.config)
        del resolved["ray_address"]
        resolved["pretrain"] = self.pretrain.resolved()
        return resolved

    def downstream(self) -> DownstreamExperiment:
        raw = {**self.config.downstream, "name": "downstream", "storage_path": str(self.path)}
        return load_downstream(None, self.manifest_path, raw=raw, demo_dir=self.demo_dir)

    @property
    def demo_dir(self) -> Path:
        return Path(self.config.storage_path) / "demo-data"

    def tracking(self) -> Tracking:
        uri = self.config.tracking_uri or default_uri(self.path)
        return Tracking(uri, f"medseg/{self.config.name}", self.path / "mlflow-artifacts", str(self.path))


def _inline_sections(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for section in ("pretrain", "downstream"):
        if isinstance(data.get(section), str):
            data[section] = read_yaml(base / data[section])
    return data


def load_pipeline(
    path: str | Path | None,
    overrides: Iterable[str] = (),
    *,
    raw: Mapping[str, Any] | None = None,
    materialise_demo: bool = True,
) -> Pipeline:
    """Read (or take ``raw``), inline the stage configs, override, validate every stage's config.

    ``materialise_demo=False`` only validates (no demo data is written, no folder is made).
    """
    source = str(path) if path is not None else "pipeline config"
    data = copy.deepcopy(dict(raw)) if raw is not None else read_yaml(path)  # type: ignore[arg-type]
    data = _inline_sections(data, Path(path).parent if path is not None else Path.cwd())
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value)
    config: PipelineConfig = validate(PipelineConfig, data, source)
    folder = Path(config.storage_path) / config.name
    demo = Path(config.storage_path) / "demo-data"
    pretrain_raw = {**config.pretrain, "name": "pretrain", "storage_path": str(folder)}
    pretrain = load_experiment(raw=pretrain_raw, demo_dir=demo, materialise_demo=materialise_demo)
    validate(
        DownstreamConfig,
        {**config.downstream, "name": "downstream", "storage_path": str(folder)},
        f"{source} (downstream)",
    )
    return Pipeline(config, pretrain)


class PipelineState:
    """``pipeline.json``: per stage its status and attempts."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE
        self.data: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}
        )

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {"status": "pending", "attempts": 0})

    def done(self, name: str) -> bool:
        return self.stage(name)["status"] == "done"

    def set(self, name: str, **values: Any) -> None:
        self.stage(name).update(values)
        self.path.write_text(json.dumps(self.data, indent=2))


def _check_trials(
    path: Path,
    errors: dict[str, str],
    state: PipelineState,
    stage: str,
    retries: int,
    out: Callable[[str], None],
) -> None:
    """Stop the pipeline after an interruption, or after failures while retries remain."""
    unfinished = unfinished_trials(path)
    if unfinished:
        raise Interrupted(
            f"the {stage} stage was interrupted with {len(unfinished)} trial(s) unfinished: "
            "rerun the same command to resume it"
        )
    for trial, error in sorted(errors.items()):
        out(f"ERROR in {trial}: {error}")
    attempts = state.stage(stage)["attempts"]
    if errors and attempts <= retries:
        raise StageFailed(
            f"{len(errors)} {stage} trial(s) failed (attempt {attempts} of {retries + 1}): "
            "fix the cause if it is yours and rerun the same command to retry them"
        )


def run_pipeline(pipeline: Pipeline, *, out: Callable[[str], None] = print_line) -> int:
    """Run or resume every unfinished stage; 0 when all trials finished, 1 when some failed for good.

    Needs a Ray session. Raises :class:`Interrupted` or :class:`StageFailed`.
    """
    from search.downstream_search import run_downstream_search
    from search.environment import record
    from search.evaluation import evaluate_experiment, format_results
    from search.preflight import check_downstream, check_experiment
    from search.pretrain_search import run_pretrain_search
    from search.report import REPORT_FOLDER, build_report
    from search.selection import format_manifest, select, write_manifest

    folder = pipeline.path
    resumed = save_or_compare(folder, pipeline.resolved())
    out(f"{'resuming' if resumed else 'starting'} pipeline {folder}")
    state, tracking = PipelineState(folder), pipeline.tracking()
    pipeline_run = tracking.run("pipeline", pipeline.config.name, tags={"medseg.folder": str(folder)})
    if not (folder / "environment.json").exists():
        environment = record(
            [
                pipeline.pretrain.config.classification.root,
                *[t.root for t in pipeline.pretrain.config.score.targets],
            ]
        )
        (folder / "environment.json").write_text(json.dumps(environment, indent=2))
        tracking.log_artifacts(pipeline_run, [folder / "environment.json", folder / CONFIG_FILE])
        tracking.set_tags(
            pipeline_run,
            {
                "medseg.git_commit": environment["git_commit"] or "none",
                "medseg.gpus": ", ".join(environment["gpus"]) or "none",
            },
        )
    failed: dict[str, str] = {}

    def stage_run(name: str) -> str:
        return tracking.run(f"stage/{name}", name, parent=pipeline_run)

    if not state.done("pretrain"):
        check_experiment(pipeline.pretrain)
        state.set("pretrain", attempts=state.stage("pretrain")["attempts"] + 1)
        stage_run("pretrain")
        outcome = run_pretrain_search(
            pipeline.pretrain, out, [MlflowTracker(tracking, "pretrain", "stage/pretrain")]
        )
        _check_trials(pipeline.pretrain.path, outcome.errors, state, "pretrain", pipeline.config.retries, out)
        failed.update(outcome.errors)
        tracking.finish(stage_run("pretrain"))
        state.set("pretrain", status="done", finished=time.time())
    if not state.done("select"):
        settings = pipeline.config.select
        manifest = select(
            pipeline.pretrain.path,
            top_k=settings.top_k,
            per_trial=settings.per_trial,
            baselines=settings.baselines,
        )
        write_manifest(manifest, pipeline.manifest_path)
        out(format_manifest(manifest))
        run_id = stage_run("select")
        tracking.log_artifacts(run_id, [pipeline.manifest_path])
        tracking.finish(run_id)
        state.set("select", status="done", finished=time.time())
    downstream = pipeline.downstream()
    if not state.done("downstream"):
        check_downstream(downstream)
        _add_dataset(folder / "environment.json", downstream.config.data.root, tracking, pipeline_run)
        state.set("downstream", attempts=state.stage("downstream")["attempts"] + 1)
        stage_run("downstream")
        errors = run_downstream_search(
            downstream, out, [MlflowTracker(tracking, "downstream", "stage/downstream")]
        )
        _check_trials(downstream.path, errors, state, "downstream", pipeline.config.retries, out)
        failed.update(errors)
        results = evaluate_experiment(downstream.path, out=out)
        log_test_results(tracking, downstream.path, results)
        out(format_results(results))
        tracking.finish(stage_run("downstream"))
        state.set("downstream", status="done", finished=time.time())
    if not state.done("report"):
        report = build_report(pipeline.pretrain.path, downstream.path, folder / REPORT_FOLDER)
        tracking.log_artifacts(pipeline_run, sorted(report.parent.iterdir()), folder=REPORT_FOLDER)
        out(f"report: {report}")
        state.set("report", status="done", finished=time.time())
    tracking.finish_open_runs("FINISHED")
    out(f"\npipeline done: {folder}\nopen MLflow with: medseg-search ui {folder}")
    return 1 if failed else 0


def _add_dataset(environment_file: Path, root: str, tracking: Tracking, run_id: str) -> None:
    """Fingerprint the segmentation set too (it is known once the manifest exists)."""
    from search.environment import fingerprint

    environment = json.loads(environment_file.read_text())
    if root in {d["root"] for d in environment["datasets"]} or not Path(root).exists():
        return
    environment["datasets"].append(fingerprint(root))
    environment_file.write_text(json.dumps(environment, indent=2))
    tracking.log_artifacts(run_id, [environment_file])


def log_test_results(tracking: Tracking, downstream_dir: Path, results: list[dict[str, Any]]) -> None:
    """Test metrics, the per-case CSV and the overlays of each downstream trial, on its MLflow run."""
    for result in results:
        trial_dir = downstream_dir / result["trial"]
        labels = (
            json.loads((trial_dir / "history.json").read_text())
            if (trial_dir / "history.json").exists()
            else {}
        )
        found = tracking.find(f"downstream/{labels.get('trial_id')}")
        if found is None:
            continue
        run_id = found.info.run_id
        tracking.log_metrics(
            run_id, {k: v for k, v in result.items() if k.startswith("test_")}, int(result["epoch"])
        )
        tracking.set_tags(
            run_id,
            {"medseg.test_checkpoint_epoch": result["epoch"], "medseg.split_mode": result["split_mode"]},
        )
        tracking.log_artifacts(run_id, [trial_dir / "test_cases.csv", trial_dir / "test_metrics.json"])
        tracking.log_artifacts(run_id, sorted((trial_dir / "overlays").glob("*.png")), folder="overlays")
