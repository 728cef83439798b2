# One image for the three Dagster containers of docker-compose.yml: the user-code gRPC server (default
# command), dagster-webserver and dagster-daemon. Dependencies come from the committed requirements.lock,
# frozen: exact versions with hashes, no resolution at build time. No secret is baked in: the masking key
# arrives at run time as a Compose secret (PII_MASKING_KEY_FILE).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/home

RUN pip install --no-cache-dir 'uv==0.13.9'

WORKDIR /opt/dagster/app

# The locked set first, so code changes rebuild only the last layers.
COPY requirements.lock ./
RUN uv pip install --system --require-hashes -r requirements.lock

# Then the project itself, without touching the locked set (its build backend pinned too).
COPY pyproject.toml README.md ./
COPY fetch_etl ./fetch_etl
RUN echo 'hatchling==1.33.0' > /tmp/build-constraints.txt \
    && uv pip install --system --no-deps --build-constraint /tmp/build-constraints.txt . \
    && rm /tmp/build-constraints.txt

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
