"""Planning send tasks to the `ses` pool: how many run side by side, their threads, and whole waves of tasks."""

from __future__ import annotations

import logging

import pytest

from campaigns.config import Settings
from campaigns.lifecycle import pipeline
from campaigns.sending import plan
from tests.helpers import add_contacts, inline_campaign, insert_campaign

MEASURED_BEFORE_19 = 3_900  # µs of CPU per email a send task spent before issue 19 (its own measurement)


def ledger(db, campaign_id: int, recipients: int, page_size: int = 500) -> None:
    """`recipients` pending ledger rows in pages of `page_size`."""
    db.execute(
        """INSERT INTO campaign_recipients (campaign_id, email, page_no)
           SELECT %s, 'u' || g || '@example.org', (g - 1) / %s FROM generate_series(1, %s) AS g""",
        [campaign_id, page_size, recipients])


def sending_campaign(db, key: str, *, open_rows: bool = True) -> int:
    """Another campaign that is `running`, with a pending row (sending) or with every row sent (finishing)."""
    campaign_id = insert_campaign(db, key)
    db.execute("UPDATE campaigns SET status = 'running' WHERE id = %s", [campaign_id])
    if open_rows:
        ledger(db, campaign_id, 1)
    else:
        db.execute("""INSERT INTO campaign_recipients (campaign_id, email, page_no, status, ses_message_id)
                      VALUES (%s, 'done@example.org', 0, 'sent', 'm-1')""", [campaign_id])
    return campaign_id


def plan_now(db, campaign_id: int, rate: float, **settings) -> tuple[plan.Parallelism, list[plan.SendTask]]:
    """What plan_batches plans for the campaign at `rate` with these settings (the declared defaults otherwise)."""
    chosen = Settings(**settings)
    shape = plan.parallelism_for(db, campaign_id, rate, chosen)
    tasks = plan.plan(db, campaign_id, page_size=500, rate=rate, task_seconds=chosen.max_send_task_seconds,
                      parallel=shape.tasks, share=shape.long_campaign_share)
    return shape, tasks


def in_first_wave(tasks: list[plan.SendTask]) -> int:
    """How many of the tasks Airflow can start at once, given the pool share they were planned for."""
    return min(len(tasks), tasks[0].parallel)


@pytest.mark.parametrize("cpu_per_email_us", [1_500, MEASURED_BEFORE_19])
def test_a_100k_campaign_at_386_per_second_plans_no_task_beyond_what_a_4_slot_pool_runs_at_once(
        db, cpu_per_email_us):
    campaign_id = insert_campaign(db)
    ledger(db, campaign_id, 100_000)

    shape, tasks = plan_now(db, campaign_id, 386, ses_pool_slots=4, send_cpu_per_email_us=cpu_per_email_us)

    # The whole campaign is one wave: every task starts at once, none waits for a slot while the others send.
    assert len(tasks) == tasks[0].parallel == shape.tasks <= 4
    assert shape.tasks == (2 if cpu_per_email_us == 1_500 else 3)  # by threads (39 at 80 ms) / by CPU (1.5 cores)
    covered = [page for task in tasks for page in range(task.first_page, task.last_page + 1)]
    assert covered == list(range(200))
    sizes = {task.last_page - task.first_page + 1 for task in tasks}
    assert max(sizes) - min(sizes) <= 1  # equal shares of the rate end together


def test_with_another_campaign_sending_a_plan_takes_only_its_share_of_the_pool(db):
    sending_campaign(db, "already-sending")
    sending_campaign(db, "finishing", open_rows=False)  # nothing left to send: holds no slot
    campaign_id = insert_campaign(db)
    ledger(db, campaign_id, 100_000)

    shape, tasks = plan_now(db, campaign_id, 386, ses_pool_slots=4, send_cpu_per_email_us=MEASURED_BEFORE_19)

    assert (shape.other_campaigns, shape.share) == (1, 2)
    assert shape.needed == 3 > shape.tasks == 2
    assert in_first_wave(tasks) == 2
    assert len(tasks) % 2 == 0  # whole waves of two
    assert "R may not be reached" in shape.why()


def test_a_long_campaign_runs_whole_waves_of_its_pool_share(db):
    # 100,000 at 100/s: 1,000 s of sending, more than one wave of 300 s tasks. Airflow starts each mapped task as a
    # slot frees up, so the plan sizes tasks and threads for the whole share rather than leave a lone last task.
    campaign_id = insert_campaign(db)
    ledger(db, campaign_id, 100_000)

    shape, tasks = plan_now(db, campaign_id, 100, ses_pool_slots=4)

    assert shape.tasks == 1  # one process holds 100/s ...
    assert {task.parallel for task in tasks} == {4}  # ... but four run at once when the campaign spans waves
    assert len(tasks) % 4 == 0
    assert all(task.total == len(tasks) for task in tasks)
    line = plan.describe(tasks, 500, 100, shape, Settings(ses_pool_slots=4))
    assert line.startswith("16 send task(s) over 200 page(s) of 500, 4 side by side at 25/s each with 3 thread(s), "
                           "in 4 wave(s) on the whole pool share (longer than one wave of 1)")


