"""GPU benchmark: training throughput, the score's cost, GPU utilisation and peak memory, without Ray.

Run by ``benchmarks/gpu.sh`` (one process per part, each with a time limit);
each part writes ``<out>/gpu-<part>.json`` as soon as it has measured, so a
later part that fails or runs out of time loses nothing already measured.

Parts (defaults; ``--tiny`` shrinks everything for a CPU smoke test):

- ``synthetic``: pretraining images/s of resnet50 at 224 px, AMP (bf16 where
  supported, else fp16 with a grad scaler), channels_last, micro-batch 256,
  on synthetic ImageNet-sized batches already on the GPU: the product's loop
  (:func:`trainables.loops.train_epoch` with :class:`~trainables.loops.Precision`)
  against a plain PyTorch loop with the same model, optimizer (timm's AdamW),
  loss (cross-entropy, label smoothing 0.1) and batch;
- ``loader``: the same two loops fed by the product's loader
  (:func:`trainables.data.classification.make_loader`, simple recipe, pinned
  memory, one worker per core) from ImageNet-sized JPEGs written by
  :mod:`benchmarks.images`, and the loader alone;
- ``unet``: U-Net training images/s (``smp.Unet("tu-resnet50")`` via
  :func:`trainables.models.create_unet`, 4 classes, 224 px, batch 24, Dice
  loss, SGD momentum 0.9, AMP, channels_last): product loop against plain loop;
- ``score``: the robustness score of resnet50 on N = 256 images at 224 px with
  AMP: floor (2N forward passes to the scored level, inputs already on the
  GPU), ours (:class:`~trainables.transferability.RobustnessProbe`) and the
  reference (:mod:`benchmarks.reference_score`); results must agree within
  1e-5 (checked after the JSON is written). With the ``synthetic`` part's
  images/s, the score's share of an ImageNet epoch.

Every measurement is repeated (interleaved, ours and plain alternating) and
reported as min / median / max, with the ratio of medians, the GPU's
utilisation while it ran (``nvidia-smi`` sampled every 0.2 s, or
``torch.cuda.utilization``) and the peak memory torch allocated.

Usage: ``python -m benchmarks.gpu --part synthetic --out DIR`` (``--device
cpu --tiny`` to smoke-test on a CPU); ``--summary`` prints every part's table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import OFFLINE_ENV, Stats, machine, markdown_table

for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_TRAIN_IMAGES = 1_281_167
PARTS = ("synthetic", "unet", "score", "loader")
SCORE_TOLERANCE = 1e-5


class Sizes:
    """What each part measures; ``tiny`` for a CPU smoke test."""

    def __init__(self, tiny: bool) -> None:
        self.encoder = "resnet10t" if tiny else "resnet50"
        self.image_size = 64 if tiny else 224
        self.pretrain_batch = 8 if tiny else 256
        self.unet_batch = 4 if tiny else 24
        self.steps = 2 if tiny else 30
        self.warmup_steps = 1 if tiny else 10
        self.rounds = 2 if tiny else 3
        self.score_images = 16 if tiny else 256
        self.loader_images = 32 if tiny else 2048


class Utilisation:
    """Samples the GPU's utilisation (%) in a background thread while a block runs."""

    def __init__(self, device: torch.device, interval_s: float = 0.2) -> None:
        self.device, self.interval_s = device, interval_s
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        index = self.device.index or 0
        if self.source in (None, "torch.cuda.utilization"):
            try:
                value = float(torch.cuda.utilization(index))
                self.source = "torch.cuda.utilization"
                return value
            except Exception:  # pynvml missing: fall back to nvidia-smi
                if self.source is not None:
                    return None
        if shutil.which("nvidia-smi") is None:
            return None
        query = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu",
            "--format=csv,noheader,nounits",
            "-i",
            str(index),
        ]
        try:
            output = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
            self.source = "nvidia-smi"
            return float(output.strip().splitlines()[0])
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Utilisation:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"source": self.source, **Stats.of(self.samples).as_dict()}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> float:
    synchronise(device)
    started = time.perf_counter()
    fn()
    synchronise(device)
    return time.perf_counter() - started


