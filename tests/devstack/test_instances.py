"""Named stack instances: the test stack shares the user's PostgreSQL and Redis and nothing else, and nothing aimed at
an instance (reset, down, clean) can reach the user's stack's data or servers."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from devstack import services, stack
from devstack.processes import StackError, is_alive, read_pid, spawn
from devstack.settings import StackSettings, for_instance


def test_the_test_instance_shares_only_the_servers_with_the_users_stack():
    user, test = for_instance(""), for_instance("test")

    assert (test.pg_port, test.redis_port, test.server_dir) == (user.pg_port, user.redis_port, user.server_dir)
    assert test.state_dir == user.state_dir / "instances" / "test"
    assert test.campaign_db not in (user.campaign_db, user.test_campaign_db)
    assert test.campaign_databases == (test.campaign_db,)
    assert test.airflow_db != user.airflow_db
    assert test.redis_db not in (user.redis_db, user.test_redis_db)
    assert {test.airflow_port, test.tracking_port, test.ses_port}.isdisjoint(
        {user.airflow_port, user.tracking_port, user.ses_port})
    assert max(test.airflow_port, test.tracking_port, test.ses_port) < 32768
    assert stack.connections(test)["redis_default"]["extra"] == {"db": test.redis_db}
    assert stack.connections(test)["campaign_db"]["schema"] == test.campaign_db


def test_an_instance_name_cannot_be_a_path():
    with pytest.raises(SystemExit, match="STACK_INSTANCE"):
        for_instance("../elsewhere")


def test_resetting_or_emptying_the_users_stack_is_refused():
    user = for_instance("")

    with pytest.raises(StackError, match="never the user's stack"):
        stack.reset(user)
    with pytest.raises(StackError, match="never the user's stack"):
        services.drop_databases(user, user.campaign_db)
    with pytest.raises(StackError, match="never the user's stack"):
        services.flush_redis_db(user)


def test_down_of_an_instance_leaves_the_shared_servers_running(tmp_path, monkeypatch):
    stopped = []
    monkeypatch.setattr(services, "stop_redis", lambda s: stopped.append("redis"))
    monkeypatch.setattr(services, "stop_postgres", lambda s: stopped.append("postgresql"))
    instance = replace(StackSettings(state_dir=tmp_path / "instances" / "test"), instance="test",
                       servers_dir=tmp_path)

    stack.down(instance)

    assert stopped == []


def test_clean_stops_the_apps_of_every_instance_before_deleting_their_pid_files(tmp_path):
    user = StackSettings(state_dir=tmp_path / "state")
    instance_run = user.state_dir / "instances" / "test" / "run"
    spawn("airflow-scheduler", [sys.executable, "-c", "import time; time.sleep(600)"], run_dir=instance_run,
          log_dir=tmp_path / "log")
    pid = read_pid(instance_run / "airflow-scheduler.pid")
    assert pid is not None
    assert is_alive(pid)

    stack.clean(user)

    assert not is_alive(pid)
    assert not user.state_dir.exists()


def test_the_stack_tells_send_tasks_the_size_of_the_ses_pool_it_creates(tmp_path):
    s = replace(StackSettings(state_dir=tmp_path / "state"), ses_pool_slots=7)

    assert stack.pools(s)["ses"]["slots"] == 7
    assert stack.app_env(s)["SES_POOL_SLOTS"] == "7"  # the plan reads this; tasks cannot read pools
