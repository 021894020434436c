# syntax=docker/dockerfile:1.7
# Both images of shardrec, one target each, built from the repository root:
#   docker build --target serving  -t ghcr.io/shardrec/shardrec:0.1.0 .
#       the data plane; three entrypoints, the operator sets the command of each pod:
#         shardrec-shard   shard server        (GET /healthz, /readyz, /metrics)
#         shardrec-router  router              (GET /healthz, /readyz, /metrics)
#         recctl index build                   index-build Job
#   docker build --target operator -t ghcr.io/shardrec/shardrec-operator:0.1.0 .
#       shardrec-operator (kopf) reconciling RecommenderCluster objects; no hnswlib, numpy or FastAPI.
# Without Docker: `make images` builds both with buildah on a Debian base made here (e2e/images/).
#
# The base image is pinned by version; pin it by digest too where a registry is reachable, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> ...
# Any Debian bookworm image with python3, python3-venv and python-is-python3 works as well
# (e2e/images/build.sh passes one made with debootstrap).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- builder: compiler, an empty virtualenv and the project's wheel, shared by both images ------
FROM ${PYTHON_IMAGE} AS builder
# hnswlib ships only an sdist: it needs a C++ compiler, which stays in the build stages. The
# python.org images carry Python.h; Debian's python3 needs python3-dev for it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential=12.9 \
 && { python -c "import pathlib, sys, sysconfig; sys.exit(not pathlib.Path(sysconfig.get_paths()['include'], 'Python.h').is_file())" \
      || apt-get install -y --no-install-recommends python3-dev=3.11.2-1+b1; } \
 && rm -rf /var/lib/apt/lists/*
# Without HNSWLIB_NO_NATIVE, hnswlib compiles with -march=native: the image would crash with SIGILL
# on any node whose CPU lacks an instruction set extension of the build machine.
ENV HNSWLIB_NO_NATIVE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/shardrec
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
WORKDIR /src
# Dependencies change more rarely than code: each image resolves its extra against this metadata
# alone (empty package stubs stand in for the sources), so a code change rebuilds no dependency.
COPY pyproject.toml README.md ./
RUN mkdir -p shard-server/src/shardrec operator/src/shardrec_operator \
 && touch shard-server/src/shardrec/__init__.py operator/src/shardrec_operator/__init__.py

# ---- the project as one wheel, built once for both images ----------------------------------------
FROM builder AS wheel
COPY shard-server/src shard-server/src
COPY operator/src operator/src
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- each image's virtualenv: its extra's dependencies, then the wheel without dependencies ------
FROM builder AS serving-venv
# ".[serving]" is this project from the build context, not an unpinned PyPI package.
# hadolint ignore=DL3013
RUN pip install ".[serving]" \
 && pip uninstall -y shardrec
COPY --from=wheel /wheels /wheels
# pip and setuptools are not needed at run time: the images carry no installer.
RUN pip install --no-deps /wheels/*.whl \
 && shardrec-shard --help >/dev/null \
 && shardrec-router --help >/dev/null \
 && recctl index build --help >/dev/null \
 && python -m shardrec.serving.carry --help >/dev/null \
 && pip uninstall -y pip setuptools

FROM builder AS operator-venv
# hadolint ignore=DL3013
RUN pip install ".[operator]" \
 && pip uninstall -y shardrec
COPY --from=wheel /wheels /wheels
# The operator image must not carry the data plane's libraries.
RUN pip install --no-deps /wheels/*.whl \
 && shardrec-operator --help >/dev/null \
 && python -c "import importlib.util as u, sys; bad = [m for m in ('hnswlib', 'numpy', 'fastapi', 'uvicorn') if u.find_spec(m)]; sys.exit(f'operator image carries {bad}' if bad else 0)" \
 && pip uninstall -y pip setuptools

# ---- runtime: Python and a non-root user; no compiler, no pip cache -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.source="https://github.com/shardrec/shardrec" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 shardrec \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin shardrec
ENV VIRTUAL_ENV=/opt/shardrec \
    PATH="/opt/shardrec/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/shardrec

# ---- target operator ----------------------------------------------------------------------------
FROM runtime AS operator
LABEL org.opencontainers.image.title="shardrec-operator" \
      org.opencontainers.image.description="Kubernetes operator for sharded, replicated HNSW serving"
COPY --from=operator-venv /opt/shardrec /opt/shardrec
USER 10001:10001
# 8080: kopf's liveness endpoint (--liveness); the Helm chart's livenessProbe asks the same URL.
# 9090: Prometheus metrics.
EXPOSE 8080 9090
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# Watches every namespace unless --namespace is given (repeatable); binds probes and metrics on all
# interfaces, as a pod needs (the Helm chart passes the same flags).
ENTRYPOINT ["shardrec-operator"]
CMD ["--liveness=http://0.0.0.0:8080/healthz", "--metrics-address=0.0.0.0", "--metrics-port=9090"]

# ---- target serving (last: the default target) --------------------------------------------------
FROM runtime AS serving
LABEL org.opencontainers.image.title="shardrec" \
      org.opencontainers.image.description="shardrec data plane: shard server, router, index builder"
COPY --from=serving-venv /opt/shardrec /opt/shardrec
USER 10001:10001
# Kubernetes uses the probes the operator writes and ignores this. Under `docker run` it asks
# /healthz on the port the server was configured with (SHARDREC_ROUTER_PORT for the router,
# SHARDREC_SHARD_PORT for a shard); with neither set (e.g. an index build) there is no server and it passes.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; p = os.environ.get('SHARDREC_ROUTER_PORT') or os.environ.get('SHARDREC_SHARD_PORT'); sys.exit(0) if not p else urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2)"]
CMD ["recctl", "--help"]
