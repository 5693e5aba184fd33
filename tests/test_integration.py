"""A real 2-trial Ray Tune search on the demo data (tiny model, few batches per epoch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from search.cli import main
from trainables.checkpoints import load_training_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 2


@pytest.fixture
def config_file(make_config) -> Path:
    return make_config(
        "it",
        pretrain__epochs=EPOCHS,
        tune={"grid": {"pretrain.recipe": ["simple", "advanced"]}, "cpus_per_trial": 1},
    )


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(d for d in experiment.iterdir() if (d / "result.json").exists())


def test_two_trial_search_reports_robustness_and_a_checkpoint_every_epoch(
    config_file, ray_session, capsys
) -> None:
    assert main(["pretrain", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    experiment = config_file.parent / "results" / "it"
    trials = _trial_dirs(experiment)
    assert len(trials) == 2
    assert {"recipe=simple", "recipe=advanced"} == {t.name.split("_")[1] for t in trials}
    for trial in trials:
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
        assert all(math.isfinite(r["robustness"]) and math.isfinite(r["val_top1"]) for r in rows)
        checkpoints = sorted(trial.glob("checkpoint_*"))
        assert [load_training_state(c)["epoch"] for c in checkpoints] == list(range(1, EPOCHS + 1))
        assert f"epoch {EPOCHS}/{EPOCHS}" in out
    assert (experiment / "medseg-config.yaml").exists()
    assert str(experiment) in out

    # The same command again finds the finished experiment and re-runs nothing.
    assert main(["pretrain", "--config", str(config_file)]) == 0
    assert "resuming experiment" in capsys.readouterr().out
    for trial in trials:
        assert len((trial / "result.json").read_text().splitlines()) == EPOCHS

    # A changed config is refused with the list of changed keys.
    assert main(["pretrain", "--config", str(config_file), "--set", "pretrain.lr=0.01"]) == 2
    assert "changed: pretrain.lr" in capsys.readouterr().err


def test_a_trial_stopped_by_bad_input_fails_on_one_line_and_the_others_finish(
    small_imagenet, make_config, ray_session, capsys
) -> None:
    broken = sorted((small_imagenet / "train" / "digit_0").iterdir())[0]
    broken.write_bytes(b"not an image")
    path = make_config(
        "bad-image",
        classification__root=str(small_imagenet),
        pretrain__epochs=1,
        pretrain__batch_size=8,
        pretrain__warmup_epochs=0,
        pretrain__train_batches_per_epoch=None,
        pretrain__val_batches=None,
        score__n_images=4,
        tune={"grid": {"classification.on_bad_image": ["skip", "error"]}},
    )
    assert main(["pretrain", "--config", str(path)]) == 1
    summary = capsys.readouterr().out.split("\ntrial ", 1)[1].splitlines()
    skipped = next(line for line in summary if line.startswith("resnet10t_on_bad_image=skip"))
    failed = next(line for line in summary if "on_bad_image=error" in line)
    assert skipped.split()[1:3] == ["1", "max_epochs"]  # finished its only epoch
    assert failed.startswith("ERROR in resnet10t_on_bad_image=error")
    assert f": DataError: unreadable image {broken}" in failed