def compare_loops(
    device: torch.device, loops: dict[str, Callable[[], Any]], rounds: int, images_per_call: int
) -> dict[str, Any]:
    """Images/s of each loop over ``rounds`` interleaved calls, GPU utilisation and peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    with Utilisation(device) as utilisation:
        for round_index in range(rounds):
            names = list(loops)
            names = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in names:
                rates[name].append(images_per_call / timed(device, loops[name]))
    stats = {name: Stats.of(values) for name, values in rates.items()}
    result: dict[str, Any] = {
        "images_per_s": {name: s.as_dict() for name, s in stats.items()},
        "gpu_utilisation_percent": utilisation.summary(),
        "peak_memory_gib": peak_memory(device),
    }
    if {"ours", "plain"} <= set(stats):
        result["ours_over_plain"] = stats["ours"].median / stats["plain"].median
    return result


def peak_memory(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    return {
        "allocated": torch.cuda.max_memory_allocated(device) / 2**30,
        "reserved": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def training_pair(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    precision: Any,
    batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, int]]],
    steps: int,
) -> dict[str, Callable[[], Any]]:
    """``steps`` optimizer steps through the product's loop, and through a plain PyTorch loop."""
    from trainables.loops import train_epoch

    scaler = precision.grad_scaler()

    def ours() -> None:
        train_epoch(
            model,
            batches(),
            compute_loss,
            optimizer,
            scaler,
            precision,
            accumulation_steps=1,
            updates=steps,
            on_update=lambda: None,
        )

    def plain() -> None:
        model.train()
        for images, targets, _ in itertools.islice(batches(), steps):
            images = images.to(precision.device, non_blocking=True)
            if precision.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(precision.device, non_blocking=True)
            with torch.autocast(
                precision.device.type, dtype=precision.amp_dtype, enabled=precision.amp_dtype is not None
            ):
                loss = compute_loss(model, images, targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    return {"ours": ours, "plain": plain}


def _precision(device: str) -> Any:
    from trainables.loops import Precision

    return Precision.choose(device, "auto", channels_last=True)


def _classifier(sizes: Sizes, precision: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    from timm.optim import create_optimizer_v2

    from trainables.models import create_classifier

    model = precision.prepare(create_classifier(sizes.encoder, num_classes=1000))
    optimizer = create_optimizer_v2(model, opt="adamw", lr=4e-3, weight_decay=0.05)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    return model, optimizer, lambda m, x, y: criterion(m(x), y)


def part_synthetic(sizes: Sizes, device: str) -> dict[str, Any]:
    precision = _precision(device)
    model, optimizer, loss = _classifier(sizes, precision)
    images = precision.to_device(torch.randn(sizes.pretrain_batch, 3, sizes.image_size, sizes.image_size))
    targets = torch.randint(0, 1000, (sizes.pretrain_batch,), device=precision.device)
    pair = training_pair(
        model, optimizer, loss, precision, lambda: itertools.repeat((images, targets, 0)), sizes.steps
    )
    training_pair(
        model, optimizer, loss, precision, lambda: itertools.repeat((images, targets, 0)), sizes.warmup_steps
    )["ours"]()
    result = compare_loops(precision.device, pair, sizes.rounds, sizes.steps * sizes.pretrain_batch)
    return {
        "what": f"pretraining {sizes.encoder} {sizes.image_size} px, batch {sizes.pretrain_batch}, "
        "synthetic batches on the device",
        **_precision_info(precision),
        **result,
    }


def part_loader(sizes: Sizes, device: str, work: Path) -> dict[str, Any]:
    from benchmarks.images import write_imagenet_like
    from trainables.data.classification import ImageFolderDataset, build_transforms, index_split, make_loader

    precision = _precision(device)
    root, source = write_imagenet_like(work / f"jpegs-{sizes.loader_images}", sizes.loader_images)
    train_tf, _ = build_transforms(
        image_size=sizes.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        rrc_scale=(0.8, 1.0),
        hflip=0.5,
        randaugment=None,
        random_erasing=0.0,
    )
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    loader = make_loader(
        ImageFolderDataset(index_split(root / "train").samples, train_tf, "error"),
        batch_size=sizes.pretrain_batch,
        train=True,
        num_workers=workers if precision.device.type == "cuda" else 0,
        pin_memory=precision.device.type == "cuda",
    )
    steps = len(loader)
    model, optimizer, loss = _classifier(sizes, precision)
    pair = training_pair(model, optimizer, loss, precision, lambda: iter(loader), steps)
    pair["ours"]()  # warm-up, one pass

    def loader_only() -> None:
        for _ in loader:
            pass

    result = compare_loops(
        precision.device, {**pair, "loader alone": loader_only}, sizes.rounds, steps * sizes.pretrain_batch
    )
    return {
        "what": f"pretraining {sizes.encoder} {sizes.image_size} px, batch {sizes.pretrain_batch}, "
        f"through the loader: {sizes.loader_images} JPEGs (500 x 375, from {source}), simple recipe, "
        f"{loader.num_workers} workers, one pass per measurement (workers restart every pass)",
        **_precision_info(precision),
        **result,
    }


def part_unet(sizes: Sizes, device: str) -> dict[str, Any]:
    from segmentation_models_pytorch.losses import DiceLoss

    from trainables.models import create_unet

    precision = _precision(device)
    classes = 4
    model = precision.prepare(create_unet(sizes.encoder, classes=classes, in_channels=3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    dice = DiceLoss("multiclass", from_logits=True)
    images = precision.to_device(torch.randn(sizes.unet_batch, 3, sizes.image_size, sizes.image_size))
    masks = torch.randint(
        0, classes, (sizes.unet_batch, sizes.image_size, sizes.image_size), device=precision.device
    )

    def loss(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return dice(m(x), y)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        return itertools.repeat((images, masks, 0))

    training_pair(model, optimizer, loss, precision, batches, sizes.warmup_steps)["ours"]()
    pair = training_pair(model, optimizer, loss, precision, batches, sizes.steps)
    result = compare_loops(precision.device, pair, sizes.rounds, sizes.steps * sizes.unet_batch)
    return {
        "what": f"U-Net (tu-{sizes.encoder}) training, {classes} classes, {sizes.image_size} px, "
        f"batch {sizes.unet_batch}, Dice loss, SGD",
        **_precision_info(precision),
        **result,
    }


def part_score(sizes: Sizes, device: str, out: Path) -> dict[str, Any]:
    from benchmarks.images import photo_batch
    from benchmarks.reference_score import reference_score
    from trainables.models import create_classifier
    from trainables.transferability import RobustnessProbe

    precision = _precision(device)
    level = -2
    model = precision.prepare(create_classifier(sizes.encoder, num_classes=1000)).eval()
    images = photo_batch(sizes.score_images, sizes.image_size)
    started = time.perf_counter()
    probe = RobustnessProbe(images, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    views_s = time.perf_counter() - started
    on_device = [precision.to_device(v) for v in probe.views]
    index = len(model.feature_info) + level

    @torch.no_grad()
    def floor() -> None:
        for view in on_device:
            for start in range(0, len(view), probe.batch_size):
                with precision.autocast():
                    model.forward_intermediates(
                        view[start : start + probe.batch_size],
                        indices=[index],
                        intermediates_only=True,
                        stop_early=True,
                    )

    values: dict[str, dict[str, float]] = {}

    def ours() -> None:
        values.setdefault("ours", probe.score(model, precision.device, precision.amp_dtype).as_metrics())

    def reference() -> None:
        values.setdefault(
            "reference",
            reference_score(
                model,
                images,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                level=level,
                device=precision.device,
                amp_dtype=precision.amp_dtype,
            ),
        )

    ours()  # warm-up
    seconds: dict[str, list[float]] = {"floor": [], "ours": [], "reference": []}
    calls = {"floor": floor, "ours": ours, "reference": reference}
    with Utilisation(precision.device) as utilisation:
        for round_index in range(sizes.rounds):
            names = list(calls)
            for name in names[round_index % 3 :] + names[: round_index % 3]:
                seconds[name].append(timed(precision.device, calls[name]))
    stats = {name: Stats.of(s) for name, s in seconds.items()}
    difference = max(abs(values["ours"][k] - values["reference"][k]) for k in values["ours"])
    result: dict[str, Any] = {
        "what": f"robustness score of {sizes.encoder}, N={sizes.score_images} at {sizes.image_size} px, "
        f"level {level}",
        **_precision_info(precision),
        "seconds": {name: s.as_dict() for name, s in stats.items()},
        "views_s_once": views_s,
        "ours_over_floor": stats["ours"].median / stats["floor"].median,
        "ours_over_reference": stats["ours"].median / stats["reference"].median,
        "max_abs_difference": difference,
        "equal_within_tolerance": difference <= SCORE_TOLERANCE,
        "gpu_utilisation_percent": utilisation.summary(),
        "peak_memory_gib": peak_memory(precision.device),
    }
    synthetic = out / "gpu-synthetic.json"
    if synthetic.exists():
        rate = json.loads(synthetic.read_text())["images_per_s"]["ours"]["median"]
        epoch = IMAGENET_TRAIN_IMAGES / rate
        result["imagenet_epoch_s_from_synthetic"] = epoch
        result["score_share_of_imagenet_epoch"] = stats["ours"].median / (epoch + stats["ours"].median)
    return result


def _precision_info(precision: Any) -> dict[str, Any]:
    return {
        "device": str(precision.device),
        "amp": str(precision.amp_dtype).replace("torch.", "") if precision.amp_dtype else "off",
        "channels_last": precision.channels_last,
    }


def run_part(part: str, sizes: Sizes, device: str, out: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    if part == "synthetic":
        return part_synthetic(sizes, device)
    if part == "loader":  # the JPEGs go to the temp folder, not among the results
        return part_loader(sizes, device, Path(tempfile.gettempdir()) / "medseg-gpu-benchmark")
    if part == "unet":
        return part_unet(sizes, device)
    if part == "score":
        return part_score(sizes, device, out)
    raise KeyError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")


def summary(out: Path) -> str:
    """Every part's table, from the JSON files in ``out``."""
    rows = []
    for part in PARTS:
        path = out / f"gpu-{part}.json"
        if not path.exists():
            rows.append([part, "not measured (failed or timed out: see its log)", "", "", "", ""])
            continue
        r = json.loads(path.read_text())
        util = r.get("gpu_utilisation_percent")
        memory = r.get("peak_memory_gib")
        util_text = f"{util['median']:.0f}%" if util else "n/a"
        memory_text = f"{memory['allocated']:.1f}" if memory else "n/a"
        if part == "score":
            s = {k: Stats(**v) for k, v in r["seconds"].items()}
            share = r.get("score_share_of_imagenet_epoch")
            measured = (
                f"floor {s['floor'].show(3)} s, ours {s['ours'].show(3)} s, "
                f"reference {s['reference'].show(3)} s"
                + (f"; {100 * share:.3f}% of an ImageNet epoch" if share is not None else "")
            )
            ratio = f"ours/floor {r['ours_over_floor']:.2f}, ours/ref {r['ours_over_reference']:.2f}"
            ratio += f", equal: {r['equal_within_tolerance']}"
        else:
            rates = {k: Stats(**v) for k, v in r["images_per_s"].items()}
            measured = ", ".join(f"{name} {s.show(0)} img/s" for name, s in rates.items())
            ratio = f"ours/plain {r['ours_over_plain']:.3f}" if "ours_over_plain" in r else ""
        rows.append([part, r["what"], measured, ratio, util_text, memory_text])
    device: dict[str, Any] = next(
        (
            json.loads((out / f"gpu-{p}.json").read_text())["machine"]
            for p in PARTS
            if (out / f"gpu-{p}.json").exists()
        ),
        {},
    )
    header = f"GPU: {device.get('cuda')}, torch {device.get('torch')}, {device.get('cores')} CPU cores\n\n"
    return header + markdown_table(
        ["part", "what", "measured (median (min–max))", "ratio", "GPU util", "peak GiB"], rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, help="the part to measure")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/gpu"), help="folder for the JSON"
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test of the script")
    parser.add_argument("--summary", action="store_true", help="print the table of every measured part")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summary:
        print(summary(args.out))
        return 0
    if args.part is None:
        parser.error("--part or --summary is required")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device (use --device cpu --tiny for a smoke test)", file=sys.stderr)
        return 2
    sizes = Sizes(args.tiny)
    started = time.perf_counter()
    result = run_part(args.part, sizes, args.device, args.out)
    document = {
        "part": args.part,
        "tiny": args.tiny,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "imported_ray": "ray" in sys.modules,
        **result,
    }
    path = args.out / f"gpu-{args.part}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"{args.part}: written {path}", flush=True)
    if args.part == "score" and not result["equal_within_tolerance"]:
        print(
            f"score mismatch: ours and the reference differ by {result['max_abs_difference']:.2e} "
            f"(> {SCORE_TOLERANCE})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
