"""Run the CPU benchmark suite: ``python -m benchmarks [--full] [--only NAME ...]``.

Each benchmark runs in its own process (``python -m benchmarks.<name>``; a
failing one does not stop the others, but the suite then exits 1), prints its
table and writes ``benchmarks/results/<name>.json``. At the end the suite
prints every table again as one Markdown document, with the machine and the
wall times, and writes it to ``benchmarks/results/summary.md`` (and the wall
times to ``suite.json``; with ``--full``: ``<name>-full.json``,
``summary-full.md``, ``suite-full.json``).

The default (quick) grid is sized to finish in about 10 minutes on 2 idle
CPU cores; ``--full`` runs the whole grid of the issue (hours on 2 cores).
The GPU benchmark is separate: ``benchmarks/gpu.sh``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks.common import (
    REPO,
    Options,
    add_options,
    machine,
    markdown_table,
    options_from,
    subprocess_env,
)

#: name: (module, title), in the order they run.
BENCHMARKS = {
    "data_pipeline": ("benchmarks.data_pipeline", "Data pipeline: loader images/s"),
    "score": ("benchmarks.score", "Score cost: floor, ours, reference; share of an epoch"),
    "tune_overhead": ("benchmarks.tune_overhead", "Tune overhead: a Tune trial against the plain loop"),
    "resume": ("benchmarks.resume", "Resume after a SIGKILL of the driver"),
    "end_to_end": ("benchmarks.end_to_end", "End to end: the demo pipeline"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    args = parser.parse_args(argv)
    options = options_from(args)
    forwarded = [
        *(["--full"] if options.full else []),
        "--threads",
        str(options.threads),
        *(["--repeats", str(options.repeats)] if options.repeats is not None else []),
        "--work-dir",
        str(options.work_dir),
        "--results-dir",
        str(options.results_dir),
    ]
    names = args.only or list(BENCHMARKS)
    print(f"benchmarks ({options.grid} grid, {options.threads} threads): {', '.join(names)}", flush=True)
    suite_started = time.perf_counter()
    walls, failed = {}, []
    for name in names:
        module, _ = BENCHMARKS[name]
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", module, *forwarded], cwd=REPO, env=subprocess_env())
        walls[name] = time.perf_counter() - started
        if code != 0:
            failed.append(name)
            print(f"benchmark {name} FAILED (exit {code})", flush=True)
    total = time.perf_counter() - suite_started
    summary = summary_markdown(names, options, walls, total, failed)
    options.results_dir.mkdir(parents=True, exist_ok=True)
    options.result_path("summary", ".md").write_text(summary)
    options.result_path("suite").write_text(
        json.dumps(
            {
                "grid": options.grid,
                "threads": options.threads,
                "wall_s": {k: round(v, 1) for k, v in walls.items()},
                "total_s": round(total, 1),
                "failed": failed,
                "machine": machine(options.threads),
            },
            indent=2,
        )
        + "\n"
    )
    print("\n" + summary, flush=True)
    return 1 if failed else 0


def summary_markdown(
    names: Sequence[str], options: Options, walls: dict[str, float], total: float, failed: Sequence[str]
) -> str:
    """Every benchmark's table from its JSON, the machine and the wall times, as one Markdown document."""
    info = machine()
    parts = [
        f"## Benchmarks ({options.grid} grid)\n",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB, "
        f"{'GPU ' + info['cuda'] if info['cuda'] else 'no GPU'}; Python {info['python']}, "
        f"torch {info['torch']}, timm {info['timm']}, Ray {info['ray']}. The machine is shared: the load "
        f"average (1, 5, 15 min) at the end was {info['load_average']}, and each benchmark gives its own.\n",
    ]
    for name in names:
        module, title = BENCHMARKS[name]
        path = options.result_path(name)
        if name in failed or not path.exists():
            parts.append(f"### {title}\n\nFAILED: no result.\n")
            continue
        result = json.loads(path.read_text())
        tables = importlib.import_module(module).tables
        load = result["machine"].get("load_average")
        parts.append(
            f"### {title}\n\n{tables(result)}\n\n"
            f"({result['wall_s']:.0f} s; load average at the end {load}; `{path.relative_to(REPO)}`)\n"
            if path.is_relative_to(REPO)
            else f"### {title}\n\n{tables(result)}\n"
        )
    rows = [[name, f"{walls[name]:.0f}"] for name in names if name in walls]
    rows.append(["**total**", f"**{total:.0f}** ({total / 60:.1f} min)"])
    parts.append("### Wall time of the suite\n\n" + markdown_table(["benchmark", "wall s"], rows) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
