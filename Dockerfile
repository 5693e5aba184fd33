# medseg-search: one image for every node of a Ray cluster (head and workers), used by
# deploy/ray-cluster.yaml (ray up), deploy/kuberay-rayjob.yaml (KubeRay) and, through a
# container runtime, by SLURM. See docs/cluster.md.
#
# NOT BUILT on the development machine: no Docker engine runs there. What was checked there:
# hadolint on this file, and the same install steps (a non-editable `pip install .` of the
# project) in a plain virtual environment. Build and smoke-test it yourself:
#
#   docker build -t medseg-search:latest .
#   docker run --rm --gpus all medseg-search:latest \
#       python -c "import torch, ray; print(torch.__version__, torch.cuda.is_available(), ray.__version__)"
#
# It installs the project as the README does: torch and torchvision first, then the project.
# GPUs: the torch wheel must match the nodes' NVIDIA driver. The default pins are the
# README's (torch 2.14.1 / torchvision 0.29.1; their Linux wheels on PyPI are CUDA 13.0
# builds that carry the CUDA libraries, so the base image needs no CUDA toolkit, only a
# driver recent enough for CUDA 13 on the host plus the NVIDIA container toolkit). For an
# older driver take the CUDA build that matches it from PyTorch's wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t medseg-search .
# (CPU-only image: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu). Any torch from 2.4
# to 2.14.1 works with the project.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=
# Extras of the project: "demo" (the offline demo data) is what the README's main job installs.
ARG EXTRAS=demo

# HF_HUB_OFFLINE / NO_ALBUMENTATIONS_UPDATE: nothing is downloaded at run time (no weights, no
# version checks), so a node without internet access does not wait on timeouts.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    NO_ALBUMENTATIONS_UPDATE=1

# rsync: `ray up` copies its bootstrap files into the container with rsync (docker exec).
# wget: KubeRay's default readiness/liveness probes call it inside the Ray containers.
# tmux: `ray exec --tmux` runs its tmux inside the container (a driver that outlives ssh).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rsync wget tmux ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medseg-search

# 1. torch and torchvision (the CUDA build that matches the driver), as the README says.
#    (pinned through the build args; hadolint cannot see that)
# hadolint ignore=DL3013
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# 2. The project itself (non-editable: the code lives in site-packages on every node), with
#    Ray, MLflow, timm, smp... from pyproject.toml. configs/ stays in the working directory,
#    so `medseg-search pipeline --config configs/...` works as in a clone.
COPY pyproject.toml README.md LICENSE ./
COPY search ./search
COPY trainables ./trainables
COPY configs ./configs
# hadolint ignore=DL3013
RUN pip install ".[${EXTRAS}]" \
    && medseg-search --version \
    && python -c "import ray, torch, torchvision, timm, segmentation_models_pytorch, mlflow"

CMD ["bash"]
