"""The one-command pipeline: stages, MLflow runs, lineage, resume after SIGKILL and Ctrl+C, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.cli import main
from search.pipeline import STATE_FILE, load_pipeline
from search.tracking import KEY_TAG, Tracking, default_uri
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_config(
    tmp_path_factory: pytest.TempPathFactory,
    demo_data: dict[str, Path],
    segmentation_set_writer,
    tiny_study_factory,
) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    segmentation = segmentation_set_writer(folder / "tiny-seg")
    config = tiny_study_factory(folder / "results", demo_data["mnist"], demo_data["brain"], segmentation)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_study(study_config: Path, ray_session) -> Path:
    """The study run once, uninterrupted, with the test session's Ray."""
    assert main(["pipeline", "--config", str(study_config), "--name", "uninterrupted"]) == 0
    return study_config.parent / "results" / "uninterrupted"


def _tracking(folder: Path) -> Tracking:
    return Tracking(default_uri(folder), f"medseg/{folder.name}", None, str(folder))


def _selected(folder: Path) -> list[tuple[str, str, int]]:
    entries = json.loads((folder / "selection.json").read_text())["selected"]
    return sorted((e["recipe"], e["kind"], e["epoch"]) for e in entries)


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(d for d in experiment.iterdir() if (d / "result.json").exists())


def _assert_one_finished_run_per_trial_with_lineage(folder: Path) -> None:
    tracking = _tracking(folder)
    runs = tracking.runs()
    keys = Counter(r.data.tags[KEY_TAG] for r in runs)
    assert max(keys.values()) == 1, keys  # no duplicate run for any trial, stage or the pipeline
    assert {r.info.status for r in runs} == {"FINISHED"}
    pretraining = {r.data.tags[KEY_TAG].split("/")[1]: r for r in tracking.runs("pretrain")}
    downstream = tracking.runs("downstream")
    assert len(pretraining) == len(_trial_dirs(folder / "pretrain"))
    assert len(downstream) == len(_trial_dirs(folder / "downstream"))
    for run in pretraining.values():
        epochs = [m.step for m in tracking.client.get_metric_history(run.info.run_id, "robustness")]
        assert sorted(epochs) == list(range(1, len(epochs) + 1)), epochs  # continuous, no duplicate step
        assert run.data.tags["medseg.stop_reason"] and run.data.tags["medseg.peak_epoch"]
        assert [a.path for a in tracking.client.list_artifacts(run.info.run_id)] == ["score_curve.png"]
    for run in downstream:
        tags = run.data.tags
        source = pretraining[tags["medseg.source.trial_id"]]
        assert tags["medseg.source.run_id"] == source.info.run_id  # the lineage resolves
        assert tags["medseg.source.kind"] in ("peak", "final")
        epoch = int(tags["medseg.source.epoch"])
        scores = tracking.client.get_metric_history(source.info.run_id, "robustness")
        assert float(tags["medseg.source.score"]) == pytest.approx(
            next(m.value for m in scores if m.step == epoch)
        )
        assert "test_dice_mean" in run.data.metrics
        assert tags["mlflow.parentRunId"] == tracking.find("stage/downstream").info.run_id


