"""The local stack behind `make up`: Airflow (LocalExecutor, or CeleryExecutor with its workers; metadata in the
project's PostgreSQL), the tracking service under gunicorn over HTTPS, and a local SES endpoint (moto server), all
started by pid file."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

from devstack import services
from devstack.hostname import WORKER_HOSTNAME_ENV
from devstack.processes import StackError, read_pid, running, spawn, stop, wait_until
from devstack.settings import EXECUTORS, StackSettings

VENV_BIN = Path(sys.executable).parent
DEMO_SENDER_DOMAIN = "example.com"
# The configuration set every send names; the local SES publishes its events to SNS_TOPIC_ARN, as SES would.
CONFIGURATION_SET = "campaign-events"
SNS_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ses-events"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
AIRFLOW_USERS = {"admin": "admin", "viewer": "viewer"}  # simple auth manager: user -> role
# Celery's Redis visibility timeout, Airflow's default made explicit: a task not acknowledged within it is handed to
# another worker *even if it is still running* (Airflow acknowledges late, at the end of the task), so a lower value
# would run a long send task twice at once. A dead worker's task is noticed by the task heartbeat timeout instead.
CELERY_VISIBILITY_TIMEOUT = 86_400


def _secret(s: StackSettings, name: str, make=lambda: secrets.token_urlsafe(32)) -> str:
    """A secret generated once per checkout and kept in .local/secrets (git-ignored)."""
    folder = s.state_dir / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def connections(s: StackSettings, database: str | None = None) -> dict[str, dict]:
    """The three connections the DAGs and the tracking service use, as Airflow connection JSON."""
    return {
        "campaign_db": {
            "conn_type": "postgres", "host": "127.0.0.1", "port": s.pg_port, "login": s.pg_user,
            "password": s.pg_password, "schema": database or s.campaign_db,
        },
        "redis_default": {"conn_type": "redis", "host": "127.0.0.1", "port": s.redis_port,
                          "extra": {"db": s.redis_db}},
        "aws_default": {
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": s.ses_endpoint},
        },
    }


def app_env(s: StackSettings) -> dict[str, str]:
    """Settings shared by the Airflow workers and the tracking service (one .env configures both)."""
    env = {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections(s).items()}
    env.update(
        TRACKING_BASE_URL=s.tracking_base_url,
        TRACKING_SECRET_KEYS=_secret(s, "tracking-secret-key"),
        SES_FROM_EMAIL=f"news@{DEMO_SENDER_DOMAIN}",
        SES_FROM_NAME="Example News",
        SNS_TOPIC_ARNS=SNS_TOPIC_ARN,
        # the local SES has no account limits: this stands in for MaxSendRate (moto alone takes ~370 sends/s here)
        SES_LOCAL_MAX_SEND_RATE=str(s.ses_local_max_send_rate),
        SES_LOCAL_MAX_24H_SEND=str(s.ses_local_max_24h_send),
        SES_SENDING_RATE=str(s.ses_rate),
        SEND_TASK_SECONDS=str(s.send_task_seconds),
        # the pool's size as the plan reads it (tasks cannot read pools): the same value setup_airflow creates it with
        SES_POOL_SLOTS=str(s.ses_pool_slots),
        # Dev stack only: there is no real SNS here, so /webhooks/ses trusts a locally generated signing
        # certificate (the service logs a warning at start). The SigningCertURL and TopicArn checks still run.
        SNS_TEST_CERT_PEM=str(sns_test_signing_key(s)[1]),
        # Dev stack only, as narrow: the service confirms the SNS subscription at the local SES instead of AWS,
        # after the same SubscribeURL check as in production (it logs a warning at start).
        SNS_TEST_CONFIRM_URL=f"{s.ses_endpoint}/sns/confirm",
        SES_CONFIGURATION_SET=CONFIGURATION_SET,
    )
    return env


def _self_signed(key_path: Path, cert_path: Path, *, common_name: str, key_kind: str, san: bool = False) -> None:
    """Write a private key (0600) and a self-signed certificate for it, valid 825 days, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if key_kind == "rsa"
           else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=825)))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def sns_test_signing_key(s: StackSettings) -> tuple[Path, Path]:
    """(private key, certificate) PEM files that sign SNS messages for the dev stack's /webhooks/ses (RSA, as SNS
    signs)."""
    key_path, cert_path = s.state_dir / "tls" / "sns-test.key", s.state_dir / "tls" / "sns-test.pem"
    if not (key_path.exists() and cert_path.exists()):
        _self_signed(key_path, cert_path, common_name="sns.amazonaws.com (local test)", key_kind="rsa")
    return key_path, cert_path


