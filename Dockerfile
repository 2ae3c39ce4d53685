# GPU image for training (`accelerate launch`), Ray worker nodes and submission builds.
# Build: docker build -t ntire:0.1.0 .   (needs a Docker engine; the CPU dev machines have none)
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/ntire \
    PATH=/opt/ntire/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
       git openssh-client rsync ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv $VIRTUAL_ENV
WORKDIR /opt/src/ntire
COPY scripts/install-torch scripts/install-torch
# TORCH_CUDA=1: the image runs on GPU nodes even though the build host may have no driver.
RUN TORCH_CUDA=1 TORCH_VERSION=$TORCH_VERSION scripts/install-torch python
COPY pyproject.toml README.md ./
COPY ntire ntire
COPY cluster cluster
COPY submissions submissions
RUN pip install ".[all,deepspeed]"

# Ray and accelerate run as an unprivileged user; data and runs are mounted at /data and /runs.
RUN useradd --create-home --uid 1000 ntire && mkdir -p /data /runs && chown ntire:ntire /data /runs
USER ntire
WORKDIR /home/ntire
ENV HF_HOME=/home/ntire/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/home/ntire/.cache/torch_extensions
CMD ["ntire", "--help"]