def test_stage_configs_can_be_inline_or_files_beside_the_pipeline_config(
    tmp_path: Path, demo_data: dict[str, Path], tiny_segmentation_set: Path, tiny_study_factory
) -> None:
    inline = tiny_study_factory(
        tmp_path / "results", demo_data["mnist"], demo_data["brain"], tiny_segmentation_set
    )
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(inline["pretrain"]))
    (tmp_path / "down.yaml").write_text(yaml.safe_dump(inline["downstream"]))
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump({**inline, "pretrain": "pre.yaml", "downstream": "down.yaml"})
    )
    from_files = load_pipeline(tmp_path / "study.yaml")
    assert from_files.resolved() == load_pipeline(None, raw=inline).resolved()
    assert from_files.pretrain.path == tmp_path / "results" / "study" / "pretrain"
    overridden = load_pipeline(tmp_path / "study.yaml", ["pretrain.pretrain.epochs=7", "retries=3"])
    assert overridden.pretrain.config.pretrain.epochs == 7 and overridden.config.retries == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": 1}, "stages"),
        ({"name": "a/b"}, "folder name"),
        ({"retries": -1}, "retries"),
        ({"select": {"top_k": 0}}, "top_k"),
        ({"storage_path": "s3://bucket/results"}, "mount the bucket"),
    ],
)
def test_bad_pipeline_configs_are_refused_on_one_line(
    tmp_path: Path,
    demo_data: dict[str, Path],
    tiny_segmentation_set: Path,
    tiny_study_factory,
    change: dict,
    message: str,
) -> None:
    raw = tiny_study_factory(tmp_path, demo_data["mnist"], demo_data["brain"], tiny_segmentation_set) | change
    with pytest.raises(ConfigError, match=message) as caught:
        load_pipeline(None, raw=raw)
    assert "\n" not in str(caught.value)


def test_bad_stage_configs_are_refused_before_anything_starts(
    tmp_path: Path, demo_data: dict[str, Path], tiny_segmentation_set: Path, tiny_study_factory
) -> None:
    raw = tiny_study_factory(tmp_path, demo_data["mnist"], demo_data["brain"], tiny_segmentation_set)
    raw["downstream"]["finetune"]["epoch"] = 3
    with pytest.raises(ConfigError, match="epoch"):
        load_pipeline(None, raw=raw)
    raw = tiny_study_factory(tmp_path, demo_data["mnist"], demo_data["brain"], tiny_segmentation_set)
    raw["pretrain"]["pretrain"]["model"] = 5
    with pytest.raises(ConfigError, match="model"):
        load_pipeline(None, raw=raw)
    assert not list(tmp_path.glob("study/*"))  # nothing was started


@pytest.mark.integration
@pytest.mark.slow
def test_pipeline_runs_every_stage_and_tracks_every_trial(finished_study: Path, capsys) -> None:
    state = json.loads((finished_study / STATE_FILE).read_text())["stages"]
    assert {stage: info["status"] for stage, info in state.items()} == dict.fromkeys(
        ("pretrain", "select", "downstream", "report"), "done"
    )
    assert len(_trial_dirs(finished_study / "pretrain")) == 2
    assert len(_trial_dirs(finished_study / "downstream")) == len(_selected(finished_study))
    _assert_one_finished_run_per_trial_with_lineage(finished_study)
    report = (finished_study / "report" / "report.md").read_text()
    assert "Spearman" in report and "saved" in report
    assert (finished_study / "report" / "dice_vs_score.png").stat().st_size > 0
    environment = json.loads((finished_study / "environment.json").read_text())
    assert len(environment["datasets"]) == 3 and environment["packages"]["ray"].startswith("2.")
    tracking = _tracking(finished_study)
    pipeline_run = tracking.find("pipeline").info.run_id
    artifacts = {a.path for a in tracking.client.list_artifacts(pipeline_run)}
    assert {"environment.json", "medseg-config.yaml", "report"} <= artifacts

    capsys.readouterr()
    assert main(["status", str(finished_study)]) == 0
    status = capsys.readouterr().out
    assert "stage report: done" in status and "all stages done" in status and "2 terminated" in status

    # a rerun of a finished pipeline redoes nothing
    assert main(["pipeline", "--config", str(finished_study.parent.parent / "study.yaml"),
                 "--name", "uninterrupted"]) == 0  # fmt: skip
    assert "resuming pipeline" in capsys.readouterr().out
    assert len(_tracking(finished_study).runs()) == len(tracking.runs())