def test_one_campaign_at_1000_per_second_uses_the_fewest_processes_that_hold_the_rate():
    shape = plan.parallelism(1000, pool_slots=8, other_campaigns=0, cpu_per_email_us=1_500, latency=0.08)

    # CPU: 1,000 x 1.5 ms = 1.5 cores at 0.7 of a core per process -> 3; threads: 1,000 x 0.08 x 1.25 = 100 calls in
    # flight at 32 per process -> 4. Four processes of 25 threads, although the pool would allow 8.
    assert (shape.by_cpu, shape.by_threads, shape.tasks) == (3, 4, 4)
    assert plan.threads_per_task(1000, shape.tasks, 0.08) == 25
    # a slower SES (more calls in flight) needs more processes; a costlier send path needs more cores
    assert plan.parallelism(1000, pool_slots=8, other_campaigns=0, cpu_per_email_us=1_500, latency=0.2).tasks == 8
    assert plan.parallelism(1000, pool_slots=8, other_campaigns=0, cpu_per_email_us=3_900, latency=0.05).tasks == 6
    # never more than the pool share: three other campaigns sending leave it 8 // 4 = 2
    assert plan.parallelism(1000, pool_slots=8, other_campaigns=3, cpu_per_email_us=1_500, latency=0.08).tasks == 2


def test_send_threads_fixed_by_the_operator_decide_how_many_processes_hold_the_rate():
    shape = plan.parallelism(1000, pool_slots=8, other_campaigns=0, cpu_per_email_us=1_500, latency=0.08,
                             threads_cap=10)
    assert shape.by_threads == 10 > shape.share == 8 == shape.tasks


def test_send_task_parallelism_fixes_the_count_within_the_pool_share():
    shape = plan.parallelism(14, pool_slots=4, other_campaigns=1, cpu_per_email_us=1_500, latency=0.08, fixed=4)
    assert shape.tasks == 2  # the other campaign keeps its half of the pool
    assert "SEND_TASK_PARALLELISM = 4" in shape.why()


def test_a_short_campaign_stays_one_task_and_a_long_one_is_split_at_a_high_rate():
    assert plan.task_sizes(open_pages=4, page_size=10, rate=1000, task_seconds=300, parallel=4) == [4]
    # 75,000 at 1,000/s fits one wave: four tasks of 75 s, where one task alone could not hold 1,000/s
    assert plan.task_sizes(open_pages=150, page_size=500, rate=1000, task_seconds=300, parallel=4) == [38, 38, 37, 37]
    assert plan.task_sizes(open_pages=3, page_size=10_000, rate=1000, task_seconds=300, parallel=4) == [1, 1, 1]
    assert plan.task_sizes(open_pages=0, page_size=500, rate=1000, task_seconds=300, parallel=4) == []


def test_whole_waves_never_pass_max_send_tasks():
    sizes = plan.task_sizes(open_pages=2000, page_size=500, rate=14, task_seconds=60, parallel=3)
    assert len(sizes) == 999 <= plan.MAX_SEND_TASKS
    assert sum(sizes) == 2000


def test_plan_batches_logs_the_parallelism_and_why(db, settings_env, caplog):
    settings_env(SES_POOL_SLOTS=4, SEND_CPU_PER_EMAIL_US=1500)
    add_contacts(db, [f"user{i}@example.org" for i in range(40)])
    campaign_id = pipeline.resolve_campaign({"campaign": inline_campaign()}, "run-1")
    pipeline.snapshot_recipients(campaign_id, {"batch_size": 10})

    with caplog.at_level(logging.INFO, logger=pipeline.__name__):
        [descriptor] = pipeline.plan_batches(campaign_id, {"batch_size": 10}, "run-1", rate=1000)

    assert descriptor["parallel"] == 1  # 40 recipients at 1,000/s: one task, with threads for the whole rate
    assert plan.SendTask.from_dict(descriptor).parallel == 1
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    assert "1 side by side at 1000/s each with 32 thread(s)" in line
    assert "R needs 4 (CPU: 3, threads: 4); pool `ses` 4 slot(s), 0 other campaign(s) sending: share 4" in line


@pytest.mark.parametrize(("arguments", "named"), [
    ({"pool_slots": 0}, "pool_slots"),
    ({"other_campaigns": -1}, "other_campaigns"),
    ({"cpu_per_email_us": float("nan")}, "cpu_per_email_us"),
    ({"latency": -0.1}, "latency"),
    ({"fixed": 0}, "fixed"),
])
def test_bad_planning_arguments_are_refused_naming_the_argument(arguments, named):
    given = {"pool_slots": 4, "other_campaigns": 0, "cpu_per_email_us": 1_500, "latency": 0.08, **arguments}
    with pytest.raises(ValueError, match=named):
        plan.parallelism(386, **given)
