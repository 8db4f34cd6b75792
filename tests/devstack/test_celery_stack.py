"""The local stack on the CeleryExecutor: how it is configured, how its workers are named, and that stopping or
killing a worker takes its task processes with it (they sit in process groups of their own)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from devstack import hostname, stack
from devstack.processes import StackError, descendants, is_alive, kill_tree, poll, read_pid, spawn
from devstack.settings import StackSettings, for_instance

# a process that starts a child in a session (so a process group) of its own, as Airflow's task runner does, and
# prints the child's pid
PARENT_WITH_A_DETACHED_CHILD = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(600)
""")


def _settings(tmp_path, **changes) -> StackSettings:
    return replace(StackSettings(state_dir=tmp_path / "state"), **changes)


def test_the_stack_runs_the_local_executor_unless_celery_is_asked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("STACK_EXECUTOR", raising=False)
    local = _settings(tmp_path)

    env = stack.airflow_env(local)

    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert not [name for name in env if "CELERY" in name or name == "AIRFLOW__CORE__HOSTNAME_CALLABLE"]
    assert local.celery_worker_names == ()
    assert stack.app_names(local) == [f"airflow-{c}" for c in stack.AIRFLOW_COMPONENTS] + ["tracking", "ses"]


def test_the_celery_stack_brokers_on_a_redis_db_of_its_own_and_keeps_results_in_airflows_database(tmp_path):
    celery = _settings(tmp_path, executor="celery", celery_workers=3, celery_concurrency=5)

    env = stack.airflow_env(celery)

    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://127.0.0.1:{celery.redis_port}/{celery.celery_broker_db}"
    assert celery.celery_broker_db not in (celery.redis_db, celery.test_redis_db, 2)  # limiter, tests, benchmarks
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "5"
    # a dead worker's task is found by the heartbeat timeout; the visibility timeout stays long (a day)
    assert env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"] == "86400"
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "300"
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "devstack.hostname.worker_hostname"
    assert celery.celery_worker_names == ("celery-worker-1", "celery-worker-2", "celery-worker-3")
    assert set(celery.celery_worker_names) <= set(stack.app_names(celery))
    assert stack.write_env_file(celery).read_text().startswith(
        "# executor: CeleryExecutor, workers celery-worker-1, celery-worker-2, celery-worker-3\n")


def test_the_celery_instance_has_its_own_ports_and_redis_dbs_and_a_short_heartbeat_timeout():
    user, test, celery = for_instance(""), for_instance("test"), for_instance("celery")

    assert (celery.executor, celery.celery_workers, celery.task_heartbeat_timeout) == ("celery", 2, 30)
    assert test.executor == user.executor == "local"
    assert {celery.airflow_port, celery.tracking_port, celery.ses_port}.isdisjoint(
        {p for s in (user, test) for p in (s.airflow_port, s.tracking_port, s.ses_port)})
    redis_dbs = {celery.redis_db, celery.celery_broker_db}
    assert len(redis_dbs) == 2
    assert redis_dbs.isdisjoint({user.redis_db, user.celery_broker_db, user.test_redis_db, 2, test.redis_db,
                                 test.celery_broker_db})


def test_an_unknown_executor_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("STACK_EXECUTOR", "kubernetes")

    with pytest.raises(SystemExit, match="STACK_EXECUTOR must be one of celery, local, got 'kubernetes'"):
        for_instance("test")


def test_each_worker_and_its_task_processes_report_the_workers_name(monkeypatch):
    monkeypatch.delenv(hostname.WORKER_HOSTNAME_ENV, raising=False)
    outside = hostname.worker_hostname()
    code = "from devstack.hostname import worker_hostname; print(worker_hostname())"

    in_task = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, hostname.WORKER_HOSTNAME_ENV: "celery-worker-2"})

    assert in_task.stdout.strip() == "celery-worker-2"
    assert outside not in ("", "celery-worker-2")  # the scheduler and api-server keep the machine's name


def _detached(tmp_path, name: str) -> tuple[int, int]:
    """Spawn PARENT_WITH_A_DETACHED_CHILD under pid file `name`; (parent pid, child pid)."""
    run_dir = tmp_path / "run"
    parent = spawn(name, [sys.executable, "-c", PARENT_WITH_A_DETACHED_CHILD], run_dir=run_dir,
                   log_dir=tmp_path / "log")
    log = tmp_path / "log" / f"{name}.log"
    child = int(poll(lambda: log.exists() and log.read_text().strip(), what="the child's pid", timeout=30))
    return parent, child


def test_kill_tree_kills_a_worker_and_the_task_processes_in_their_own_process_groups(tmp_path):
    parent, child = _detached(tmp_path, "celery-worker-1")
    assert child in descendants(parent)

    killed = kill_tree(parent)

    assert set(killed) >= {parent, child}
    poll(lambda: not is_alive(parent) and not is_alive(child), what="both processes gone", timeout=10)


def test_down_stops_celery_workers_an_earlier_up_started_whatever_the_executor_is_now(tmp_path):
    celery = _settings(tmp_path, executor="celery")
    parent, child = _detached(celery.state_dir, "celery-worker-1")
    local = replace(celery, executor="local")  # `make down` without EXECUTOR=celery

    stopped = stack.stop_apps(local)

    assert stopped == ["celery-worker-1"]
    assert read_pid(local.run_dir / "celery-worker-1.pid") is None
    poll(lambda: not is_alive(parent) and not is_alive(child), what="the worker and its task process gone",
         timeout=10)


def test_up_on_another_executor_while_airflow_still_runs_is_refused_with_what_to_do(tmp_path):
    celery = _settings(tmp_path, executor="celery")
    celery.run_dir.mkdir(parents=True)
    (celery.run_dir / "executor").write_text("celery\n")
    spawn("airflow-scheduler", [sys.executable, "-c", "import time; time.sleep(600)"], run_dir=celery.run_dir,
          log_dir=tmp_path / "log")
    try:
        stack.check_executor_unchanged(celery)  # the same executor again: nothing to refuse
        assert stack.running_executor(replace(celery, executor="local")) == "celery"  # what `status` shows

        with pytest.raises(StackError, match="runs with STACK_EXECUTOR=celery, not local: stop it first"):
            stack.check_executor_unchanged(replace(celery, executor="local"))
    finally:
        stack.stop_apps(celery)
