# convserve: CNN image classifier served by gunicorn, with Prometheus metrics.
#
#   builder  virtualenv with CPU-only torch and the locked dependencies, then the project
#   model    the checkpoint to bake in: a supplied one, or trained on Fashion-MNIST
#   runtime  slim, no compilers, non-root, tini -> gunicorn, HEALTHCHECK on /readyz
#
# Build arguments:
#   PYTHON_IMAGE     base image of the builder and runtime stages
#   TORCH_WHEEL      file name of a torch wheel in deploy/docker/wheels/ to install instead of
#                    downloading torch==2.13.0 from TORCH_INDEX_URL (the PyTorch CPU wheel index)
#   CHECKPOINT       file name of a checkpoint in deploy/docker/model/ to bake in; empty: train
#                    the default model on Debian's dataset-fashion-mnist during the build
#   TRAIN_ARGS       extra arguments for convserve-train when it runs
#
# Serving another checkpoint needs no rebuild: mount it and point CONVSERVE_MODEL_PATH at it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first: the largest layer, and the one that changes least. Its wheel also ships C++
# headers, CMake files, protoc and C++ test binaries (about 200 MB) that only extension builds
# and torch's own tests use; of bin/ serving needs torch_shm_manager alone.
ARG TORCH_WHEEL=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY deploy/docker/wheels/ /tmp/wheels/
RUN if [ -n "$TORCH_WHEEL" ]; then \
        pip install --no-deps "/tmp/wheels/$TORCH_WHEEL"; \
    else \
        pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi \
 && rm -rf /tmp/wheels \
 && torch="$(echo /opt/venv/lib/python3.*/site-packages/torch)" \
 && rm -rf "$torch/include" "$torch/share/cmake" "$torch/test" \
 && find "$torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# Everything else at the versions of the lock (torch's own dependencies included).
COPY deploy/docker/requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock

COPY pyproject.toml README.md* /src/
COPY models/ /src/models/
COPY service/ /src/service/
COPY client/ /src/client/
RUN pip install --no-deps /src \
 && pip check \
 && rm -rf /src \
 && python -c "import torch; torch.nn.Conv2d(1, 1, 3)(torch.zeros(1, 1, 4, 4))"


FROM builder AS model
ARG CHECKPOINT=
ARG TRAIN_ARGS=
COPY deploy/docker/model/ /tmp/model/
# TRAIN_ARGS is split into words on purpose (SC2086).
# hadolint ignore=DL3008,SC2086
RUN mkdir -p /out \
 && if [ -n "$CHECKPOINT" ]; then \
        cp "/tmp/model/$CHECKPOINT" /out/model.pt; \
    else \
        apt-get update -q \
        && apt-get install -y -q --no-install-recommends dataset-fashion-mnist \
        && rm -rf /var/lib/apt/lists/* \
        && convserve-train --output /out/model.pt $TRAIN_ARGS; \
    fi \
 && python -c "import sys; from models.checkpoint import load_checkpoint; load_checkpoint(sys.argv[1])" \
        /out/model.pt


FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini is PID 1: it reaps zombies and hands SIGTERM to gunicorn alone, whose master then
# drains the workers' in-flight requests (CONVSERVE_GRACEFUL_TIMEOUT_S) before exiting.
# hadolint ignore=DL3008
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin convserve

COPY --from=builder /opt/venv /opt/venv
COPY --from=model /out/model.pt /opt/convserve/model/model.pt
COPY deploy/docker/healthcheck.py /opt/convserve/healthcheck.py

# The root filesystem may be read-only: everything written at run time goes below /tmp
# (a tmpfs in docker-compose.yml), including the prometheus-client multiprocess directory
# (gunicorn_conf exports CONVSERVE_METRICS_DIR as PROMETHEUS_MULTIPROC_DIR and wipes it at start).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    CONVSERVE_MODEL_PATH=/opt/convserve/model/model.pt \
    CONVSERVE_BIND=0.0.0.0:8000 \
    CONVSERVE_METRICS_DIR=/tmp/convserve-metrics

WORKDIR /opt/convserve
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/convserve/healthcheck.py"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "-c", "python:service.gunicorn_conf", "service:create_app()"]
