"""The ``medseg-search`` command line (also ``python -m search``).

Every user error is one line on stderr (``medseg-search: error: ...``) and exit
status 2; failed trials give exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

from search import __version__
from trainables.errors import ConfigError, MedsegError
from trainables.peak import PeakRule


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, value parsed as YAML); repeatable",
    )
    parser.add_argument(
        "--name", help="experiment name (folder under storage_path); default: the config's name"
    )
    parser.add_argument(
        "--new",
        action="store_true",
        help="start a fresh experiment (timestamped name) instead of resuming the one with this name",
    )
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg-search",
        description="Pretrain timm encoders with Ray Tune and score their transferability to "
        "medical segmentation targets every epoch (arXiv 2410.18677).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pipeline = commands.add_parser(
        "pipeline",
        help="run (or resume) the whole study: pretrain, select, downstream, report",
        description="Pretraining search with peak stopping, selection, downstream search and test, report; "
        "tracked in MLflow. Rerunning the same command resumes where it stopped.",
    )
    _add_config_arguments(pipeline)
    pipeline.set_defaults(handler=_cmd_pipeline)

    resume = commands.add_parser(
        "resume",
        help="resume a pipeline from its saved config",
        description="Continue an interrupted pipeline from the config saved in its folder.",
    )
    resume.add_argument("experiment", metavar="EXPERIMENT_DIR")
    resume.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    resume.set_defaults(handler=_cmd_resume)

    status = commands.add_parser("status", help="where a pipeline or experiment stands")
    status.add_argument("experiment", metavar="EXPERIMENT_DIR")
    status.set_defaults(handler=_cmd_status)

    report = commands.add_parser("report", help="write the report of a pipeline (Markdown + PNG)")
    report.add_argument("experiment", metavar="EXPERIMENT_DIR")
    report.set_defaults(handler=_cmd_report)

    export = commands.add_parser("export", help="export the selected encoders and the best U-Nets")
    export.add_argument("experiment", metavar="EXPERIMENT_DIR")
    export.add_argument("--out", required=True, help="output folder")
    export.set_defaults(handler=_cmd_export)

    predict = commands.add_parser(
        "predict", help="masks for new images or NIfTI volumes with an exported U-Net"
    )
    predict.add_argument("--model", required=True, help="an exported U-Net (.json or .safetensors in unets/)")
    predict.add_argument(
        "--input", required=True, nargs="+", help="image or volume files, or folders of them"
    )
    predict.add_argument("--out", required=True, help="output folder for the masks")
    predict.add_argument("--device", default="auto", help="auto, cpu or cuda")
    predict.set_defaults(handler=_cmd_predict)

    ui = commands.add_parser("ui", help="open the MLflow UI of a pipeline")
    ui.add_argument("experiment", metavar="EXPERIMENT_DIR")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_cmd_ui)

    pretrain = commands.add_parser(
        "pretrain",
        help="run (or resume) a pretraining search",
        description="Run a Ray Tune search whose trials pretrain an encoder and report the robustness "
        "score on every target set after every epoch. Rerunning the same command resumes it.",
    )
    _add_config_arguments(pretrain)
    pretrain.set_defaults(handler=_cmd_pretrain)

    score = commands.add_parser(
        "score",
        help="score existing checkpoint files",
        description="Compute the robustness score of checkpoint files (ours, or plain timm state_dicts "
        "in .pth or .safetensors) on a target set, outside a search.",
    )
    score.add_argument("--model", required=True, help="timm model name the checkpoints were trained with")
    score.add_argument("--checkpoint", required=True, nargs="+", metavar="FILE", help="checkpoint file(s)")
    score.add_argument(
        "--target",
        required=True,
        help="target set: a YAML file (a target mapping, or a config whose score.targets is used) "
        "or a dataset folder in the generic layout (imagesTr/...)",
    )
    score.add_argument(
        "--level", type=int, default=-2, help="feature level counted from the deepest (default -2)"
    )
    score.add_argument("--distance", choices=["cosine", "mse", "pearson"], default="cosine")
    score.add_argument("--margin", type=float, default=0.5)
    score.add_argument(
        "--pooled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="global-average-pool the feature map (default) or flatten it",
    )
    score.add_argument(
        "--views",
        choices=["paper", "per_image"],
        default="paper",
        help="jitter drawn once per view for all images (paper) or per image",
    )
    score.add_argument("--n-images", type=int, default=256, help="target images to sample (default 256)")
    score.add_argument("--seed", type=int, default=0, help="seed of the image sample and the views")
    score.add_argument(
        "--image-size", type=int, help="resize target images to this size (default: timm's for the model)"
    )
    score.add_argument(
        "--normalize",
        choices=["imagenet", "scale_only"],
        help="normalisation (default: timm's mean/std for the model)",
    )
    score.add_argument("--device", default="auto", help="auto, cpu or cuda")
    score.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    score.set_defaults(handler=_cmd_score)

    select = commands.add_parser(
        "select",
        help="pick the peak checkpoints of a search",
        description="Write a selection manifest: the checkpoint at the peak of each selected trial "
        "(reported values only; the score is never recomputed), and optionally the paper's baselines.",
    )
    select.add_argument(
        "experiment", metavar="EXPERIMENT_DIR", help="the experiment folder (<storage_path>/<name>)"
    )
    select.add_argument("--top-k", type=int, default=1, help="the K trials with the best score at their peak")
    select.add_argument(
        "--per-trial", action="store_true", help="the peak of every trial (overrides --top-k)"
    )
    select.add_argument(
        "--baselines",
        nargs="+",
        default=[],
        choices=["final", "best_accuracy"],
        help="also the final-epoch and/or best-ImageNet-accuracy checkpoint of each selected trial",
    )
    select.add_argument("--out", help="manifest path (default: EXPERIMENT_DIR/selection.json)")
    select.set_defaults(handler=_cmd_select)

    downstream = commands.add_parser(
        "downstream",
        help="fine-tune U-Nets from a selection manifest, then test them",
        description="Run (or resume) a Ray Tune experiment whose trials fine-tune (or freeze) each selected "
        "encoder inside a U-Net on a medical segmentation set, then test the best checkpoint of every trial.",
    )
    downstream.add_argument("--manifest", required=True, help="selection manifest (medseg-search select)")
    _add_config_arguments(downstream)
    downstream.set_defaults(handler=_cmd_downstream)

    evaluate = commands.add_parser(
        "evaluate",
        help="test the best checkpoint of every downstream trial (idempotent)",
        description="Evaluate the best-by-validation checkpoint of every trial on the test split; "
        "trials already tested on the same checkpoint are skipped.",
    )
    evaluate.add_argument("experiment", metavar="EXPERIMENT_DIR")
    evaluate.add_argument("--force", action="store_true", help="test again even where results exist")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.set_defaults(handler=_cmd_evaluate)

    replay = commands.add_parser(
        "replay",
        help="judge the stopping rule on the paper's published curves",
        description="Replay every published robustness curve (and the ImageNet top-1 proxy) through a "
        "Tune experiment with the peak-stopping scheduler, and compare the chosen epochs' Dice with "
        "epoch 300 and with the best epoch.",
    )
    replay.add_argument("--scores", required=True, help="the paper's robustness_scores.csv")
    replay.add_argument("--downstream", required=True, help="the paper's downstream_scores.csv")
    replay.add_argument("--distance", choices=["cosine", "mse", "pearson"], default="cosine")
    replay.add_argument("--margin", type=float, default=0.5)
    replay.add_argument("--level", type=int, default=-2, help="feature level counted from the deepest")
    replay.add_argument("--pooled", action=argparse.BooleanOptionalAction, default=True)
    defaults = PeakRule()
    replay.add_argument("--smoothing", choices=["none", "ema", "mean"], default=defaults.smoothing)
    replay.add_argument("--alpha", type=float, default=defaults.alpha, help="EMA factor")
    replay.add_argument("--window", type=int, default=defaults.window, help="trailing-mean window (reports)")
    replay.add_argument(
        "--grace-period", type=int, default=defaults.grace_period, help="no stop before this epoch"
    )
    replay.add_argument("--patience", type=int, default=defaults.patience, help="epochs without improvement")
    replay.add_argument("--min-delta", type=float, default=defaults.min_delta)
    replay.add_argument(
        "--json", dest="json_path", metavar="FILE", help="write the report as JSON, plots beside it"
    )
    replay.add_argument("--storage-path", help="keep the Tune experiments here (default: a temporary folder)")
    replay.set_defaults(handler=_cmd_replay)
    return parser


def _run_pipeline(pipeline: Any, address: str | None) -> int:
    import signal

    from search.pipeline import Interrupted, run_pipeline
    from search.runtime import ray_session

    # a batch system or `ray job stop` ends a job with SIGTERM: stop like Ctrl+C, which Tune turns
    # into a saved, resumable experiment, instead of dying mid-snapshot
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        with ray_session(address or pipeline.config.ray_address):
            return run_pipeline(pipeline)
    except Interrupted:
        pipeline.tracking().finish_open_runs("KILLED")
        raise


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from search.pipeline import load_pipeline

    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    pipeline = load_pipeline(args.config, overrides)
    if args.new:
        pipeline = load_pipeline(
            args.config, overrides + [f"name={pipeline.config.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
        )
    return _run_pipeline(pipeline, args.address)


def _cmd_resume(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.config import CONFIG_FILE, read_yaml
    from search.pipeline import load_pipeline

    saved = Path(args.experiment) / CONFIG_FILE
    if not saved.exists():
        raise MedsegError(f"{args.experiment} holds no {CONFIG_FILE}: give the folder of a pipeline")
    return _run_pipeline(load_pipeline(None, raw=read_yaml(saved)), args.address)


def _cmd_status(args: argparse.Namespace) -> int:
    from search.status import describe

    print(describe(args.experiment))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.report import REPORT_FOLDER, build_report

    folder = Path(args.experiment).resolve()
    print(build_report(folder / "pretrain", folder / "downstream", folder / REPORT_FOLDER))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from search.export import export

    for path in export(args.experiment, args.out):
        print(path)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from search.export import predict_files

    for path in predict_files(args.model, args.input, args.out, args.device):
        print(path)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from search.tracking import default_uri

    folder = Path(args.experiment).resolve()
    if not (folder / "mlflow.db").exists():
        raise MedsegError(
            f"{folder} holds no mlflow.db: run a pipeline there first (or open your tracking server)"
        )
    print(f"MLflow UI at http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        default_uri(folder),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    return subprocess.call(command)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from search.config import load_experiment
    from search.preflight import check_experiment
    from search.pretrain_search import run_pretrain_search
    from search.runtime import ray_session
    from search.selection import format_outcomes

    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"name={args.name}")
    experiment = load_experiment(args.config, overrides)
    if args.new:
        stamped = f"{experiment.config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        experiment = load_experiment(args.config, overrides + [f"name={stamped}"])
    check_experiment(experiment)
    with ray_session(args.address):
        outcome = run_pretrain_search(experiment)
    print()
    print(format_outcomes(outcome.trials))
    for trial, error in sorted(outcome.errors.items()):
        print(f"ERROR in {trial}: {error}")
    print(f"\nresults, checkpoints and per-epoch metrics: {experiment.path}")
    print(f"select the peak checkpoints with: medseg-search select {experiment.path}")
    return 1 if outcome.errors else 0


def _cmd_downstream(args: argparse.Namespace) -> int:
    from search.downstream_config import load_downstream
    from search.downstream_search import run_downstream_search
    from search.evaluation import evaluate_experiment, format_results
    from search.preflight import check_downstream
    from search.runtime import ray_session

    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    experiment = load_downstream(args.config, args.manifest, overrides)
    if args.new:
        stamped = f"{experiment.config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        experiment = load_downstream(args.config, args.manifest, overrides + [f"name={stamped}"])
    check_downstream(experiment)
    with ray_session(args.address):
        errors = run_downstream_search(experiment)
    for trial, error in sorted(errors.items()):
        print(f"ERROR in {trial}: {error}")
    results = evaluate_experiment(experiment.path)
    print()
    print(format_results(results))
    print(f"\nresults, per-case test CSVs and checkpoints: {experiment.path}")
    return 1 if errors else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from search.evaluation import evaluate_experiment, format_results

    results = evaluate_experiment(args.experiment, force=args.force, device=args.device)
    print(format_results(results))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.selection import MANIFEST_FILE, format_manifest, select, write_manifest

    manifest = select(args.experiment, top_k=args.top_k, per_trial=args.per_trial, baselines=args.baselines)
    path = write_manifest(manifest, args.out or Path(args.experiment) / MANIFEST_FILE)
    print(format_manifest(manifest))
    print(f"\nselection manifest: {path}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from search.replay import replay
    from search.runtime import ray_session

    try:
        rule = PeakRule(
            smoothing=args.smoothing,
            alpha=args.alpha,
            window=args.window,
            grace_period=args.grace_period,
            patience=args.patience,
            min_delta=args.min_delta,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid rule parameters: {_first_line(exc)}") from None
    with ray_session():
        replay(
            args.scores,
            args.downstream,
            rule=rule,
            distance=args.distance,
            margin=args.margin,
            level=args.level,
            pooled=args.pooled,
            json_path=args.json_path,
            storage_path=args.storage_path,
        )
    return 0


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split("\n")[:3])


def _cmd_score(args: argparse.Namespace) -> int:
    from search.scoring import as_json_rows, format_table, load_target, score_checkpoints

    rows = score_checkpoints(
        args.model,
        args.checkpoint,
        load_target(args.target),
        n_images=args.n_images,
        sample_seed=args.seed,
        level=args.level,
        pooled=args.pooled,
        distance=args.distance,
        margin=args.margin,
        views=args.views,
        view_seed=args.seed,
        image_size=args.image_size,
        normalize=args.normalize,
        device=args.device,
    )
    print(json.dumps(as_json_rows(rows), indent=2) if args.json else format_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return int(args.handler(args))
    except MedsegError as exc:
        print(f"medseg-search: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medseg-search: interrupted", file=sys.stderr)
        return 130
