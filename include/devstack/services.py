"""Project-local PostgreSQL and Redis: find or install the servers, start them, create and migrate the databases."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack.processes import StackError, running, stop, wait_until
from devstack.settings import StackSettings

PG_BINARIES = ("initdb", "pg_ctl", "postgres")
APT_PACKAGES = {"postgresql": "PostgreSQL server (initdb, pg_ctl)", "redis-server": "Redis server"}


def _is_root() -> bool:
    return os.geteuid() == 0


def pg_bin_dir() -> Path | None:
    """The folder that holds initdb/pg_ctl: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    on_path = [shutil.which(name) for name in PG_BINARIES]
    if all(on_path):
        return Path(on_path[0]).resolve().parent  # type: ignore[arg-type]
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for folder in reversed(candidates):
        if all((Path(folder) / name).exists() for name in PG_BINARIES):
            return Path(folder)
    return None


def ensure_servers() -> Path:
    """Make sure PostgreSQL and Redis binaries exist; install them with apt-get when root, else say what to install."""
    missing = []
    if pg_bin_dir() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if missing:
        if not _is_root() or shutil.which("apt-get") is None:
            wanted = ", ".join(f"{pkg} ({APT_PACKAGES[pkg]})" for pkg in missing)
            raise StackError(
                f"Missing servers: {wanted}.\n"
                f"Install them, for example: sudo apt-get install -y {' '.join(missing)}\n"
                "or put their binaries on PATH, then run the command again."
            )
        print(f"[stack] installing {' '.join(missing)} with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise StackError("PostgreSQL was installed but initdb/pg_ctl were not found on PATH or in /usr/lib/postgresql.")
    return bin_dir


def _pg_os_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` system user (created if missing)."""
    if not _is_root():
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return "postgres"


def _as_pg_user(argv: list[str], user: str | None, **kwargs) -> subprocess.CompletedProcess:
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, **kwargs)


def _user_can_use(user: str, folder: Path) -> bool:
    result = _as_pg_user(["test", "-x", str(folder)], user, capture_output=True)
    return result.returncode == 0


def pg_data_dir(s: StackSettings, user: str | None) -> Path:
    """The data folder, normally .local/pg. When the server's OS user cannot enter the checkout (a root-only
    home), the data lives under /var/tmp instead and .local/pg is a symlink to it, so `make` still finds it."""
    link = s.state_dir / "pg"
    if link.is_symlink() or user is None or _user_can_use(user, s.state_dir):
        return link
    digest = hashlib.sha256(str(s.state_dir).encode()).hexdigest()[:10]
    target = Path(f"/var/tmp/email-campaigns-pg-{digest}")
    target.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(target, user=user)
    link.symlink_to(target)
    return link


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_postgres(s: StackSettings) -> None:
    bin_dir = ensure_servers()
    user = _pg_os_user()
    s.state_dir.mkdir(parents=True, exist_ok=True)
    data = pg_data_dir(s, user)
    data.mkdir(exist_ok=True)
    if user is not None:
        shutil.chown(data.resolve(), user=user)
    if not (data / "PG_VERSION").exists():
        pwfile = data.resolve().parent / f".pgpass-init-{os.getpid()}"
        pwfile.write_text(s.pg_password + "\n")
        if user is not None:
            shutil.chown(pwfile, user=user)
        try:
            _as_pg_user(
                [str(bin_dir / "initdb"), "-D", str(data.resolve()), "-U", s.pg_user, f"--pwfile={pwfile}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"],
                user, check=True, capture_output=True,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    if (data / "postmaster.pid").exists() and _port_open(s.pg_port):
        return
    s.log_dir.mkdir(parents=True, exist_ok=True)
    log = s.log_dir / "postgres.log"
    if user is not None:
        log.touch()
        shutil.chown(log, user=user)
    options = (
        f"-p {s.pg_port} -c listen_addresses=127.0.0.1 -k {data.resolve()} "
        "-c max_connections=300 -c shared_buffers=256MB -c synchronous_commit=off "
        # A million-recipient snapshot writes ~0.5 GB of WAL: room for it without back-to-back checkpoints.
        "-c max_wal_size=4GB -c checkpoint_timeout=15min"
    )
    result = _as_pg_user(
        [str(bin_dir / "pg_ctl"), "-D", str(data.resolve()), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
        user, capture_output=True, text=True,
    )
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise StackError(f"PostgreSQL did not start on port {s.pg_port}: {result.stderr.strip()}\n{tail}")


def stop_postgres(s: StackSettings) -> bool:
    data = s.state_dir / "pg"
    if not (data / "postmaster.pid").exists():
        return False
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        return False
    _as_pg_user([str(bin_dir / "pg_ctl"), "-D", str(data.resolve()), "-m", "fast", "-w", "stop"],
                _pg_os_user(), capture_output=True)
    return True


def start_redis(s: StackSettings) -> None:
    ensure_servers()
    pid_file = s.run_dir / "redis.pid"
    if running(pid_file):
        return
    data = s.state_dir / "redis"
    for folder in (data, s.run_dir, s.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    # AOF with fsync every second: the tracking service's buffered events must survive a restart.
    subprocess.run(
        ["redis-server", "--port", str(s.redis_port), "--bind", "127.0.0.1", "--dir", str(data),
         "--pidfile", str(pid_file), "--logfile", str(s.log_dir / "redis.log"), "--daemonize", "yes",
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
        check=True,
    )
    wait_until(lambda: _port_open(s.redis_port) and running(pid_file), what="Redis", timeout=20,
               log=s.log_dir / "redis.log")


def stop_redis(s: StackSettings) -> bool:
    return stop(s.run_dir / "redis.pid", timeout=15)


def ensure_databases(s: StackSettings) -> None:
    """Create the campaign, test and Airflow metadata databases if they do not exist."""
    import psycopg

    with psycopg.connect(s.pg_dsn("postgres"), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in (s.campaign_db, s.test_campaign_db, s.airflow_db):
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')  # identifiers cannot be bound; names come from settings


def migrate(s: StackSettings) -> None:
    from campaigns.schema import upgrade

    for name in (s.campaign_db, s.test_campaign_db):
        upgrade(s.pg_dsn(name))


@contextmanager
def scratch_database(s: StackSettings, prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A throw-away database on the project's PostgreSQL (migrated unless asked not to); dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = s.pg_dsn("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = s.pg_dsn(name)
        if migrate:
            from campaigns.schema import upgrade

            upgrade(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    """Debian's Chromium for the browser tests (the distribution's package, never a downloaded browser build).

    Installed with apt-get when missing and we are root (as ensure_servers does); otherwise says what to install.
    """
    if not Path(CHROMIUM).exists():
        if not _is_root() or shutil.which("apt-get") is None:
            raise StackError(f"The browser tests need Chromium at {CHROMIUM}: sudo apt-get install -y chromium")
        print("[stack] installing chromium with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return CHROMIUM
