#!/usr/bin/env bash
# The GPU benchmark of medseg-search: one short script (at most about 7 minutes) for a CUDA machine
# with PyTorch, timm and torchvision. Ray, MLflow and pydantic are not needed; the only missing
# package, segmentation-models-pytorch (pure Python), is carried as a wheel in benchmarks/wheels/.
#
#   benchmarks/gpu.sh [OUT_DIR] [extra arguments for benchmarks/gpu.py]
#
# OUT_DIR defaults to $OUT (the device tool's output folder) or benchmarks/results/gpu. Each part
# runs in its own process with its own time limit and writes OUT_DIR/gpu-<part>.json as soon as it
# has measured, so a part that fails or times out loses nothing measured before it. At the end the
# table of every measured part is printed. Smoke test on a CPU:
#   benchmarks/gpu.sh /tmp/gpu-smoke --device cpu --tiny
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=${1:-${OUT:-$repo/benchmarks/results/gpu}}
shift || true
python=${PYTHON:-python3}
mkdir -p "$out"

# segmentation-models-pytorch: use the installed one, else unpack the carried wheel (a pure-Python
# wheel unpacked onto PYTHONPATH is importable as installed; no pip and no network needed).
site=""
if ! "$python" -c "import segmentation_models_pytorch" 2>/dev/null; then
    wheel=$(ls "$here"/wheels/segmentation_models_pytorch-0.6.*-py3-none-any.whl 2>/dev/null | head -n 1)
    if [ -z "$wheel" ]; then
        echo "gpu.sh: segmentation-models-pytorch is not installed and its wheel is missing; on a machine" >&2
        echo "with network, from the repository root, run:" >&2
        echo "  pip download 'segmentation-models-pytorch==0.6.*' --no-deps -d benchmarks/wheels" >&2
        echo "then copy benchmarks/wheels/ along with the repository (the device tool: carry benchmarks/wheels)." >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$python" -m zipfile -e "$wheel" "$site" || { echo "gpu.sh: cannot unpack $wheel" >&2; exit 2; }
fi
export PYTHONPATH="$repo${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1

cd "$repo" || exit 2
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# part:limit in seconds, cheapest and most important first; the limits add up to 7 minutes.
status=0
for entry in synthetic:110 unet:90 score:100 loader:120; do
    part=${entry%%:*}
    limit=${entry##*:}
    echo "== $part (at most ${limit} s) =="
    started=$SECONDS
    timeout --kill-after=10 "$limit" "$python" -m benchmarks.gpu --part "$part" --out "$out" "$@" \
        > >(tee "$out/gpu-$part.log") 2>&1
    code=$?
    echo "== $part: exit $code after $((SECONDS - started)) s =="
    if [ "$code" -ne 0 ]; then
        status=1
        echo "gpu.sh: part $part failed or timed out (see $out/gpu-$part.log); going on with the next" >&2
    fi
done
"$python" -m benchmarks.gpu --summary --out "$out" | tee "$out/summary.md"
[ -n "$site" ] && rm -rf "$site"
exit $status
