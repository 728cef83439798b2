# One image for the three Dagster containers of docker-compose.yml: the user-code gRPC server (default
# command), dagster-webserver and dagster-daemon. No secret is baked in: the masking key arrives at run time
# as a Compose secret (PII_MASKING_KEY_FILE).
#
# Build argument LAUNCHER picks the run launcher's package (deploy/locks/$LAUNCHER.lock):
#   none   (default) DefaultRunLauncher, deploy/dagster.yaml: the Compose deployment
#   docker DockerRunLauncher (dagster-docker), deploy/dagster.docker-run-launcher.yaml
#   k8s    K8sRunLauncher (dagster-k8s), deploy/dagster.k8s.yaml
#   ecs    EcsRunLauncher (dagster-aws), deploy/dagster.ecs.yaml
# e.g. `docker build --build-arg LAUNCHER=k8s -t fetch-etl:k8s .`

# --- builder: uv resolves nothing, it installs the frozen lock into /opt/venv; uv stays in this stage --------
FROM python:3.11-slim-bookworm AS builder

ARG LAUNCHER=none
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv

RUN pip install --no-cache-dir 'uv==0.13.9' \
    && uv venv --python /usr/local/bin/python3 /opt/venv

WORKDIR /src

# The locked set first (exact versions with hashes, bytecode compiled now: the runtime user cannot write
# __pycache__), so code changes rebuild only the last layers.
COPY deploy/locks/${LAUNCHER}.lock ./image.lock
RUN uv pip install --require-hashes --no-deps -r image.lock

# Then the project itself, non-editable, without touching the locked set (its build backend pinned too).
COPY pyproject.toml README.md ./
COPY fetch_etl ./fetch_etl
RUN echo 'hatchling==1.33.0' > /tmp/build-constraints.txt \
    && uv pip install --no-deps --build-constraint /tmp/build-constraints.txt . \
    && rm /tmp/build-constraints.txt

# --- runtime: the base image plus the environment, the instance config and a non-root user -----------------
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    DAGSTER_HOME=/opt/dagster/home

COPY --from=builder /opt/venv /opt/venv

WORKDIR /opt/dagster/app

# Dagster's instance config (Postgres storage, run queue, run monitoring) and where the code server is.
COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml
COPY deploy/workspace.yaml /opt/dagster/app/workspace.yaml

RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster/home --shell /usr/sbin/nologin dagster \
    && mkdir -p /opt/dagster/home/storage \
    && chown -R dagster:dagster /opt/dagster/home
USER 10001:10001

EXPOSE 3000 4000
CMD ["dagster", "api", "grpc", "--module-name", "fetch_etl.definitions", "--host", "0.0.0.0", "--port", "4000"]
