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


def _apt_install(*packages: str) -> None:
    """Install Debian packages (as root): the distribution's builds, never a download of their own."""
    print(f"[stack] installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


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
        _apt_install(*missing)
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
        # PostgreSQL's tools chdir back to where they started: start them where that user may be (not the checkout)
        kwargs.setdefault("cwd", "/")
    return subprocess.run(argv, **kwargs)


def _user_can_use(user: str, folder: Path) -> bool:
    result = _as_pg_user(["test", "-x", str(folder)], user, capture_output=True)
    return result.returncode == 0


OUTSIDE_PREFIX = "/var/tmp/email-campaigns-"


def pg_outside_dir(s: StackSettings) -> Path:
    """Where PostgreSQL's data and log live when its OS user cannot enter the checkout (one folder per checkout)."""
    digest = hashlib.sha256(str(s.server_dir.absolute()).encode()).hexdigest()[:10]
    return Path(f"{OUTSIDE_PREFIX}{digest}")


def pg_paths(s: StackSettings, user: str | None) -> tuple[Path, Path]:
    """(data folder, log file) of the project's PostgreSQL, normally .local/pg and .local/log/postgres.log.

    When the server's OS user cannot enter the checkout (a root-only home, `mktemp -d`), both live in
    /var/tmp/email-campaigns-<hash>/ (owned by that user, 0700) instead, and .local/pg and .local/log/postgres.log
    are symlinks to them, so `make`, `make clean` and a person reading the logs still find them where they were.
    """
    data_link, log_link = s.server_dir / "pg", s.server_log_dir / "postgres.log"
    s.server_log_dir.mkdir(parents=True, exist_ok=True)
    inside = user is None or (not data_link.is_symlink() and _user_can_use(user, s.server_dir)
                              and _user_can_use(user, s.server_log_dir))
    if inside:
        return data_link, log_link
    outside = pg_outside_dir(s)
    if not outside.is_dir():
        outside.mkdir(mode=0o700)
        shutil.chown(outside, user=user)
        print(f"[stack] the {user} user cannot enter {s.server_dir}: PostgreSQL's data and log live in {outside} "
              f"({data_link} and {log_link} link there)", flush=True)
    if not data_link.is_symlink():
        (outside / "pg").mkdir(mode=0o700, exist_ok=True)
        shutil.chown(outside / "pg", user=user)
        data_link.symlink_to(outside / "pg")
    if not log_link.is_symlink():
        log_link.unlink(missing_ok=True)  # a log the server never could write to
        log_link.symlink_to(outside / "postgres.log")
    return data_link, log_link.resolve()


def stack_made_outside(s: StackSettings) -> list[Path]:
    """The folders outside the state folder that the stack made for this checkout (see pg_paths)."""
    found = {pg_outside_dir(s)}
    top = Path(OUTSIDE_PREFIX).parent
    # an older layout put the data folder itself at /var/tmp/email-campaigns-pg-<hash>: follow the links
    for link in (s.server_dir / "pg", s.server_log_dir / "postgres.log"):
        target = link.resolve() if link.is_symlink() else None
        if target is not None and top in target.parents:
            folder = top / target.relative_to(top).parts[0]
            if str(folder).startswith(OUTSIDE_PREFIX):
                found.add(folder)
    return sorted(path for path in found if path.exists())


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_postgres(s: StackSettings) -> None:
    bin_dir = ensure_servers()
    user = _pg_os_user()
    s.server_dir.mkdir(parents=True, exist_ok=True)
    data, log = pg_paths(s, user)
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
    data = s.server_dir / "pg"
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
    pid_file = s.server_run_dir / "redis.pid"
    if running(pid_file):
        return
    data = s.server_dir / "redis"
    for folder in (data, s.server_run_dir, s.server_log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    # AOF with fsync every second: the tracking service's buffered events must survive a restart.
    subprocess.run(
        ["redis-server", "--port", str(s.redis_port), "--bind", "127.0.0.1", "--dir", str(data),
         "--pidfile", str(pid_file), "--logfile", str(s.server_log_dir / "redis.log"), "--daemonize", "yes",
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
        check=True,
    )
    wait_until(lambda: _port_open(s.redis_port) and running(pid_file), what="Redis", timeout=20,
               log=s.server_log_dir / "redis.log")


def stop_redis(s: StackSettings) -> bool:
    return stop(s.server_run_dir / "redis.pid", timeout=15)


def ensure_databases(s: StackSettings) -> None:
    """Create the instance's campaign databases and its Airflow metadata database if they do not exist."""
    import psycopg

    with psycopg.connect(s.pg_dsn("postgres"), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in (*s.campaign_databases, s.airflow_db):
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')  # identifiers cannot be bound; names come from settings


def migrate(s: StackSettings) -> None:
    from campaigns.schema import upgrade

    for name in s.campaign_databases:
        upgrade(s.pg_dsn(name))


def servers_running(s: StackSettings) -> bool:
    """Whether the project's PostgreSQL and Redis answer on their ports."""
    return _port_open(s.pg_port) and _port_open(s.redis_port)


def drop_databases(s: StackSettings, *names: str) -> None:
    """Drop databases of a named stack instance, whoever is still connected; never the user's stack's."""
    import psycopg
    from psycopg import sql

    if not s.instance:
        raise StackError("only a named stack instance's databases are ever dropped, never the user's stack's")
    with psycopg.connect(s.pg_dsn("postgres"), autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def flush_redis_db(s: StackSettings, db: int | None = None) -> None:
    """Empty a named stack instance's Redis db (by default its limiter keys; `db`: its Celery broker's); never the
    user's stack's db."""
    import redis

    if not s.instance or s.redis_db == 0 or db == 0:
        raise StackError("only a named stack instance's Redis db is ever flushed, never the user's stack's")
    client = redis.Redis.from_url(s.redis_url(s.redis_db if db is None else db))
    try:
        client.flushdb()
    finally:
        client.close()


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
        _apt_install("chromium")
    return CHROMIUM


SPAMASSASSIN = "/usr/bin/spamassassin"
SPAMASSASSIN_RULES = Path("/usr/share/spamassassin")  # the rules Debian's package ships: no sa-update needed


def ensure_spamassassin() -> str:
    """Debian's SpamAssassin for the spam-score test, with the rules its package ships (scored offline, `-L`).

    Installed with apt-get when missing and we are root (as ensure_chromium does); otherwise says what to install.
    """
    if not Path(SPAMASSASSIN).exists():
        if not _is_root() or shutil.which("apt-get") is None:
            raise StackError(f"The spam-score test needs SpamAssassin at {SPAMASSASSIN}: "
                             "sudo apt-get install -y spamassassin")
        _apt_install("spamassassin")
    if not any(SPAMASSASSIN_RULES.glob("*.cf")):
        raise StackError(f"SpamAssassin is installed but its rules are missing from {SPAMASSASSIN_RULES}: "
                         "reinstall the package (sudo apt-get install --reinstall -y spamassassin)")
    return SPAMASSASSIN


NGINX = "/usr/sbin/nginx"
NGINX_ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")  # libnginx-mod-http-echo: echo_sleep


def ensure_nginx() -> str:
    """Debian's nginx and its echo module, the SES stand-in of benchmarks/send_path_cpu.py (a fixed SendEmail answer,
    after `echo_sleep` for the latency point); returns the nginx binary.

    Installed with apt-get when missing and we are root (as ensure_spamassassin does); otherwise says what to install.
    Only the packages: the benchmark runs nginx with its own config and prefix, never the system's service.
    """
    missing = [package for package, path in (("nginx", Path(NGINX)), ("libnginx-mod-http-echo", NGINX_ECHO_MODULE))
               if not path.exists()]
    if missing:
        if not _is_root() or shutil.which("apt-get") is None:
            raise StackError(f"The send path CPU benchmark needs {', '.join(missing)} ({NGINX}, {NGINX_ECHO_MODULE}): "
                             f"sudo apt-get install -y {' '.join(missing)}")
        _apt_install(*missing)
    return NGINX