@pytest.mark.integration
@pytest.mark.slow
def test_a_changed_config_is_refused_with_its_keys_unless_new(finished_study: Path, capsys) -> None:
    config = str(finished_study.parent.parent / "study.yaml")
    capsys.readouterr()
    changed = ["--name", "uninterrupted", "--set", "downstream.finetune.epochs=5"]
    assert main(["pipeline", "--config", config, *changed]) == 2
    assert "downstream.finetune.epochs" in capsys.readouterr().err


def _driver(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search", "pipeline", "--config", str(config)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop_when(driver: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float = 300) -> str:
    """Send ``sig`` to the driver once ``ready()``; its output. Cleans up what a killed driver leaves."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert driver.poll() is None, f"the pipeline ended before the signal:\n{driver.stdout.read()}"
            assert time.monotonic() < deadline, "the pipeline did not get there in time"
            time.sleep(0.1)
        driver.send_signal(sig)
        output, _ = driver.communicate(timeout=180)
        return output
    finally:
        time.sleep(1)
        try:  # the Ray processes a SIGKILLed driver leaves behind
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _epochs(experiment: Path) -> list[int]:
    return [len(p.read_text().splitlines()) for p in experiment.glob("*/result.json")]


def _stage_done(folder: Path, stage: str) -> bool:
    state = folder / STATE_FILE
    return state.exists() and json.loads(state.read_text())["stages"].get(stage, {}).get("status") == "done"


@pytest.mark.integration
@pytest.mark.slow
def test_pipeline_killed_and_interrupted_then_rerun_ends_like_an_uninterrupted_one(
    finished_study: Path, study_config: Path, capsys
) -> None:
    folder = study_config.parent / "results" / "study"

    # Ctrl+C during pretraining: Tune's fit() returns; the pipeline says so and exits non-zero
    output = _stop_when(_driver(study_config), lambda: min(_epochs(folder / "pretrain"), default=0) >= 1,
                        signal.SIGINT)  # fmt: skip
    assert "interrupted" in output and "rerun the same command" in output, output
    assert not _stage_done(folder, "pretrain")

    # SIGKILL during pretraining (once the rerun has reported two more epochs), then during downstream
    target = min(sum(_epochs(folder / "pretrain")) + 2, 6)  # of 2 trials x 4 epochs
    _stop_when(_driver(study_config), lambda: sum(_epochs(folder / "pretrain")) >= target, signal.SIGKILL)
    assert not _stage_done(folder, "pretrain")
    downstream = folder / "downstream"
    _stop_when(_driver(study_config), lambda: max(_epochs(downstream), default=0) >= 1, signal.SIGKILL)
    assert _stage_done(folder, "select") and not _stage_done(folder, "downstream")

    capsys.readouterr()
    assert main(["pipeline", "--config", str(study_config)]) == 0
    assert "resuming pipeline" in capsys.readouterr().out

    assert _selected(folder) == _selected(finished_study)
    assert len(_trial_dirs(folder / "pretrain")) == len(_trial_dirs(finished_study / "pretrain"))
    assert len(_trial_dirs(downstream)) == len(_trial_dirs(finished_study / "downstream"))
    _assert_one_finished_run_per_trial_with_lineage(folder)
    assert len(_tracking(folder).runs()) == len(_tracking(finished_study).runs())


@pytest.mark.integration
@pytest.mark.slow
def test_resume_continues_from_the_saved_config_alone(finished_study: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["resume", str(finished_study)]) == 0
    assert "resuming pipeline" in capsys.readouterr().out
    assert main(["resume", str(finished_study.parent)]) == 2
    assert "medseg-config.yaml" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
def test_export_gives_plain_encoders_and_unets_that_predict_masks(
    finished_study: Path, study_config: Path, tmp_path: Path
) -> None:
    import nibabel as nib
    import numpy as np
    import timm
    from PIL import Image
    from safetensors.torch import load_file

    exported = tmp_path / "exported"
    assert main(["export", str(finished_study), "--out", str(exported)]) == 0
    encoders = sorted((exported / "encoders").glob("*.safetensors"))
    assert len(encoders) == len(_selected(finished_study))
    for path in encoders:
        spec = json.loads(path.with_suffix(".json").read_text())
        model = timm.create_model(spec["encoder"], num_classes=spec["num_classes"])
        model.load_state_dict(load_file(str(path)))  # strict: a plain timm state_dict
        assert spec["kind"] in ("peak", "final") and spec["epoch"] >= 1
    unets = sorted((exported / "unets").glob("*.json"))
    assert len(unets) == len(_trial_dirs(finished_study / "downstream"))

    images = study_config.parent / "tiny-seg" / "imagesTs"
    masks = tmp_path / "masks"
    assert main(["predict", "--model", str(unets[0]), "--input", str(images), "--out", str(masks)]) == 0
    written = sorted(masks.glob("*_mask.png"))
    assert len(written) == 3
    mask = np.asarray(Image.open(written[0]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}

    volume = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    affine = np.diag([-1.5, 1.5, 4.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "scan.nii.gz")
    assert main(["predict", "--model", str(unets[0]), "--input", str(tmp_path / "scan.nii.gz"),
                 "--out", str(masks)]) == 0  # fmt: skip
    predicted = nib.load(masks / "scan_mask.nii.gz")
    assert predicted.shape == volume.shape and np.allclose(predicted.affine, affine)


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([1.0, 1.0, 1.0, 1.0]),
        np.diag([-0.8, 0.8, 3.0, 1.0]),  # LAS
        np.array([[0, 0, -2.0, 10], [-1.0, 0, 0, 5], [0, 1.0, 0, -3], [0, 0, 0, 1]]),  # permuted axes
    ],
    ids=["ras", "flipped", "permuted"],
)
def test_volumes_are_predicted_slice_by_slice_and_written_back_in_their_own_orientation(
    tmp_path: Path, monkeypatch, affine
) -> None:
    """A pointwise stand-in for the U-Net: the mask must land on exactly the input's voxels."""
    import nibabel as nib
    import torch

    import search.export as export
    from trainables.data.cases import scale_to_unit

    spec = {"image_size": 16, "resize": "none", "mean": [0.0], "std": [1.0], "in_channels": 1,
            "slice_axis": 2}  # fmt: skip
    seen_shapes = []

    def threshold(unet, slices, precision, **settings):
        seen_shapes.append(slices.shape)
        return (slices > 0.5).astype(np.int64)

    monkeypatch.setattr(export, "load_exported", lambda model: (torch.nn.Identity(), spec))
    monkeypatch.setattr(export, "predict", threshold)
    volume = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "case.nii")
    (written,) = export.predict_files("unused.json", [str(tmp_path / "case.nii")], tmp_path / "out", "cpu")
    mask = nib.load(written)
    assert np.array_equal(np.asarray(mask.dataobj), scale_to_unit(volume) > 0.5)
    assert np.allclose(mask.affine, affine)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(volume, affine)).shape
    assert seen_shapes == [(canonical[2], canonical[0], canonical[1])]  # axial slices of the RAS volume


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(url: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.integration
@pytest.mark.slow
def test_ui_serves_every_run_of_the_pipeline_on_localhost(finished_study: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "search", "ui", str(finished_study), "--port", str(port)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        assert server.stdout.readline().strip() == f"MLflow UI at http://127.0.0.1:{port} (Ctrl+C to stop)"
        deadline = time.monotonic() + 120
        while True:
            try:
                experiments = _post(f"{api}/experiments/search", {"max_results": 10})["experiments"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the MLflow UI did not start"
                time.sleep(1)
        (experiment,) = [e for e in experiments if e["name"] == "medseg/uninterrupted"]
        runs = _post(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == len(_tracking(finished_study).runs())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_ui_needs_the_folder_of_a_tracked_pipeline(tmp_path: Path, capsys) -> None:
    assert main(["ui", str(tmp_path)]) == 2
    assert "mlflow.db" in capsys.readouterr().err
