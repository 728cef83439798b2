"""The Docker Compose deployment, checked without a Docker engine: the files' structure, the instance config
loaded for real against Postgres, and `dagster definitions validate` on the workspace.

`docker-compose config -q` (Debian's docker-compose) runs in .ci/run; the daemon itself runs in
test_deploy_daemon.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRun, RunsFilter
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import PoolGranularity
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.utils import make_new_run_id
from kubernetes.client import BatchV1Api, Configuration
from kubernetes.client.rest import RESTClientObject
from kubernetes.config import incluster_config

from fetch_etl.defs.automation import INGEST_TAGS
from fetch_etl_tests.deploy_env import ROOT, dagster_home, dagster_pg_env
from fetch_etl_tests.helpers import clean_env

COMPOSE = ROOT / "docker-compose.yml"
SERVICES = {"localstack", "postgres", "dagster-postgres", "user-code", "webserver", "daemon"}
OUR_IMAGE = "fetch-etl:${FETCH_ETL_TAG:-local}"
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|_KEY$|DATABASE_URL", re.IGNORECASE)
ECS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "PII_MASKING_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:fetch-etl/pii-key",
    "DATABASE_URL_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:fetch-etl/database-url",
    "DAGSTER_PG_PASSWORD_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:fetch-etl/dagster-pg",
}
INTERPOLATION = re.compile(r"^\$\{[A-Z_]+(:?[-?][^}]*)?\}$")
# What the daemon's pod sees of its cluster: its namespace setting and the API server's address. The service
# account's token and CA files are written by `fake_pod_service_account`.
K8S_ENV = {
    "DAGSTER_K8S_NAMESPACE": "fetch-etl",
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
}
# The settings dagster.k8s.yaml copies from the daemon's environment into each run's Job (all must be set).
K8S_RUN_SETTINGS = {
    "SQS_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/000000000000/login-queue",
    "SQS_DLQ_URL": "https://sqs.us-east-1.amazonaws.com/000000000000/login-queue-dlq",
    "SQS_PROTOCOL": "auto",
    "SQS_RECEIVE_THREADS": "4",
    "SQS_MAX_MESSAGES_PER_RUN": "10000",
    "SQS_VISIBILITY_TIMEOUT": "900",
    "AWS_DEFAULT_REGION": "us-east-1",
}
K8S_RUN_IMAGE = "registry.example/fetch-etl:1.2.3"  # the code location's DAGSTER_CURRENT_IMAGE


def fake_pod_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Let `load_incluster_config: true` load outside a cluster: the service host and port variables and the
    mounted service account token and CA, as Kubernetes gives them to a pod. Nothing may reach an API server:
    any request fails the test, and Job creations are recorded in the returned list as (namespace, body)."""
    for key, value in K8S_ENV.items():
        monkeypatch.setenv(key, value)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("test-token")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot used: no connection is made\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setattr(Configuration, "_default", Configuration._default)  # restored after the test

    def no_cluster(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a request to the Kubernetes API server: {args[1:3]}")

    created: list[tuple[str, Any]] = []

    def create_namespaced_job(self: BatchV1Api, namespace: str, body: Any, **kwargs: Any) -> Any:
        created.append((namespace, body))
        return body

    monkeypatch.setattr(RESTClientObject, "request", no_cluster)
    monkeypatch.setattr(BatchV1Api, "create_namespaced_job", create_namespaced_job)
    return created


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment is a mapping (so merges and checks are unambiguous)"
    return {str(k): str(v) for k, v in env.items()}


def test_compose_has_the_six_services_with_their_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["localstack"]["image"] == "fetchdocker/data-takehome-localstack"
    assert services["postgres"]["image"] == "fetchdocker/data-takehome-postgres"
    assert services["dagster-postgres"]["image"].startswith("postgres:")
    for name in ("user-code", "webserver", "daemon"):  # one image, built from this checkout
        assert services[name]["image"] == OUR_IMAGE
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert services["user-code"]["command"][:3] == ["dagster", "api", "grpc"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]


def test_every_service_has_a_health_check_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test") and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name
        assert service.get("restart") == "unless-stopped", name


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "user-code": {"localstack", "postgres", "dagster-postgres"},
        "webserver": {"dagster-postgres", "user-code"},
        "daemon": {"dagster-postgres", "user-code"},
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        assert all(d == {"condition": "service_healthy"} for d in depends.values()), name
    for name in ("localstack", "postgres", "dagster-postgres"):
        assert "depends_on" not in services[name]


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"localstack", "postgres", "webserver"}
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
    assert published["webserver"] == ["127.0.0.1:${DAGSTER_UI_PORT:-3000}:3000"]


def test_dagster_storage_has_a_named_volume(compose: dict[str, Any]) -> None:
    assert "dagster-postgres-data" in compose["volumes"]
    assert "dagster-postgres-data:/var/lib/postgresql/data" in compose["services"]["dagster-postgres"]["volumes"]


