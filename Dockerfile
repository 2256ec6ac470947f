# One image for the Prefect worker, the flow-run Jobs, the Ray head and the Ray GPU workers:
# the project with the pins of requirements.lock, torch as the CUDA build of the same version.
#   docker build -t registry.local:5000/i2i-unlearn:0.1.0 .     (tag = pyproject's version)
# The CUDA runtime base gives the driver-facing libraries; torch's wheel brings the rest.
# torch 2.13.0's Linux wheel is a CUDA 13.0 build (its deps are nvidia-*-cu13), hence 13.0 and
# cu130 here; nodes need an NVIDIA driver >= 580. For older drivers: --build-arg
# CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 --build-arg TORCH_CUDA=cu128, if the
# PyTorch index carries that build of this version.
ARG CUDA_BASE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_BASE}

# torch's CUDA flavour on the PyTorch index, matching the base image's CUDA
ARG TORCH_CUDA=cu130
ARG TORCH_VERSION=2.13.0
# Debian's dataset-fashion-mnist (params.yaml data.path), the same file `make data` installs;
# fetched by hash since the Ubuntu base has no Debian archive
ARG FMNIST_DEB=dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
ARG FMNIST_SHA256=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RAY_USAGE_STATS_ENABLED=0 \
    DVC_NO_ANALYTICS=1

# git: DVC needs the repository (dvc exp run commits experiments); wget: KubeRay's probes;
# python3-venv: only to pip-install uv (Ubuntu 24.04's Python is 3.12, the project needs 3.11).
# Distro packages follow the base image's release, not version pins (hence DL3008 off).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git wget python3-venv \
 && curl -fsSLo /tmp/fmnist.deb \
      "http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/${FMNIST_DEB}" \
 && echo "${FMNIST_SHA256}  /tmp/fmnist.deb" | sha256sum -c - \
 && dpkg -i /tmp/fmnist.deb && rm /tmp/fmnist.deb \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system user.name "i2i-unlearn pipeline" \
 && git config --system user.email "pipeline@i2i-unlearn.invalid" \
 && git config --system --add safe.directory /app

# the same uv as the Makefile, and a uv-managed Python 3.11 (requires-python >=3.11,<3.12)
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir uv==0.13.9 \
 && ln -s /opt/uv/bin/uv /usr/local/bin/uv \
 && uv venv --python 3.11 /opt/venv

WORKDIR /app
# dependencies first: this layer is rebuilt only when the lock changes, not on every edit
COPY requirements.lock pyproject.toml ./
# requirements.lock pins torch==2.13.0+cpu (the CPU build the Makefile installs); the override
# swaps in the CUDA build of the same version and nothing else. prefect-kubernetes is what the
# Prefect worker role adds, constrained by the lock so that no pin moves.
RUN echo "torch==${TORCH_VERSION}+${TORCH_CUDA}" > /tmp/torch-cuda.txt \
 && uv pip install --no-cache --compile-bytecode \
      --extra-index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
      --index-strategy unsafe-best-match \
      --override /tmp/torch-cuda.txt -r requirements.lock \
 && uv pip install --no-cache -c requirements.lock prefect-kubernetes==0.8.0 \
 && python -c "import torch; assert torch.__version__ == '${TORCH_VERSION}+${TORCH_CUDA}', torch.__version__"

# the repository itself, .git included (DVC), then the project without touching the pins
COPY . .
RUN uv pip install --no-cache --no-deps -e . \
 && chmod -R a+rwX /app

# the Prefect worker chart runs as uid 1001 with HOME=/home/prefect; Ray's images use 1000
USER 1000
CMD ["bash"]
