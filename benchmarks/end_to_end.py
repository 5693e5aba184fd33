"""Benchmark 5: wall time of the demo pipeline, and of each of its stages.

Runs ``python -m search pipeline --config configs/demo_pipeline.yaml`` as a
user does (a fresh study folder; the demo data already written once, which is
timed separately as "demo data"), and splits its wall time with the
``finished`` time every stage writes to ``pipeline.json`` and the moment the
driver prints ``starting pipeline``:

- **start-up**: imports, config validation, starting Ray;
- **pretrain**: the pretraining search (2 trials, peak stopping), with MLflow
  set-up and the environment record;
- **select**, **downstream** (8 U-Net trials in the demo, then the test step),
  **report**;
- **shutdown**: from the report to the process's exit (MLflow, Ray).

The quick grid runs a shortened demo (``--set`` overrides: pretraining 2
epochs of 16 micro-batches with 4 validation batches; downstream only the
peak checkpoints, fine-tuned, 1 epoch, so 2 U-Net trials; printed with the
results); the full grid runs the demo unchanged.

Run alone: ``python -m benchmarks.end_to_end [--full]``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    Options,
    Stats,
    demo_data,
    markdown_table,
    run_benchmark,
    subprocess_env,
)

QUICK_OVERRIDES = [
    "pretrain.pretrain.epochs=2",
    "pretrain.pretrain.train_batches_per_epoch=16",
    "pretrain.pretrain.val_batches=4",
    "downstream.finetune.epochs=1",
    "downstream.trials.kinds=[peak]",
    "downstream.trials.modes=[finetune]",
]
STAGES = ("pretrain", "select", "downstream", "report")
TIMEOUT_S = 1800


def run_pipeline(options: Options, name: str, overrides: list[str]) -> dict[str, Any]:
    """One pipeline run in a subprocess; the wall time of each stage."""
    folder = options.work_dir / name
    shutil.rmtree(folder, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "search",
        "pipeline",
        "--config",
        str(REPO / "configs" / "demo_pipeline.yaml"),
        "--set",
        f"storage_path={options.work_dir}",
        "--name",
        name,
        *[arg for override in overrides for arg in ("--set", override)],
    ]
    lines: list[tuple[float, str]] = []
    started_wall, started = time.time(), time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = process.wait(timeout=TIMEOUT_S)
    total = time.perf_counter() - started
    reader.join(timeout=10)
    log = folder.parent / f"{name}.log"
    log.write_text("\n".join(f"{t:8.1f}  {line}" for t, line in lines) + "\n")
    if code != 0:
        raise RuntimeError(f"the pipeline exited {code}; see {log}")
    return {"exit": code, "total_s": total, **_stages(folder, started_wall, lines, total)}


def _stages(
    folder: Path, started_wall: float, lines: list[tuple[float, str]], total: float
) -> dict[str, Any]:
    finished = json.loads((folder / "pipeline.json").read_text())["stages"]
    startup = next(
        (t for t, line in lines if line.startswith(("starting pipeline", "resuming pipeline"))), 0.0
    )
    seconds = {"start-up": startup}
    previous = startup
    for stage in STAGES:
        at = finished[stage]["finished"] - started_wall
        seconds[stage] = at - previous
        previous = at
    seconds["shutdown"] = total - previous
    return {"stages_s": seconds}


def run(options: Options) -> dict[str, Any]:
    repeats = options.repeats_or(quick=1, full=1)
    started = time.perf_counter()
    demo_data(options)  # written once; a first run of the demo pays this
    demo_data_s = time.perf_counter() - started
    overrides = [] if options.full else QUICK_OVERRIDES
    runs = []
    for index in range(repeats):
        print(f"end to end: pipeline run {index + 1}/{repeats} ...", flush=True)
        runs.append(run_pipeline(options, f"e2e-{options.grid}-{index}", overrides))
    names = ["start-up", *STAGES, "shutdown"]
    return {
        "repeats": repeats,
        "overrides": overrides,
        "configuration": "configs/demo_pipeline.yaml"
        + (" with --set " + " ".join(overrides) if overrides else ""),
        "demo_data_s_this_run": demo_data_s,
        "runs": runs,
        "summary": {
            "total_s": Stats.of([r["total_s"] for r in runs]).as_dict(),
            **{name: Stats.of([r["stages_s"][name] for r in runs]).as_dict() for name in names},
        },
    }


def tables(result: dict[str, Any]) -> str:
    summary = {key: Stats(**value) for key, value in result["summary"].items()}
    total = summary["total_s"].median
    rows = [
        [name, summary[name].show(1), f"{100 * summary[name].median / total:.0f}%"]
        for name in ["start-up", *STAGES, "shutdown"]
    ]
    rows.append(["**total**", f"**{summary['total_s'].show(1)}**", "100%"])
    written = result["demo_data_s_this_run"]
    data = (
        f"writing the demo data (once, before the first run) took {written:.1f} s"
        if written > 1
        else "the demo data was already written (it is written once, before the first run)"
    )
    note = f"\n{result['configuration']}; {result['repeats']} run(s); {data}."
    return markdown_table(["stage", "wall s", "share"], rows) + "\n" + note


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_benchmark(
        "end_to_end", __doc__ or "", run, tables, lambda o: f"End to end ({o.grid} grid)", argv
    )


if __name__ == "__main__":
    main()
