# syntax=docker/dockerfile:1
#
# paraformer-asr: the gRPC speech recognition server on a CUDA runtime base (docs/deployment.md).
#
#   docker build -t paraformer-asr:0.1.0 .                                      # models downloaded at first start
#   docker build --build-arg BAKE_MODELS=true -t paraformer-asr:0.1.0-models .  # models inside the image
#
#   docker run --gpus all -p 50051:50051 -p 9400:9400 -v asr-models:/models paraformer-asr:0.1.0
#
# Stages: `build` makes /opt/python (CPython 3.11) and /opt/venv (CUDA torch + the server) with a
# compiler at hand; `models` optionally bakes the hub models; the final stage copies both onto a
# clean CUDA base: no compiler, no pip cache, non-root, tini as PID 1.
#
# torch 2.13.0's Linux wheels are CUDA 13.0 builds (they bring the CUDA libraries as pip
# packages), so the base is CUDA 13.0: the host needs an NVIDIA driver that supports CUDA 13.0.

# checkov:skip=CKV_DOCKER_7:The base images come from build arguments whose defaults carry fixed version tags; checkov cannot resolve the arguments
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

# uv only provides a prebuilt, relocatable CPython 3.11: Ubuntu 24.04 ships Python 3.12 and the
# project requires 3.11.
FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG PYTHON_VERSION=3.11.18
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler for the few dependencies that ship only as sdists (crcmod has a C extension).
# DL3008 (unpinned apt versions): this stage is thrown away; see the final stage for why.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

WORKDIR /src
# requirements.lock pins every dependency except torch; it constrains the torch install too, so
# torch's own dependencies (sympy, networkx, ...) get the locked versions.
COPY requirements.lock ./
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        -c requirements.lock "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY app ./app
# DL3013 (unpinned pip install): "." is this project, and -c requirements.lock pins every dependency.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir -c requirements.lock . \
    && python -c "import torch, app; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------
# Optionally download the hub models at build time (BAKE_MODELS=true); otherwise /models stays
# empty and the server (or the chart's init container) downloads them into a mounted cache.
FROM build AS models
ARG BAKE_MODELS=false
# Empty: the server's defaults (Paraformer-large, FSMN VAD, CT-Transformer punctuation, and the
# streaming Paraformer for interim results); "none" leaves a model out.
ARG ASR_MODEL=""
ARG VAD_MODEL=""
ARG PUNC_MODEL=""
ARG ONLINE_MODEL=""
ARG MODEL_REVISION=""
RUN mkdir -p /models \
    && if [ "${BAKE_MODELS}" = "true" ]; then \
        if [ -n "${ASR_MODEL}" ]; then export ASR_ASR_MODEL="${ASR_MODEL}"; fi; \
        if [ -n "${VAD_MODEL}" ]; then export ASR_VAD_MODEL="${VAD_MODEL}"; fi; \
        if [ -n "${PUNC_MODEL}" ]; then export ASR_PUNC_MODEL="${PUNC_MODEL}"; fi; \
        if [ -n "${ONLINE_MODEL}" ]; then export ASR_ONLINE_MODEL="${ONLINE_MODEL}"; fi; \
        if [ -n "${MODEL_REVISION}" ]; then export ASR_MODEL_REVISION="${MODEL_REVISION}"; fi; \
        ASR_MODEL_CACHE_DIR=/models MODELSCOPE_CACHE=/models paraformer-asr fetch-models; \
    fi

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}
ARG BAKE_MODELS=false
ARG VERSION=0.1.0
# ffmpeg is optional: the server decodes audio with PyAV, whose wheel bundles FFmpeg's libraries.
ARG WITH_FFMPEG=false
LABEL org.opencontainers.image.title="paraformer-asr" \
      org.opencontainers.image.description="gRPC speech recognition with FunASR Paraformer-large on CUDA" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tini is PID 1: it forwards SIGTERM to the server (which then drains) and reaps zombies.
# DL3008 (unpinned apt versions): the versions come from the base image's Ubuntu release; exact
# pins would break the build whenever Ubuntu publishes a security update and drops the old one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && if [ "${WITH_FFMPEG}" = "true" ]; then apt-get install -y --no-install-recommends ffmpeg; fi \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 asr \
    && useradd --uid 10001 --gid 10001 --home-dir /home/asr --create-home --shell /usr/sbin/nologin asr

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=models --chown=10001:10001 /models /models

# The model cache is /models: mount a volume there (or bake the models in, BAKE_MODELS=true, and
# the server never downloads). Writable paths at run time: /models and /tmp, so the root
# filesystem can be read-only.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ASR_MODEL_CACHE_DIR=/models \
    MODELSCOPE_CACHE=/models \
    ASR_DEMO_DIR=/models/demo-models \
    ASR_OFFLINE=${BAKE_MODELS} \
    ASR_LOG_FORMAT=json

USER 10001:10001
WORKDIR /home/asr
# gRPC, Prometheus /metrics, plaintext health-only port (when ASR_HEALTH_PORT is set).
EXPOSE 50051 9400 50052

# The gRPC health service says SERVING once the models are loaded and warmed up; allow 10 minutes
# for that (a first start that downloads the models may need more). Kubernetes ignores this and
# uses the chart's gRPC probes.
# The health client exits 2 when it cannot connect: "|| exit 1" maps every failure to unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
    CMD ["/bin/sh", "-c", "port=${ASR_HEALTH_PORT:-0}; [ \"$port\" != 0 ] || port=${ASR_PORT:-50051}; paraformer-asr health --target 127.0.0.1:$port --timeout 5 || exit 1"]

ENTRYPOINT ["/usr/bin/tini", "--", "paraformer-asr"]
CMD ["serve"]
