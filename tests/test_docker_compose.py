"""docker-compose.yaml, checked without Docker (these machines have no Docker engine).

The file is loaded with PyYAML (anchors and merge keys resolved as Compose resolves them) and every reference in it
is checked against the repository: files and folders it mounts or builds from, the scripts, app factories and
Airflow subcommands its services run, ports, URLs, connections, and the ${VARIABLES} it reads.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
import tomllib
from collections import Counter
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKER_DIR = ROOT / "include" / "docker"
INIT_SCRIPT = DOCKER_DIR / "airflow-init.sh"

# The services the issue asks for; all of them start with a plain `docker compose up` (no profile).
CORE_SERVICES = {
    "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "tracking",
}
LOCAL_SES_SERVICE, LOCAL_SES_PROFILE = "local-ses", "local-ses"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; `$${...}` is an escaped literal.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# ---------------------------------------------------------------------------------------------------------------
# Reading the file the way Compose does (only what these checks need)
# ---------------------------------------------------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def interpolate(value: str) -> str:
    """The value with every variable at its default (what runs when nothing is set) and `$$` unescaped."""

    def replace(match: re.Match) -> str:
        op = match["op"] or ""
        return match["arg"] if op in (":-", "-") else f"<{match['name']}>"

    return VARIABLE.sub(replace, value).replace("$$", "$")


def strings(node) -> list[str]:
    """Every string value in a YAML tree (keys are not interpolated by Compose; comments are not in the tree)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def argv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(interpolate(value))
    return [interpolate(str(part)) for part in value]


def published_ports(service: dict) -> list[tuple[int | None, int]]:
    """(host port, container port) pairs; the host port is None when Docker picks one."""
    pairs = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            pairs.append((int(interpolate(str(published))) if published else None, int(entry["target"])))
            continue
        parts = interpolate(str(entry)).split(":")
        container = int(parts[-1].split("/")[0])
        pairs.append((int(parts[-2]) if len(parts) >= 2 else None, container))
    return pairs


def bind_mounts(service: dict) -> list[tuple[Path, PurePosixPath]]:
    """(host path in the repo, container path) of every bind mount; named volumes are left out."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") == "bind":
                mounts.append((ROOT / interpolate(entry["source"]), PurePosixPath(entry["target"])))
            continue
        source, target = interpolate(entry).split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append(((ROOT / source).resolve(), PurePosixPath(target)))
    return mounts


def named_volumes(service: dict) -> set[str]:
    names = set()
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") == "volume":
                names.add(entry["source"])
            continue
        source = interpolate(entry).split(":")[0]
        if not source.startswith((".", "/", "~")):
            names.add(source)
    return names


def repo_path_for(service: dict, container_path: str) -> Path | None:
    """The repository file a container path comes from, through the service's bind mounts (longest match)."""
    path = PurePosixPath(container_path)
    best = None
    for host, target in bind_mounts(service):
        inside = path == target or target in path.parents
        if inside and (best is None or len(target.parts) > len(best[1].parts)):
            best = (host, target)
    if best is None:
        return None
    host, target = best
    return host.joinpath(*path.relative_to(target).parts)


def runs_airflow_entrypoint(service: dict) -> bool:
    """Services on the project image without their own entrypoint: the image's entrypoint runs `airflow <command>`
    (unless the command starts with bash or python)."""
    return "build" in service and "entrypoint" not in service


def connection(service: dict, conn_id: str) -> dict:
    return json.loads(environment(service)[f"AIRFLOW_CONN_{conn_id.upper()}"])


def dockerfile() -> Path:
    build = services()["airflow-apiserver"]["build"]
    return ROOT / build["context"] / build["dockerfile"]


