# syntax=docker/dockerfile:1.7
# vicc_fast training image: torchrun entry point, DALI + Triton + torch from their wheels.
#
#   docker build -t vicc_fast .                                  # DALI variant pinned in pyproject (cuda120)
#   docker build --build-arg DALI_CUDA=cuda130 -t vicc_fast .    # same DALI version, CUDA 13 build
#   docker run --gpus all --ipc=host -v /data/shards:/workspace/data -v /data/runs:/workspace/runs vicc_fast
#
# Why a plain Python base and not nvidia/cuda: the pinned torch wheel (torch==2.14.1, a CUDA 13.0 build) brings
# its CUDA runtime, cuDNN, NCCL and cuBLAS as nvidia-* wheels, DALI's wheel carries its own CUDA 12 (or 13)
# runtime pieces, and Triton ships ptxas. Only the kernel driver comes from the host (NVIDIA Container Toolkit,
# `--gpus all`); an nvidia/cuda base would add a third copy of the CUDA libraries. The host driver must support
# CUDA 13.0 (>= 580) for torch; NVDEC (DALI's "mixed" video decoder) needs the driver's `video` capability.
# See docs/cluster.md ("Container") for how this file was checked without a Docker engine.

# BASE_IMAGE: any Debian bookworm image with Python 3.11 as `python` and its venv module; the default is the
# public one. scripts/container/build_local.sh passes a debootstrap-made base where no registry is reachable.
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm
FROM ${BASE_IMAGE}

# DALI CUDA variant: the default must equal the pin in pyproject.toml (tests/test_packaging.py checks it).
ARG DALI_CUDA=cuda120
ARG USER_UID=1000

# gcc + libc headers: Triton compiles its small CUDA launcher stub with the system C compiler at first use.
# git: benchmark records carry the commit when the tree is mounted with its .git.
# Not version-pinned (DL3008): Debian security updates replace exact versions in the bookworm archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev git \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video

RUN python -m venv /opt/venv

WORKDIR /opt/vicc_fast

# 1) The dependency layer: exactly [project].dependencies of pyproject.toml (DALI variant from the build arg),
#    installed before the sources are copied so that editing code does not re-download torch and DALI.
COPY pyproject.toml ./
COPY scripts/docker/pyproject_requirements.py scripts/docker/
RUN python scripts/docker/pyproject_requirements.py --dali-cuda "${DALI_CUDA}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2) The project itself, from pyproject (its dependencies are already in place: --no-deps keeps a non-default
#    DALI variant from pulling the pinned one back in). Then check the install from outside the source tree;
#    the YAML configs are copied next to the installed package when the wheel does not ship them.
COPY . .
# (A script run by path puts its own folder, not the working directory, first on sys.path, so the check
# imports the installed packages; --source-tree makes it fail if it ever did not.)
RUN pip install --no-cache-dir --no-deps . \
    && python /opt/vicc_fast/scripts/docker/check_install.py \
        --configs-from /opt/vicc_fast/configs --source-tree /opt/vicc_fast

# Non-root user; data and runs are volumes (data.root=data/..., train.out_dir=runs/... are relative to /workspace).
RUN groupadd --gid "${USER_UID}" vicc \
    && useradd --create-home --uid "${USER_UID}" --gid "${USER_UID}" --shell /bin/bash vicc \
    && mkdir -p /workspace/data /workspace/runs \
    && chown -R vicc:vicc /workspace
USER ${USER_UID}:${USER_UID}
ENV TRITON_CACHE_DIR=/home/vicc/.triton/cache \
    TORCHINDUCTOR_CACHE_DIR=/home/vicc/.cache/torchinductor
WORKDIR /workspace
VOLUME ["/workspace/data", "/workspace/runs"]

ENTRYPOINT ["torchrun"]
CMD ["--standalone", "--nproc_per_node=gpu", "-m", "vicc_fast.train"]