def test_no_secret_value_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "PII_MASKING_KEY=" not in text and "PII_MASKING_KEY:" not in text
    assert not re.search(r"postgres(ql)?://[^\s$]*:[^\s$@]+@", text), "no URL with a password in it"
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAMES.search(key):
                assert INTERPOLATION.match(value) and ":?" in value, f"{name}.{key} must come from .env"
    user_code = compose["services"]["user-code"]
    assert environment(user_code)["PII_MASKING_KEY_FILE"] == "/run/secrets/pii_masking_key"
    assert user_code["secrets"] == ["pii_masking_key"]
    assert set(compose["secrets"]) == {"pii_masking_key"} and "file" in compose["secrets"]["pii_masking_key"]
    for name in ("webserver", "daemon"):  # only the code server (and its runs) can read the key
        assert "secrets" not in compose["services"][name]
        assert not {"DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(environment(compose["services"][name]))


def test_the_pipeline_settings_inside_compose(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["user-code"])
    assert env["SQS_QUEUE_URL"] == "${SQS_QUEUE_URL:-http://localstack:4566/000000000000/login-queue}"
    assert env["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL:-http://localstack:4566}"
    assert env["SQS_PROTOCOL"] == "${SQS_PROTOCOL:-auto}"
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    assert example["DATABASE_URL"] == "postgresql://postgres:postgres@postgres:5432/postgres"
    assert example["SQS_PROTOCOL"] == "auto"
    assert not any(key.startswith("PII_MASKING_KEY=") for key in example), "the key is a file, never a value"
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert required <= set(example), "every required setting has an example"


def test_env_and_secrets_stay_out_of_git_and_the_image() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "secrets/" in ignored
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore[[line.startswith("#") for line in dockerignore].index(False)] == "*", "allow-list"
    allowed = {line[1:].rstrip("/") for line in dockerignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "fetch_etl", "deploy"}


def test_dockerfile_installs_the_frozen_image_lock_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", dockerfile, re.MULTILINE)
    assert stages == [("python:3.11-slim-bookworm", "builder"), ("python:3.11-slim-bookworm", "")]
    builder, runtime = dockerfile.split("\nFROM python:3.11-slim-bookworm\n")
    assert "COPY deploy/locks/${LAUNCHER}.lock ./image.lock" in builder
    assert "uv pip install --require-hashes --no-deps -r image.lock" in builder
    assert "UV_COMPILE_BYTECODE=1" in builder, "the runtime user cannot write __pycache__"
    assert not re.search(r"\buv\b", runtime), "uv stays in the builder"
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
    assert "COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml" in dockerfile
    assert "PII_MASKING_KEY" in dockerfile and not re.search(r"PII_MASKING_KEY\w*[= ]\S", dockerfile)
    assert "http://" not in dockerfile and "https://" not in dockerfile


@pytest.mark.parametrize(
    ("config_file", "build_arg", "package"),
    [
        ("dagster.yaml", "none", None),
        ("dagster.docker-run-launcher.yaml", "docker", "dagster-docker"),
        ("dagster.k8s.yaml", "k8s", "dagster-k8s"),
        ("dagster.ecs.yaml", "ecs", "dagster-aws"),
    ],
)
def test_each_instance_variant_names_the_image_build_arg_whose_lock_has_its_launcher(
    config_file: str, build_arg: str, package: str | None
) -> None:
    assert f"LAUNCHER={build_arg}" in (ROOT / "deploy" / config_file).read_text()
    lock = (ROOT / "deploy" / "locks" / f"{build_arg}.lock").read_text()
    launchers = {name for name in ("dagster-docker", "dagster-k8s", "dagster-aws") if f"\n{name}==" in lock}
    assert launchers == ({package} if package else set()), "only the variant's own launcher"
    if package:
        assert f"\n{package}==0.29.27 " in lock


def test_deploy_workspace_points_at_the_user_code_grpc_server() -> None:
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text())
    server = {"host": "user-code", "port": 4000, "location_name": "fetch_etl"}
    assert workspace == {"load_from": [{"grpc_server": server}]}


@pytest.mark.parametrize(
    ("config_file", "launcher"),
    [
        ("dagster.yaml", "HealthCheckedRunLauncher"),
        ("dagster.docker-run-launcher.yaml", "DockerRunLauncher"),
        ("dagster.ecs.yaml", "EcsRunLauncher"),
        ("dagster.k8s.yaml", "K8sRunLauncher"),
    ],
)
def test_instance_config_loads_on_postgres_with_the_run_queue(
    config_file: str,
    launcher: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in dagster_pg_env(database_url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_RUN_NETWORK", "fetch-etl_default")
    for key, value in ECS_ENV.items():  # the ECS launcher builds boto3 clients (no call) and resolves secret ARNs
        monkeypatch.setenv(key, value)
    if launcher == "K8sRunLauncher":  # it loads the pod's in-cluster config when constructed
        fake_pod_service_account(tmp_path, monkeypatch)
    home = dagster_home(tmp_path, ROOT / "deploy" / config_file)

    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert not queue.tag_concurrency_limits, "ingest runs are bounded by their pool, not by a tag"
        pools = instance.get_concurrency_config().pool_config
        assert pools.pool_granularity == PoolGranularity.RUN and pools.default_pool_limit == 1
        assert queue.should_block_op_concurrency_limited_runs
        assert type(instance.run_launcher).__name__ == launcher
        if launcher == "EcsRunLauncher":
            ecs = instance.run_launcher
            assert ecs.use_current_ecs_task_config and ecs.container_name == "run"
            assert {s["name"]: s["valueFrom"] for s in ecs.secrets} == {
                "PII_MASKING_KEY": ECS_ENV["PII_MASKING_KEY_SECRET_ARN"],
                "DATABASE_URL": ECS_ENV["DATABASE_URL_SECRET_ARN"],
                "DAGSTER_PG_PASSWORD": ECS_ENV["DAGSTER_PG_PASSWORD_SECRET_ARN"],
            }
            assert "SQS_RECEIVE_THREADS" in ecs.env_vars
            assert not [name for name in ecs.env_vars if SECRET_NAMES.search(name)], "secrets come from ARNs"
        if launcher == "K8sRunLauncher":
            k8s = instance.run_launcher
            assert k8s.job_namespace == K8S_ENV["DAGSTER_K8S_NAMESPACE"]
            assert k8s.service_account_name == "fetch-etl-run" and k8s.image_pull_policy == "IfNotPresent"
            assert k8s.job_image is None, "each run uses its code location's image"
            assert k8s.env_secrets == ["fetch-etl-secrets"]
            assert "SQS_RECEIVE_THREADS" in k8s.env_vars
            assert not [name for name in k8s.env_vars if SECRET_NAMES.search(name)], "secrets come from the Secret"
            assert Configuration.get_default_copy().host == "https://10.96.0.1:443"
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_settings["max_runtime_seconds"] == 1800

        run = instance.add_run(DagsterRun(job_name="ingest_logins", run_id=make_new_run_id(), tags=INGEST_TAGS))
        instance.report_engine_event("stored through the deployment's instance config", run)
        (stored,) = instance.get_runs(RunsFilter(run_ids=[run.run_id]))
        assert stored.tags == INGEST_TAGS
        assert "stored through" in instance.all_logs(run.run_id)[-1].message


def test_definitions_validate_for_the_dev_workspace() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Validation successful for code location fetch_etl.definitions" in result.stdout + result.stderr


def test_k8s_launcher_turns_a_run_into_a_job_without_a_cluster(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job dagster.k8s.yaml's launcher submits for a run, recorded instead of sent to a cluster."""
    for key, value in {**dagster_pg_env(database_url), **K8S_RUN_SETTINGS}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    created = fake_pod_service_account(tmp_path, monkeypatch)
    home = dagster_home(tmp_path, ROOT / "deploy" / "dagster.k8s.yaml")
    origin = JobPythonOrigin(
        "ingest_logins",
        RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("fetch_etl.definitions", "defs", "/opt/dagster/app"),
            container_image=K8S_RUN_IMAGE,
        ),
    )

    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.add_run(
            DagsterRun(job_name="ingest_logins", run_id=make_new_run_id(), tags=INGEST_TAGS, job_code_origin=origin)
        )
        instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

        ((namespace, job),) = created
        assert namespace == K8S_ENV["DAGSTER_K8S_NAMESPACE"]
        assert job.metadata.name == f"dagster-run-{run.run_id}"
        pod = job.spec.template.spec
        assert pod.service_account_name == "fetch-etl-run"
        (container,) = pod.containers
        assert container.image == K8S_RUN_IMAGE and container.image_pull_policy == "IfNotPresent"
        # The run's instance config travels in its command (the ConfigMap is not mounted into run pods).
        assert container.args[-3:-1] == ["api", "execute_run"] and '"InstanceRef"' in container.args[-1]
        assert [source.secret_ref.name for source in container.env_from] == ["fetch-etl-secrets"]
        env = {var.name: var.value for var in container.env}
        assert env["DAGSTER_HOME"] == "/opt/dagster/home" and env["DAGSTER_RUN_JOB_NAME"] == "ingest_logins"
        copied = {**K8S_RUN_SETTINGS, "DAGSTER_PG_HOST": dagster_pg_env(database_url)["DAGSTER_PG_HOST"]}
        assert {key: env.get(key) for key in copied} == copied, "copied from the daemon's environment"
        assert not [name for name in env if SECRET_NAMES.search(name)], "no secret value is written into the Job"
        assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
        assert container.resources.limits == {"memory": "2Gi"}

        (stored,) = instance.get_runs(RunsFilter(run_ids=[run.run_id]))
        assert stored.tags["dagster/image"] == K8S_RUN_IMAGE
        assert instance.all_logs(run.run_id)[-1].message.endswith("Kubernetes run worker job created")


def test_k8s_variant_shares_storage_queue_and_monitoring_with_the_default() -> None:
    """The cloud variants differ from deploy/dagster.yaml only in their run launcher."""
    default = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    for name in ("dagster.k8s.yaml", "dagster.ecs.yaml"):
        variant = yaml.safe_load((ROOT / "deploy" / name).read_text())
        for section in ("storage", "run_coordinator", "run_monitoring", "telemetry"):
            assert variant[section] == default[section], (name, section)
        assert set(variant) == set(default), name
