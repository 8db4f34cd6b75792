"""Start and stop background processes by pid file: `make down` stops exactly what `make up` started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StackError(SystemExit):
    """A setup step failed; the message says what to do."""


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def running(pid_file: Path) -> bool:
    pid = read_pid(pid_file)
    return pid is not None and is_alive(pid)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start `argv` in its own session, log to log_dir/name.log and record its pid in run_dir/name.pid."""
    pid_file = run_dir / f"{name}.pid"
    if running(pid_file):
        return read_pid(pid_file)  # type: ignore[return-value]
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(pid_file: Path, *, timeout: float = 30.0) -> bool:
    """SIGTERM the process group recorded in pid_file, escalate to SIGKILL after `timeout`; True if one was running.
    Processes under it in groups of their own (an Airflow task process calls setpgid) are SIGKILLed if they outlive
    the group."""
    pid = read_pid(pid_file)
    if pid is None or not is_alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    tree = descendants(pid)
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.5)
    _kill(tree)
    pid_file.unlink(missing_ok=True)
    return True


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (children, theirs, ...), whatever process group or session they moved to."""
    children: dict[int, list[int]] = {}
    for pid_, _pgid, ppid in _live_processes():
        children.setdefault(ppid, []).append(pid_)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid` and every process under it at once, as when a machine dies (no shutdown, no cleanup); returns
    the pids it signalled. What the Celery end-to-end test does to a worker and its task processes."""
    tree = [pid, *descendants(pid)]
    _kill(tree)
    return tree


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, process group id, parent's pid) of every process that is not a zombie, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields[0] is the state, fields[1] the parent's pid, fields[2] the process group id.
        if fields[0] != "Z":
            yield int(entry.name), int(fields[2]), int(fields[1])


def _group_alive(pgid: int) -> bool:
    return any(group == pgid for _pid, group, _ppid in _live_processes())


def poll(check: Callable[[], T], *, what: str, timeout: float, interval: float = 0.3) -> T:
    """Call `check` every `interval` seconds until it returns something truthy, and return that; StackError naming
    `what` after `timeout` seconds. A condition with a deadline, never a bare sleep standing in for one."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_until(check: Callable[[], bool], *, what: str, timeout: float, log: Path | None = None) -> None:
    """Poll `check` until it returns True; fail with the tail of the service's log after `timeout` seconds."""

    def ready() -> bool:
        try:
            return bool(check())
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    try:
        poll(ready, what=what, timeout=timeout)
    except StackError:
        tail = ""
        if log is not None and log.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise StackError(f"{what} did not become ready within {timeout:.0f} s.\n{tail}") from None


def task_process(ti_id: str):
    """The process running Airflow task instance `ti_id` on the local stack (the LocalExecutor's child that
    supervises it), or None; what the fault scripts and the end-to-end tests `kill -9`."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if ti_id in cmdline and "LocalExecutor" not in cmdline:
            return proc
    return None