def airflow_env(s: StackSettings, home: Path | None = None) -> dict[str, str]:
    home = home or s.state_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    # admin acts; viewer (the Viewer role) sees the Campaigns view and is refused every action. Both passwords are
    # kept in .local/secrets/airflow-<user>-password; a stack made before the viewer existed gets it added.
    wanted = {user: _secret(s, f"airflow-{user}-password", lambda: secrets.token_urlsafe(12)) for user in AIRFLOW_USERS}
    if not passwords.exists() or json.loads(passwords.read_text()) != wanted:
        passwords.write_text(json.dumps(wanted))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(app_env(s))
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(s.root / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(s.root / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR=s.airflow_executor,
        AIRFLOW__CORE__PARALLELISM=str(s.airflow_parallelism),
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__FERNET_KEY=_secret(s, "fernet-key", _fernet_key),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{user}:{role}" for user, role in AIRFLOW_USERS.items()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{s.airflow_url}/execution/",
        AIRFLOW__API__PORT=str(s.airflow_port),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__BASE_URL=s.airflow_url,
        AIRFLOW__API_AUTH__JWT_SECRET=_secret(s, "jwt-secret"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=_airflow_db_url(s),
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(s.log_dir / "airflow"),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="30",
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=str(s.task_heartbeat_timeout),
    )
    env.update(celery_env(s))
    return env


def celery_env(s: StackSettings) -> dict[str, str]:
    """Airflow's Celery settings when the stack runs the CeleryExecutor (nothing on LocalExecutor): the broker on the
    stack's own Redis, results in Airflow's metadata database, and a hostname callable that names each worker."""
    if s.executor != "celery":
        return {}
    return {
        # Redis rather than RabbitMQ: the stack already installs and starts it (one fewer daemon); a db of its own
        "AIRFLOW__CELERY__BROKER_URL": s.redis_url(s.celery_broker_db),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _airflow_db_url(s),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(s.celery_concurrency),
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(CELERY_VISIBILITY_TIMEOUT),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.hostname.worker_hostname",
    }


def _airflow_db_url(s: StackSettings) -> str:
    """SQLAlchemy URL of the stack's Airflow metadata database (psycopg2, Airflow's tested driver)."""
    return s.pg_dsn(s.airflow_db).replace("postgresql://", "postgresql+psycopg2://")


def _airflow(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([str(VENV_BIN / "airflow"), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"`airflow {' '.join(args)}` failed:\n{result.stderr[-3000:]}")


def _http_ok(url: str, *, insecure_tls: bool = False) -> bool:
    import ssl

    context = ssl._create_unverified_context() if insecure_tls else None  # noqa: S323 - our own self-signed cert
    with urllib.request.urlopen(url, timeout=3, context=context) as response:  # noqa: S310 - local URLs only
        return response.status == 200


def pools(s: StackSettings) -> dict[str, dict]:
    """The Airflow pools the stack creates (`airflow pools import` format): `ses`, sized as app_env tells the tasks."""
    description = "Concurrent send_batch tasks across all campaigns (the Redis limiter caps the rate)"
    return {"ses": {"slots": s.ses_pool_slots, "include_deferred": False, "description": description}}


def setup_airflow(s: StackSettings) -> dict[str, str]:
    """Migrate the metadata DB, create the `ses` pool and the three connections (idempotent)."""
    env = airflow_env(s)
    _airflow(env, "db", "migrate")
    path = s.state_dir / "airflow" / "pools.json"
    path.write_text(json.dumps(pools(s)))
    _airflow(env, "pools", "import", str(path))
    conns = s.state_dir / "airflow" / "connections.json"
    conns.write_text(json.dumps(connections(s)))
    conns.chmod(0o600)
    _airflow(env, "connections", "import", "--overwrite", str(conns))
    return env


def self_signed_certificate(s: StackSettings) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 so tracking and List-Unsubscribe URLs are https, as in production."""
    cert, key = s.state_dir / "tls" / "tracking.crt", s.state_dir / "tls" / "tracking.key"
    if not (cert.exists() and key.exists()):
        _self_signed(key, cert, common_name="localhost", key_kind="ec", san=True)
    return cert, key


def start_ses(s: StackSettings) -> None:
    # moto's own server app behind our recording layer, inbox and SNS event publisher (devstack.local_ses)
    key, cert = sns_test_signing_key(s)
    tracking_cert, _ = self_signed_certificate(s)
    spawn("ses", [sys.executable, "-m", "devstack.local_ses", "--host", "127.0.0.1", "--port", str(s.ses_port),
                  "--sns-endpoint", f"{s.tracking_base_url}/webhooks/ses", "--sns-topic-arn", SNS_TOPIC_ARN,
                  "--sns-signing-key", str(key), "--sns-signing-cert", str(cert), "--sns-ca-file", str(tracking_cert)],
          run_dir=s.run_dir, log_dir=s.log_dir)
    wait_until(lambda: _http_ok(f"{s.ses_endpoint}/moto-api/data.json"), what="local SES (devstack.local_ses)",
               timeout=60, log=s.log_dir / "ses.log")
    import boto3

    client = boto3.client("sesv2", endpoint_url=s.ses_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 - moto
    # A verified domain identity lets any address at it send, like a verified domain in real SES; with Easy DKIM, so
    # GetEmailIdentity reports signing on and status SUCCESS as for a properly set up domain (moto signs nothing, so
    # preflight and ses-doctor still call DKIM "not checkable locally"; moto's SESv2 has no custom MAIL FROM).
    client.create_email_identity(EmailIdentity=DEMO_SENDER_DOMAIN,
                                 DkimSigningAttributes={"NextSigningKeyLength": "RSA_2048_BIT"})
    with contextlib.suppress(client.exceptions.AlreadyExistsException):  # it kept running across `make up`s
        client.create_configuration_set(ConfigurationSetName=CONFIGURATION_SET)


def subscribe_events(s: StackSettings, timeout: float = 90) -> None:
    """Start the local SES's SNS subscription to the tracking service and wait until the service confirmed it (only
    then are events delivered, as with SNS)."""

    def status() -> dict:
        with urllib.request.urlopen(f"{s.ses_endpoint}/sns/status", timeout=5) as response:  # noqa: S310
            return json.load(response)

    if status()["confirmed"]:
        return
    request = urllib.request.Request(f"{s.ses_endpoint}/sns/subscribe", method="POST")  # noqa: S310
    urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 - the local SES
    wait_until(lambda: status()["confirmed"], what="the SNS subscription of /webhooks/ses (confirmed by the service)",
               timeout=timeout, log=s.log_dir / "ses.log")


def local_ses_messages(s: StackSettings, timeout: float = 600) -> list[dict]:
    """Every raw message the local SES (moto server) accepted: id, source, destinations (moto lists a raw
    message's recipient twice: count messages, not destinations) and raw_data. The send path sends raw MIME only."""
    with urllib.request.urlopen(f"{s.ses_endpoint}/moto-api/data.json", timeout=timeout) as response:  # noqa: S310
        return json.load(response)["ses"]["RawMessage"]


def tracking_env(s: StackSettings) -> dict[str, str]:
    """Settings of the tracking service alone: opens and clicks wait in .local for the drainer threads, kept across
    restarts like the databases (`make clean` deletes them)."""
    return {"TRACKING_SPOOL_DIR": str(s.state_dir / "tracking-spool")}


def start_tracking(s: StackSettings) -> None:
    cert, key = self_signed_certificate(s)
    env = {**os.environ, **app_env(s), **tracking_env(s)}
    spawn("tracking", [str(VENV_BIN / "gunicorn"), "--bind", f"127.0.0.1:{s.tracking_port}", "--workers", "2",
                       "--worker-class", "gthread", "--threads", "4", "--keep-alive", "30",
                       "--certfile", str(cert), "--keyfile", str(key), "--access-logfile", "-",
                       "tracking_service:create_app()"],
          run_dir=s.run_dir, log_dir=s.log_dir, env=env, cwd=s.root)
    wait_until(lambda: _http_ok(f"{s.tracking_base_url}/healthz", insecure_tls=True), what="tracking service",
               timeout=60, log=s.log_dir / "tracking.log")


def running_executor(s: StackSettings) -> str | None:
    """The STACK_EXECUTOR the stack's running Airflow was started with (None: its scheduler is not running)."""
    marker = s.run_dir / "executor"
    if not marker.exists() or not running(s.run_dir / "airflow-scheduler.pid"):
        return None
    return marker.read_text().strip()


def check_executor_unchanged(s: StackSettings) -> None:
    """Refuse to `up` on another executor while Airflow still runs on the one it was started with: `up` leaves
    running processes as they are, so the scheduler would go on with the old executor."""
    started = running_executor(s)
    if started and started != s.executor:
        raise StackError(f"the stack's Airflow runs with STACK_EXECUTOR={started}, not {s.executor}: stop it first "
                         f"(`make down`, or `python -m devstack down` with the same STACK_INSTANCE), then `up` again")


def start_airflow(s: StackSettings, env: dict[str, str]) -> None:
    check_executor_unchanged(s)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    (s.run_dir / "executor").write_text(f"{s.executor}\n")
    for component in AIRFLOW_COMPONENTS:
        spawn(f"airflow-{component}", [str(VENV_BIN / "airflow"), component], run_dir=s.run_dir,
              log_dir=s.log_dir, env=env)
    start_celery_workers(s, env)
    wait_until(lambda: _http_ok(f"{s.airflow_url}/api/v2/monitor/health"), what="Airflow api-server",
               timeout=180, log=s.log_dir / "airflow-api-server.log")
    for name in s.celery_worker_names:
        wait_until(lambda name=name: name in celery_workers_answering(s), what=f"Celery worker {name}",
                   timeout=180, log=s.log_dir / f"{name}.log")


def celery_node(name: str) -> str:
    """The Celery node name of worker `name` (what `celery inspect ping` answers with)."""
    return f"{name}@{socket.gethostname()}"


def start_celery_workers(s: StackSettings, env: dict[str, str]) -> None:
    """One `airflow celery worker` per name in s.celery_worker_names, each with its Airflow hostname in the env its
    task processes inherit. --skip-serve-logs: every worker writes task logs to the stack's shared log folder, which
    the api-server reads directly (and two log servers on this host would fight over one port)."""
    for name in s.celery_worker_names:
        spawn(name, [str(VENV_BIN / "airflow"), "celery", "worker", "--concurrency", str(s.celery_concurrency),
                     "--celery-hostname", celery_node(name), "--skip-serve-logs"],
              run_dir=s.run_dir, log_dir=s.log_dir, env={**env, WORKER_HOSTNAME_ENV: name})


def celery_workers_answering(s: StackSettings, timeout: float = 1.0) -> set[str]:
    """The stack's Celery workers that answer a broadcast ping on its broker (by Airflow hostname)."""
    from celery import Celery

    app = Celery(broker=s.redis_url(s.celery_broker_db))
    try:
        replies = app.control.ping(timeout=timeout)
    finally:
        app.close()
    return {node.split("@", 1)[0] for reply in replies for node in reply}


def celery_worker_pid(s: StackSettings, name: str) -> int | None:
    """The pid of Celery worker `name`'s main process (its pid file), or None when it is not running."""
    pid_file = s.run_dir / f"{name}.pid"
    return read_pid(pid_file) if running(pid_file) else None


def up(s: StackSettings) -> None:
    services.start_postgres(s)
    services.start_redis(s)
    services.ensure_databases(s)
    services.migrate(s)
    start_ses(s)
    start_tracking(s)
    subscribe_events(s)
    env = setup_airflow(s)
    start_airflow(s, env)
    write_env_file(s)
    password = _secret(s, "airflow-admin-password")
    print(
        f"\nLocal stack{f' instance {s.instance!r}' if s.instance else ''} is up.\n"
        f"  Executor          {s.airflow_executor}"
        + (f" ({len(s.celery_worker_names)} workers x {s.celery_concurrency}, broker "
           f"{s.redis_url(s.celery_broker_db)})\n" if s.celery_worker_names else "\n")
        + f"  Airflow UI        {s.airflow_url}   login: admin / {password}  (read-only: viewer / "
        f"{_secret(s, 'airflow-viewer-password')})\n"
        f"  Tracking service  {s.tracking_base_url}/healthz   (self-signed certificate)\n"
        f"  Local SES         {s.ses_endpoint}   (moto; accepted messages: {s.ses_endpoint}/local-ses/messages)\n"
        f"  Local inbox       {s.ses_endpoint}/inbox   (every message the local SES accepted, rendered)\n"
        f"  PostgreSQL        {s.pg_dsn()}\n"
        f"  Redis             {s.redis_url(s.redis_db)}\n"
        f"  Settings          {s.state_dir / 'stack.env'} (source it to use the CLI against this stack)\n"
        + (f"Stop it with `STACK_INSTANCE={s.instance} python -m devstack down`." if s.instance
           else "Stop everything with `make down`."),
        flush=True,
    )


def write_env_file(s: StackSettings) -> Path:
    """`.local/stack.env`: the environment of the stack's Airflow, for `source`-ing in a shell (CLI, scripts)."""
    env = airflow_env(s)
    wanted = {k: v for k, v in env.items() if k.startswith(("AIRFLOW", "TRACKING_", "SES_", "SNS_"))}
    wanted.update(tracking_env(s))  # so that `python -m tracking_service.drain` finds the stack's spool
    path = s.state_dir / "stack.env"
    workers = f", workers {', '.join(s.celery_worker_names)}" if s.celery_worker_names else ""
    path.write_text(f"# executor: {s.airflow_executor}{workers}\n"
                    + "".join(f"export {k}='{v}'\n" for k, v in sorted(wanted.items())))
    path.chmod(0o600)
    return path


def _worker_pid_files(s: StackSettings) -> list[Path]:
    """The pid files of every Celery worker this stack started, whichever executor its settings say now (so `down`
    after `make up EXECUTOR=celery` stops them without being told)."""
    return sorted(s.run_dir.glob("celery-worker-*.pid"))


def app_names(s: StackSettings) -> list[str]:
    """Every process `up` starts on top of PostgreSQL and Redis, by pid-file name."""
    return [f"airflow-{c}" for c in AIRFLOW_COMPONENTS] + list(s.celery_worker_names) + ["tracking", "ses"]


def stop_apps(s: StackSettings) -> list[str]:
    """Stop Airflow (its Celery workers first), the tracking service and the local SES; PostgreSQL and Redis keep
    running."""
    stopped = []
    for pid_file in _worker_pid_files(s):
        # a warm shutdown: the worker finishes its running tasks first (up to the timeout, then SIGKILL)
        if stop(pid_file, timeout=45):
            stopped.append(pid_file.stem)
    for component in reversed(AIRFLOW_COMPONENTS):
        if stop(s.run_dir / f"airflow-{component}.pid", timeout=45):
            stopped.append(f"airflow {component}")
    for name in ("tracking", "ses"):
        if stop(s.run_dir / f"{name}.pid"):
            stopped.append(name)
    return stopped


def apps_running(s: StackSettings) -> bool:
    """Whether every component `up` starts on top of PostgreSQL and Redis is running."""
    return all(running(s.run_dir / f"{name}.pid") for name in app_names(s))


def down(s: StackSettings) -> None:
    """Stop what `up` started; a named instance stops only its apps (the servers are the user's stack's)."""
    stopped = stop_apps(s)
    if not s.instance and services.stop_redis(s):
        stopped.append("redis")
    if not s.instance and services.stop_postgres(s):
        stopped.append("postgresql")
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"), flush=True)


def status(s: StackSettings) -> None:
    """One line per component: running or stopped (Celery workers by name, also one left from an earlier `up`)."""
    started = running_executor(s)
    print(f"{'executor':24} {EXECUTORS[started] + ' (running)' if started else s.airflow_executor}")
    names = app_names(s) + [f.stem for f in _worker_pid_files(s) if f.stem not in app_names(s)]
    for name in names:
        print(f"{name:24} {'running' if running(s.run_dir / f'{name}.pid') else 'stopped'}")
    print(f"{'redis':24} {'running' if running(s.server_run_dir / 'redis.pid') else 'stopped'}")
    pg = (s.server_dir / "pg" / "postmaster.pid").exists()
    print(f"{'postgresql':24} {'running' if pg else 'stopped'}")


def _instance_only(s: StackSettings, what: str) -> None:
    if not s.instance:
        raise StackError(f"{what} is for a named stack instance (STACK_INSTANCE=...), never the user's stack")


def reset(s: StackSettings) -> None:
    """Empty a named instance's data: a new migrated campaign database, its Redis db flushed, its spool emptied."""
    _instance_only(s, "reset")
    stop_apps(s)  # nothing of the instance may hold the database or write the spool meanwhile
    services.start_postgres(s)
    services.start_redis(s)
    services.drop_databases(s, s.campaign_db)
    services.ensure_databases(s)
    services.migrate(s)
    services.flush_redis_db(s)
    services.flush_redis_db(s, s.celery_broker_db)  # tasks queued for the old run's workers must not run now
    shutil.rmtree(s.state_dir / "tracking-spool", ignore_errors=True)


def _instances(s: StackSettings) -> list[StackSettings]:
    """The named instances that have a state folder under this stack's."""
    folder = s.server_dir / "instances"
    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [replace(s, instance=name, servers_dir=s.server_dir, state_dir=folder / name) for name in found]


def clean(s: StackSettings) -> None:
    """Stop everything and delete everything the stack made, wherever it put it (`make clean`)."""
    if s.instance:
        stop_apps(s)
        if services.servers_running(s):
            services.drop_databases(s, *s.campaign_databases, s.airflow_db)
            services.flush_redis_db(s)
            services.flush_redis_db(s, s.celery_broker_db)
        else:
            print("PostgreSQL or Redis is not running: the instance's databases stay until `make clean`", flush=True)
    else:
        for instance in _instances(s):
            stop_apps(instance)  # their pid files are about to go: nothing of theirs may outlive them
        down(s)
        for folder in services.stack_made_outside(s):
            shutil.rmtree(folder)
            print(f"removed {folder}", flush=True)
    if s.state_dir.exists():
        shutil.rmtree(s.state_dir)
        print(f"removed {s.state_dir}", flush=True)