def requirement_pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()  # a held pin carries its reason as a comment
        if re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==\S+", line, flags=re.IGNORECASE):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def load_stack_init():
    spec = importlib.util.spec_from_file_location("compose_stack_init", DOCKER_DIR / "stack_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def airflow_cli() -> tuple[set[tuple[str, ...]], dict[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path of the installed Airflow CLI: the same pins as the image (requirements.txt), so `airflow
    celery ...` comes from the installed Celery provider."""
    from airflow.cli.cli_parser import get_parser

    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    parsers[(*prefix, name)] = sub
                    walk(sub, (*prefix, name))

    walk(get_parser(), ())
    return set(parsers), parsers


def airflow_command(tokens: list[str], known: set[tuple[str, ...]]) -> tuple[str, ...]:
    """The command path `tokens` (without the leading `airflow`) names: two words for groups, else one."""
    first = tuple(tokens[:1])
    is_group = any(len(cmd) > 1 and cmd[:1] == first for cmd in known)
    return tuple(tokens[:2]) if is_group else first


# ---------------------------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------------------------


def test_every_service_the_issue_lists_starts_with_a_plain_up():
    missing = CORE_SERVICES - set(services())
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"
    profiled = {name for name in CORE_SERVICES if services()[name].get("profiles")}
    assert not profiled, f"these must start without a --profile: {sorted(profiled)}"


def test_local_ses_is_a_moto_server_behind_its_own_profile():
    service = services().get(LOCAL_SES_SERVICE)
    assert service is not None, "no local SES service"
    assert LOCAL_SES_PROFILE in service.get("profiles", [])
    command = argv(service.get("entrypoint")) + argv(service.get("command"))
    scripts = [repo_path_for(service, part) for part in command if part.startswith("/opt/")]
    text = " ".join(command) + "".join(p.read_text() for p in scripts if p is not None and p.is_file())
    assert "moto_server -H 0.0.0.0 -p 5000" in text, "local SES must run moto_server on 0.0.0.0:5000"
    assert 5000 in {container for _, container in published_ports(service)}


def test_airflow_services_run_real_airflow_subcommands(airflow_cli):
    known, _ = airflow_cli
    checked = 0
    for name, service in services().items():
        if not runs_airflow_entrypoint(service):
            continue
        tokens = argv(service.get("command"))
        if tokens and tokens[0] in ("bash", "python"):
            continue
        tokens = tokens[1:] if tokens[:1] == ["airflow"] else tokens
        command = airflow_command(tokens, known)
        assert command in known, f"{name}: `airflow {' '.join(tokens)}` is not an Airflow command"
        checked += 1
    assert checked >= 5, "expected the api-server, scheduler, dag-processor, triggerer and worker to be checked"


def test_healthchecks_and_init_script_use_real_airflow_subcommands(airflow_cli):
    known, parsers = airflow_cli
    texts = [INIT_SCRIPT.read_text()]
    for service in services().values():
        texts.extend(str(part) for part in (service.get("healthcheck") or {}).get("test", []))
    commands = []
    for text in texts:
        for line in text.splitlines():
            match = re.match(r"\s*(?:exec\s+)?airflow\s+(.*)", interpolate(line))
            if match:
                commands.append(shlex.split(match[1].replace("\\", ""))[:2])
    assert len(commands) >= 5
    for tokens in commands:
        command = airflow_command(tokens, known)
        assert command in known, f"`airflow {' '.join(tokens)}` is not an Airflow command"
    job_types = {action.dest: action.choices for action in parsers[("jobs", "check")]._actions}["job_type"]
    for text in texts:
        for job_type in re.findall(r"--job-type\s+(\w+)", text):
            assert job_type in job_types, f"airflow jobs check has no job type {job_type}"


def test_tracking_runs_the_app_factory_under_gunicorn_on_its_published_port():
    service = services()["tracking"]
    command = argv(service.get("command"))
    assert command[0] == "gunicorn"
    app = command[-1]
    module, _, factory = app.partition(":")
    factory = factory.removesuffix("()")
    package = ROOT.joinpath(*module.split("."))
    source = package / "__init__.py" if package.is_dir() else package.with_suffix(".py")
    assert source.is_file(), f"gunicorn app {app}: no module file {source.relative_to(ROOT)}"
    functions = {node.name for node in ast.parse(source.read_text()).body if isinstance(node, ast.FunctionDef)}
    assert factory in functions, f"{source.relative_to(ROOT)} defines no {factory}()"
    bind = command[command.index("--bind") + 1]
    assert int(bind.rsplit(":", 1)[1]) in {container for _, container in published_ports(service)}


def test_workers_use_celery_and_can_be_scaled():
    worker = services()["airflow-worker"]
    assert environment(worker)["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert "container_name" not in worker, "a fixed container_name prevents --scale airflow-worker=N"
    assert not worker.get("ports"), "a published port prevents --scale airflow-worker=N"


def celery_app_paths() -> dict[str, str]:
    """`celery --app MODULE.ATTR` of every service's command and healthcheck, by service name."""
    paths = {}
    for name, service in services().items():
        texts = [*argv(service.get("command")), *(str(p) for p in (service.get("healthcheck") or {}).get("test", []))]
        for text in texts:
            for match in re.finditer(r"\bcelery\s+(?:--app|-A)[\s=]+(\S+)", interpolate(text)):
                paths[name] = match[1]
    return paths


def test_celery_app_path_exists_in_the_installed_provider():
    from celery import Celery

    paths = celery_app_paths()
    assert "airflow-worker" in paths, "the worker's healthcheck must ping its Celery app"
    for name, path in paths.items():
        module, _, attribute = path.rpartition(".")
        app = getattr(importlib.import_module(module), attribute, None)
        assert isinstance(app, Celery), f"{name}: {path} is not a Celery app of the installed provider"


def test_installed_celery_stack_is_the_pinned_one():
    """The tests (and `make`) run the pins the image installs, so the CLI and app checks above are the image's."""
    for name in ("apache-airflow-providers-celery", "celery", "kombu", "redis", "flower"):
        assert importlib.metadata.version(name) == requirement_pin(name), f"installed {name} is not the pin"


def test_pinned_redis_satisfies_what_celery_and_kombu_ask_of_it():
    """celery[redis] pulls in kombu[redis], whose metadata bounds redis-py: the pin must lie inside that bound (kombu
    5.6 capped it below 6.5; kombu 5.7 allows redis < 9, so the campaign code keeps redis 8)."""
    checked = 0
    for dist in ("celery", "kombu"):
        for line in importlib.metadata.requires(dist) or []:
            requirement = Requirement(line)
            if requirement.marker is None or not requirement.marker.evaluate({"extra": "redis"}):
                continue
            if requirement.marker.evaluate({"extra": ""}):
                continue  # not specific to the redis extra (python_version markers and the like)
            pin = requirement_pin(requirement.name)
            assert requirement.specifier.contains(pin, prereleases=True), (
                f"{dist}[redis] requires {requirement}, requirements.txt pins {requirement.name}=={pin}")
            checked += 1
    assert checked >= 2, "expected celery[redis] -> kombu[redis] and kombu[redis] -> redis"


def pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUN steps (continuation lines joined, `&&` and `;`
    split as the shell splits them, quotes respected)."""
    installs = []
    for line in dockerfile().read_text().replace("\\\n", " ").splitlines():
        if not line.startswith("RUN "):
            continue
        lexer = shlex.shlex(line.removeprefix("RUN "), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|"):
                if command[:2] == ["pip", "install"]:
                    installs.append(command[2:])
                command = []
            else:
                command.append(token)
    return installs


def test_image_installs_exactly_requirements_txt_and_no_dependency_without_deps():
    installs = pip_installs()
    requirement_files = [args[args.index("-r") + 1] for args in installs if "-r" in args]
    assert requirement_files == ["requirements.txt"], f"the image installs {requirement_files}"
    copied = [line.split()[-2] for line in dockerfile().read_text().splitlines() if line.startswith("COPY")]
    assert "requirements.txt" in copied
    for args in installs:
        named = [a for a in args if not a.startswith("-") and a not in requirement_files]
        if "-r" in args:
            assert "--no-deps" not in args, "requirements.txt must go in with its dependencies checked by pip"
            assert not named, f"the image installs {named} beside requirements.txt"
        else:
            # the one other install: the project itself, editable, whose dependencies requirements.txt holds
            assert args == ["--no-cache-dir", "--no-deps", "-e", "."], f"unexpected `pip install {shlex.join(args)}`"
    assert len(installs) == 2
    assert not list(DOCKER_DIR.glob("*.txt")), "a second requirements file beside the image"


# ---------------------------------------------------------------------------------------------------------------
# Files the compose file and the image refer to
# ---------------------------------------------------------------------------------------------------------------


def test_bind_mounted_host_paths_exist_in_the_repo():
    for name, service in services().items():
        for host, _ in bind_mounts(service):
            assert host.exists(), f"{name} mounts {host.relative_to(ROOT)}, which is not in the repository"


def test_named_volumes_are_declared():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        undeclared = named_volumes(service) - declared
        assert not undeclared, f"{name} uses undeclared volumes {sorted(undeclared)}"


def test_build_context_dockerfile_and_copied_files_exist():
    for name, service in services().items():
        build = service.get("build")
        if build is None:
            continue
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {build['context']} missing"
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
        assert (context / (build["dockerfile"] + ".dockerignore")).is_file(), "the build context would ship .venv/"
    copied = 0
    for line in dockerfile().read_text().splitlines():
        if line.startswith(("COPY", "ADD")):
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                if not any(ch in source for ch in "*?["):  # globs may match nothing (README.md is optional)
                    assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
                    copied += 1
    assert copied >= 4


def test_scripts_the_services_run_exist_in_the_repo():
    checked = 0
    for name, service in services().items():
        command = argv(service.get("entrypoint")) + argv(service.get("command"))
        for part in command:
            if part.startswith("/opt/airflow/project/"):
                source = repo_path_for(service, part)
                assert source is not None, f"{name} runs {part}, which no bind mount of the service provides"
                assert source.is_file(), f"{name} runs {part}: {source.relative_to(ROOT)} does not exist"
                # The image copies include/ as well, so the script is there even without the bind mount.
                assert source.is_relative_to(ROOT / "include")
                checked += 1
    assert checked >= 2


def test_init_helper_imports_only_what_the_project_defines():
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tree = ast.parse((DOCKER_DIR / "stack_init.py").read_text())
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        top, *rest = node.module.split(".")
        if top not in package_dirs:
            continue
        base = ROOT / package_dirs[top] / Path(*rest) if rest else ROOT / package_dirs[top]
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        assert source.is_file(), f"stack_init.py imports {node.module}, which has no module file"
        defined = set()
        for item in ast.parse(source.read_text()).body:
            if isinstance(item, ast.FunctionDef | ast.ClassDef):
                defined.add(item.name)
            elif isinstance(item, ast.Assign):
                defined.update(t.id for t in item.targets if isinstance(t, ast.Name))
        for alias in node.names:
            assert alias.name in defined, f"{node.module} defines no {alias.name}"
            checked += 1
    assert checked >= 2


def test_airflow_reads_the_secret_files_airflow_init_writes():
    stack_init = load_stack_init()
    env = environment(services()["airflow-scheduler"])
    commands = {key: value for key, value in env.items() if key.endswith("_CMD")}
    assert {"AIRFLOW__CORE__FERNET_KEY_CMD", "AIRFLOW__API_AUTH__JWT_SECRET_CMD"} <= set(commands)
    for key, command in commands.items():
        program, path = shlex.split(command)
        assert program == "cat"
        assert PurePosixPath(path).parent == PurePosixPath(str(stack_init.SECRETS_DIR)), key
        assert PurePosixPath(path).name in stack_init.SECRETS, f"{key}: airflow-init never writes {path}"
    passwords = PurePosixPath(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert passwords.parent == PurePosixPath(str(stack_init.SECRETS_DIR))
    assert f'"{passwords.name}"' in (DOCKER_DIR / "stack_init.py").read_text()
    for name in ("airflow-init", "airflow-apiserver", "airflow-scheduler"):
        mounts = {interpolate(v) for v in services()[name]["volumes"] if isinstance(v, str)}
        assert f"airflow-secrets:{stack_init.SECRETS_DIR}" in mounts, f"{name} does not mount the secrets volume"


def test_tracking_certificate_is_where_airflow_init_puts_it():
    stack_init = load_stack_init()
    command = argv(services()["tracking"]["command"])
    for flag, file_name in (("--certfile", "tracking.crt"), ("--keyfile", "tracking.key")):
        assert PurePosixPath(command[command.index(flag) + 1]) == PurePosixPath(str(stack_init.TLS_DIR)) / file_name
    init_volumes = {interpolate(v).split(":")[0] for v in services()["airflow-init"]["volumes"]}
    tracking_volumes = {interpolate(v).split(":")[0] for v in services()["tracking"]["volumes"]}
    assert "tracking-tls" in init_volumes & tracking_volumes


# ---------------------------------------------------------------------------------------------------------------
# Ports, URLs and connections
# ---------------------------------------------------------------------------------------------------------------


def test_published_host_ports_are_unique_across_services():
    owners = Counter()
    for service in services().values():
        for host, _ in published_ports(service):
            if host is not None:
                owners[host] += 1
    assert not [port for port, count in owners.items() if count > 1], owners


def test_tracking_base_url_uses_the_published_tracking_port():
    tracking = services()["tracking"]
    command = argv(tracking["command"])
    listens_on = int(command[command.index("--bind") + 1].rsplit(":", 1)[1])
    url = urlsplit(environment(services()["airflow-worker"])["TRACKING_BASE_URL"])
    assert url.scheme == "https", "links and List-Unsubscribe are https, as in production"
    assert (url.port or 443) in {host for host, container in published_ports(tracking) if container == listens_on}
    assert environment(tracking)["TRACKING_BASE_URL"] == environment(services()["airflow-worker"])["TRACKING_BASE_URL"]


def test_execution_api_url_and_healthcheck_point_at_the_api_server_port():
    api = services()["airflow-apiserver"]
    container_ports = {container for _, container in published_ports(api)}
    url = urlsplit(environment(services()["airflow-worker"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver"
    assert url.hostname in services()
    assert url.port in container_ports
    assert url.path == "/execution/"
    health = urlsplit(next(p for p in api["healthcheck"]["test"] if str(p).startswith("http")))
    assert health.port in container_ports
    assert health.path == "/api/v2/monitor/health"


def test_aws_connection_defaults_to_the_local_ses_service_per_aws_service():
    aws = connection(services()["airflow-worker"], "aws_default")
    # no global endpoint_url: going live replaces each service's endpoint, and STS/SNS never go to SES
    assert "endpoint_url" not in aws["extra"]
    for service in ("sesv2", "sts", "sns"):
        endpoint = urlsplit(aws["extra"]["service_config"][service]["endpoint_url"])
        assert endpoint.hostname == LOCAL_SES_SERVICE
        assert endpoint.port in {container for _, container in published_ports(services()[LOCAL_SES_SERVICE])}
    assert aws["conn_type"] == "aws"
    assert aws["extra"]["region_name"]


def test_connections_name_the_compose_services():
    worker = services()["airflow-worker"]
    db, redis_conn = connection(worker, "campaign_db"), connection(worker, "redis_default")
    assert db["host"] in services()
    assert db["conn_type"] == "postgres"
    assert redis_conn["host"] in services()
    assert redis_conn["conn_type"] == "redis"
    broker = urlsplit(environment(worker)["AIRFLOW__CELERY__BROKER_URL"])
    assert broker.hostname == redis_conn["host"]
    assert broker.path.strip("/") != str(redis_conn["extra"]["db"]), "the limiter must not share Celery's Redis db"


def test_tracking_service_and_airflow_read_the_same_settings():
    shared = ("AIRFLOW_CONN_", "TRACKING_", "SES_", "SNS_")
    worker, tracking = environment(services()["airflow-worker"]), environment(services()["tracking"])
    worker_settings = {k: v for k, v in worker.items() if k.startswith(shared)}
    tracking_only = {"TRACKING_SPOOL_DIR"}  # where the tracking service spools events: nothing for Airflow
    tracking_settings = {k: v for k, v in tracking.items() if k.startswith(shared) and k not in tracking_only}
    assert worker_settings == tracking_settings
    assert {"AIRFLOW_CONN_CAMPAIGN_DB", "TRACKING_SECRET_KEYS", "TRACKING_SPOOL_DIR"} <= set(tracking)


def test_tracking_spool_is_a_named_volume_owned_by_the_container_user():
    tracking = services()["tracking"]
    spool_dir = environment(tracking)["TRACKING_SPOOL_DIR"]
    mounts = {interpolate(v).split(":")[1]: interpolate(v).split(":")[0] for v in tracking["volumes"]}
    assert mounts.get(spool_dir) in compose()["volumes"], "the spool must outlive the container"
    # a fresh named volume takes the owner and mode of the image's mount point: airflow:0, group-writable
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    for step in ("mkdir -p", "chown airflow:0", "chmod 2770"):
        assert re.search(rf"{step} [^\n]*{re.escape(spool_dir)}", dockerfile), f"Dockerfile: {step} {spool_dir}"


def test_postgres_init_creates_the_campaign_database_the_connection_uses():
    sql = (DOCKER_DIR / "postgres-init.sql").read_text()
    postgres = services()["postgres"]
    mounted = [(host, target) for host, target in bind_mounts(postgres) if host.name == "postgres-init.sql"]
    assert mounted
    assert mounted[0][1].parent == PurePosixPath("/docker-entrypoint-initdb.d")
    db = connection(services()["airflow-worker"], "campaign_db")
    assert re.search(rf"CREATE ROLE {db['login']} LOGIN PASSWORD '{db['password']}'", sql)
    assert re.search(rf"CREATE DATABASE {db['schema']} OWNER {db['login']}", sql)
    metadata = urlsplit(environment(services()["airflow-worker"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    pg_env = environment(postgres)
    assert (metadata.username, metadata.password, metadata.path.strip("/")) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"])
    assert metadata.hostname == "postgres"


def test_depends_on_only_names_services_that_will_be_running():
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        for target in depends if isinstance(depends, dict | list) else []:
            assert target in services(), f"{name} depends on unknown service {target}"
            if not service.get("profiles"):
                assert not services()[target].get("profiles"), f"{name} depends on profiled service {target}"


# ---------------------------------------------------------------------------------------------------------------
# Variables and versions
# ---------------------------------------------------------------------------------------------------------------


def documented_variables() -> set[str]:
    """Names a user can look up: docs/configuration.md when it exists, and the names include/campaigns/config.py
    reads (quoted UPPER_CASE strings)."""
    names = set(re.findall(r"[\"']([A-Z][A-Z0-9_]{2,})[\"']", (ROOT / "include/campaigns/config.py").read_text()))
    docs = ROOT / "docs" / "configuration.md"
    if docs.exists():
        names |= set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", docs.read_text()))
    return names


def test_every_variable_has_a_default_or_is_documented():
    documented = documented_variables()
    undocumented = set()
    seen = 0
    for value in strings(compose()):
        for match in VARIABLE.finditer(value):
            seen += 1
            if match["op"] in (":-", "-"):
                continue
            name = match["name"]
            if name.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) or name in documented:
                continue
            undocumented.add(name)
    assert seen > 10
    assert not undocumented, f"no default and not documented: {sorted(undocumented)}"
    # Unbraced $VAR is easy to misread and has no default syntax: the file uses ${VAR} only.
    assert not [v for v in strings(compose()) if re.search(r"(?<!\$)\$[A-Za-z_]", v)]


def test_image_airflow_version_equals_the_requirements_pin():
    pin = requirement_pin("apache-airflow")
    base = re.search(r"^FROM\s+(\S+)", dockerfile().read_text(), flags=re.MULTILINE)[1]
    repository, _, tag = base.partition(":")
    assert repository == "apache/airflow"
    assert tag == f"{pin}-python3.11", f"image tag {tag} does not match apache-airflow=={pin} on Python 3.11"
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires_python
    image = interpolate(services()["airflow-apiserver"]["image"])
    assert pin in image.rpartition(":")[2], f"the built image is tagged {image}, not with Airflow {pin}"


def test_send_tasks_are_planned_for_the_pool_airflow_init_creates():
    # a task cannot read the pool: the workers read SES_POOL_SLOTS, the very value airflow-init sizes the pool from
    slots = environment(services()["airflow-init"])["SES_POOL_SLOTS"]
    assert environment(services()["airflow-worker"])["SES_POOL_SLOTS"] == slots
    assert environment(services()["airflow-scheduler"])["SES_POOL_SLOTS"] == slots


def test_airflow_init_creates_the_ses_pool_from_ses_pool_slots():
    script = INIT_SCRIPT.read_text()
    assert re.search(r'^airflow pools set ses "\$\{SES_POOL_SLOTS\}"', script, flags=re.MULTILINE)
    slots = environment(services()["airflow-init"])["SES_POOL_SLOTS"]
    assert slots.isdigit()
    assert int(slots) > 0
    assert "airflow db migrate" in script
    assert "airflow connections import" in script
    assert "campaign-db" in script, "airflow-init must migrate the campaign database"
