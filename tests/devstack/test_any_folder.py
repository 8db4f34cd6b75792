"""Setup from any folder: a fresh clone in a folder only its owner can enter (root's 0700 home, `mktemp -d`) starts
its own PostgreSQL and Redis with its own devstack code, and `python -m devstack clean` removes everything they made,
also what had to live outside the clone because PostgreSQL runs as another user there."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from devstack.processes import is_alive, read_pid
from devstack.settings import ROOT

pytestmark = pytest.mark.timeout(400)


def _free_port(taken: set[int]) -> int:
    """A port nothing listens on, below 32768 like the stack's own (see StackSettings)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            if port not in taken and sock.connect_ex(("127.0.0.1", port)) != 0:
                return port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(*needles: Path) -> list[str]:
    """Command lines of live processes that name one of `needles` (a clone's folder, PostgreSQL's data folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and any(str(needle) in cmdline for needle in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


class Clone:
    """A `git clone` of this repository that runs its own devstack on ports of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / ".local"
        self.pg_port = _free_port(set())
        self.redis_port = _free_port({self.pg_port})
        # the clone's code, not this checkout's: PYTHONPATH comes before the editable install of /work/main's venv
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
        self.env.update(PYTHONPATH=str(folder / "include"), STACK_STATE_DIR=str(self.state),
                        STACK_PG_PORT=str(self.pg_port), STACK_REDIS_PORT=str(self.redis_port))

    def run(self, *args: str) -> str:
        """Run the clone's `python -m devstack ARGS` (or `python ARGS` for -c) in the clone; its output."""
        argv = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "devstack", *args]
        result = subprocess.run(argv, cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def pg_dsn(self, database: str) -> str:
        return f"postgresql://campaigns:campaigns@127.0.0.1:{self.pg_port}/{database}"


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Clone]:
    """This repository cloned into a 0700 folder; whatever the test leaves running is cleaned up afterwards."""
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o700)  # explicit: mkdir's mode would be masked by the umask
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(private / "checkout")],
                   check=True, timeout=120)
    made = Clone(private / "checkout")
    yield made
    if made.state.exists():
        made.run("clean")


def test_a_clone_in_a_private_folder_starts_its_services_and_clean_leaves_nothing_behind(clone):
    paths = clone.run("-c", "import campaigns, devstack; print(devstack.__file__); print(campaigns.__file__)")
    assert all(Path(p).is_relative_to(clone.folder) for p in paths.split()), paths

    clone.run("services")

    with psycopg.connect(clone.pg_dsn("campaigns")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() is not None
        assert conn.execute("SELECT count(*) FROM campaigns").fetchone() == (0,)
    assert redis.Redis(port=clone.redis_port).ping()

    data, log = clone.state / "pg", clone.state / "log" / "postgres.log"
    outside = {p.resolve().parent for p in (data, log) if not p.resolve().is_relative_to(clone.folder)}
    if os.geteuid() == 0:
        # PostgreSQL runs as `postgres`, who cannot enter the clone: its data and log moved to one folder it owns
        (folder,) = outside
        assert folder.parent == Path("/var/tmp")
        assert folder.name.startswith("email-campaigns-")
        assert folder.owner() == "postgres"
        assert data.resolve().owner() == "postgres"
        assert "database system is ready to accept connections" in log.read_text()
    else:
        assert outside == set()  # it runs as this user, who can enter the clone
    pids = [read_pid(data / "postmaster.pid"), read_pid(clone.state / "run" / "redis.pid")]
    assert all(pid is not None and is_alive(pid) for pid in pids)

    clone.run("clean")

    assert not clone.state.exists()
    assert not any(p.exists() for p in outside)
    assert not any(is_alive(pid) for pid in pids)  # type: ignore[arg-type]
    assert not _listening(clone.pg_port)
    assert not _listening(clone.redis_port)
    assert _processes_mentioning(clone.folder, *outside) == []
