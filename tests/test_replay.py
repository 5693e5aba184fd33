"""Replay of published curves: CSV parsing on files in the released format, and real Tune runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from search.cli import main
from search.replay import downstream_table, score_curves

EPOCHS = [0, 1, 5, 20, 50, 100, 150, 200, 250, 300]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "paper-results" / "results"

# level -2 of each encoder: a valley at epoch 50 (resnet50, deepest level 5) and 100 (swin, deepest 4)
VALLEY = {"resnet50": 50, "swin_transformer": 100}
DEEPEST = {"resnet50": 5, "swin_transformer": 4}


def _score(encoder: str, epoch: int) -> float:
    return 0.3 + abs(epoch - VALLEY[encoder]) / 1000


def _write_csvs(folder: Path) -> tuple[Path, Path]:
    scores = []
    for encoder, deepest in DEEPEST.items():
        for level in range(1, deepest + 1):
            for margin in (0.25, 0.5):
                for epoch in EPOCHS:
                    target = level == deepest - 1 and margin == 0.5
                    value = _score(encoder, epoch) if target else 0.9  # distractors never peak early
                    scores.append(
                        {
                            "dataset": "ACDC",
                            "metric": "cosine_distance",
                            "margin": margin,
                            "encoder": encoder,
                            "pretraining_scheme": "simple_training",
                            "pooled": True,
                            "level": level,
                            "pretraining_length": epoch,
                            "robustness": value,
                        }
                    )
    downstream = []
    for model in ("ResNet50 Attention U-Net", "Swin U-Net"):
        for epoch in EPOCHS:
            for frozen in (False, True):
                for seed, offset in ((1, -0.01), (2, 0.01)):
                    dice = 0.8 + epoch / 3000 + (0.05 if frozen else 0) + offset  # mean over seeds: no offset
                    downstream.append(
                        {
                            "model": model,
                            "dataset": "ACDC",
                            "pretraining length": epoch,
                            "ImageNet accuracy": epoch / 400,
                            "freeze encoder": frozen,
                            "pretraining scheme": "simple",
                            "seed": seed,
                            "dice index": 0.1,
                            "mean dice index": dice,
                        }
                    )
    scores_csv, downstream_csv = folder / "robustness_scores.csv", folder / "downstream_scores.csv"
    pd.DataFrame(scores).to_csv(scores_csv, index=False)
    pd.DataFrame(downstream).to_csv(downstream_csv, index=False)
    return scores_csv, downstream_csv


def test_curves_take_level_minus_two_per_encoder_and_leave_out_random_init(tmp_path: Path) -> None:
    scores_csv, _ = _write_csvs(tmp_path)
    curves = {
        c.encoder: c for c in score_curves(scores_csv, distance="cosine", margin=0.5, level=-2, pooled=True)
    }
    assert set(curves) == {"resnet50", "swin_transformer"}
    for encoder, curve in curves.items():
        assert curve.epochs == tuple(EPOCHS[1:])
        assert curve.values == tuple(_score(encoder, e) for e in EPOCHS[1:])
    with pytest.raises(Exception, match="no scores for distance=mse"):
        score_curves(scores_csv, distance="mse", margin=0.5, level=-2, pooled=True)


def test_downstream_dice_is_the_seed_mean_and_acdc_uses_mean_dice_index(tmp_path: Path) -> None:
    _, downstream_csv = _write_csvs(tmp_path)
    table = downstream_table(downstream_csv).set_index(["encoder", "dataset", "scheme", "frozen", "epoch"])
    assert table.loc[("resnet50", "ACDC", "simple_training", False, 300), "dice"] == pytest.approx(0.9)
    assert table.loc[("resnet50", "ACDC", "simple_training", True, 300), "dice"] == pytest.approx(0.95)
    assert 0 not in table.index.get_level_values("epoch")


@pytest.mark.integration
@pytest.mark.slow
def test_replay_reports_stop_and_chosen_epochs_with_their_dice(tmp_path: Path, ray_session, capsys) -> None:
    scores_csv, downstream_csv = _write_csvs(tmp_path)
    out = tmp_path / "report" / "replay.json"
    argv = [
        "replay",
        "--scores",
        str(scores_csv),
        "--downstream",
        str(downstream_csv),
        "--json",
        str(out),
        "--smoothing",
        "none",
        "--grace-period",
        "0",
        "--patience",
        "60",
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert len(report["settings"]) == 4
    for setting in report["settings"]:
        assert set(setting) >= {
            "encoder",
            "dataset",
            "scheme",
            "frozen",
            "stop_epoch",
            "chosen_epoch",
            "dice_chosen",
            "dice_300",
            "dice_best",
        }
        valley = VALLEY[setting["encoder"]]
        # the first report 60+ epochs after the valley: 150 after 50, 200 after 100
        assert (setting["chosen_epoch"], setting["stop_epoch"]) == (valley, {50: 150, 100: 200}[valley])
        frozen_bonus = 0.05 if setting["frozen"] else 0
        assert setting["dice_chosen"] == pytest.approx(0.8 + valley / 3000 + frozen_bonus)
        assert setting["dice_300"] == pytest.approx(0.9 + frozen_bonus)
        assert setting["dice_best"] == setting["dice_300"]
        assert setting["proxy_stop_epoch"] == 300  # accuracy keeps rising: the proxy never stops
    summary = report["summary"]
    assert summary["saved_fraction"] == pytest.approx(((300 - 150) + (300 - 200)) / 2 / 300)
    assert summary["regret_vs_oracle"] == pytest.approx(((300 - 50) + (300 - 100)) / 2 / 3000)
    assert summary["imagenet_top1_proxy"]["saved_fraction"] == 0
    plots = sorted((tmp_path / "report" / "replay_plots").glob("*.png"))
    assert [p.stem for p in plots] == [
        "resnet50_ACDC_simple_training",
        "swin_transformer_ACDC_simple_training",
    ]
    assert "pretraining saved" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="the paper's released CSVs are not beside the project")
def test_replay_runs_on_the_published_curves(tmp_path: Path, ray_session) -> None:
    out = tmp_path / "replay.json"
    argv = [
        "replay",
        "--scores",
        str(SHARED / "robustness_scores.csv"),
        "--downstream",
        str(SHARED / "downstream_scores.csv"),
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert len(report["settings"]) == 36  # 3 encoders x 3 datasets x 2 recipes x frozen/fine-tuned
    assert all(1 <= s["chosen_epoch"] <= s["stop_epoch"] <= 300 for s in report["settings"])
    assert all(
        math.isfinite(report["summary"][k])
        for k in ("saved_fraction", "dice_change_vs_300", "regret_vs_oracle")
    )
