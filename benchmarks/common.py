"""Shared pieces of the benchmarks: options, timing with repeats, statistics, tables, JSON, the machine.

Every benchmark repeats what it measures and reports min / median / max,
because the machines are shared and noisy; comparisons run interleaved in the
same process (A, B, A, B ...) so that a load spike hits both sides. Nothing
here asserts on time.

Importing this module imports no Ray, no pydantic and no driver code (the GPU
script uses it on a machine without them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_WORK_DIR = REPO / "results" / "benchmarks"

#: Environment every benchmark process (and its subprocesses) runs with: no hub lookups, no PyPI
#: version checks, no Ray usage reports.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


@dataclass(frozen=True)
class Options:
    """What every benchmark takes: the grid (quick or full), threads, repeats and folders."""

    full: bool = False
    threads: int = 2
    repeats: int | None = None  # None: each benchmark's own default for the grid
    work_dir: Path = DEFAULT_WORK_DIR
    results_dir: Path = RESULTS_DIR

    @property
    def grid(self) -> str:
        return "full" if self.full else "quick"

    def result_path(self, name: str, suffix: str = ".json") -> Path:
        """``<results_dir>/<name>.json`` for the quick grid, ``<name>-full.json`` for the full one."""
        return self.results_dir / f"{name}{'-full' if self.full else ''}{suffix}"

    def repeats_or(self, quick: int, full: int) -> int:
        """The repeat count: the user's, else the benchmark's default for this grid."""
        return self.repeats if self.repeats is not None else (full if self.full else quick)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true", help="the whole grid (hours on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads / CPUs per trial (default 2)")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default: per benchmark)")
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK_DIR, help=f"scratch folder (default {DEFAULT_WORK_DIR})"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"where JSON goes (default {RESULTS_DIR})"
    )


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        full=args.full,
        threads=args.threads,
        repeats=args.repeats,
        work_dir=args.work_dir.resolve(),
        results_dir=args.results_dir.resolve(),
    )


def parse_options(description: str, argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=description)
    add_options(parser)
    return options_from(parser.parse_args(argv))


@dataclass(frozen=True)
class Stats:
    """min / median / max of repeated measurements."""

    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("no samples to summarise")
        return cls(min(samples), statistics.median(samples), max(samples), len(samples))

    def as_dict(self) -> dict[str, float]:
        return {"min": self.min, "median": self.median, "max": self.max, "n": self.n}

    def show(self, digits: int = 2, unit: str = "") -> str:
        """``median (min–max)``."""
        return f"{self.median:.{digits}f}{unit} ({self.min:.{digits}f}–{self.max:.{digits}f})"


def ratio(numerator: Stats, denominator: Stats) -> float:
    """Ratio of medians."""
    return numerator.median / denominator.median


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Time each variant ``repeats`` times, interleaved, rotating the order every round.

    Returns the seconds per variant and the value each variant returned in its
    first round.
    """
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, Any] = {}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            value = variants[name]()
            seconds[name].append(time.perf_counter() - started)
            values.setdefault(name, value)
    return seconds, values


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(threads: int | None = None) -> dict[str, Any]:
    """What the numbers were measured on (the load average says how shared the machine was)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": cores,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": load_average(),
    }
    for package in ("timm", "torchvision", "ray", "segmentation-models-pytorch"):
        try:  # metadata only: nothing is imported
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def write_result(name: str, options: Options, payload: dict[str, Any], wall_s: float) -> Path:
    """:meth:`Options.result_path`: the machine, the grid, the wall time and the measurements."""
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = options.result_path(name)
    document = {
        "benchmark": name,
        "grid": options.grid,
        "threads": options.threads,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_s": round(wall_s, 1),
        "machine": machine(options.threads),
        **payload,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def print_section(title: str, body: str) -> None:
    print(f"\n### {title}\n\n{body}\n", flush=True)


def run_benchmark(
    name: str,
    doc: str,
    run: Callable[[Options], dict[str, Any]],
    tables: Callable[[dict[str, Any]], str],
    title: Callable[[Options], str],
    argv: Sequence[str] | None,
) -> dict[str, Any]:
    """A benchmark module's ``main``: parse the options (described by the first line of ``doc``), run,
    write ``results/<name>.json`` and print the tables under ``title``."""
    options = parse_options(doc.splitlines()[0], argv)
    started = time.perf_counter()
    result = run(options)
    write_result(name, options, result, time.perf_counter() - started)
    print_section(title(options), tables(result))
    return result


def subprocess_env() -> dict[str, str]:
    """The environment for command-line runs: offline, with the repository importable."""
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def demo_data(options: Options) -> dict[str, Path]:
    """The real demo sets (MNIST in ImageNet layout, the MNI152 brain), written once into the work dir."""
    from search.demo_data import materialise

    cache = options.work_dir / "demo-data"
    return {
        "mnist": materialise("demo://mnist", cache),
        "brain": materialise("demo://mni152-brain", cache),
    }
