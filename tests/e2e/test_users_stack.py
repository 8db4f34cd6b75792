"""`make test` leaves the user's stack alone: the end-to-end tests send their campaigns on the test stack, into its
own database, and the user's campaign database and running processes are as they were before the session."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.conftest import USER_STACK, users_stack_view

pytestmark = pytest.mark.timeout(600)


def test_campaigns_sent_by_the_tests_stay_out_of_the_users_stack(stack, api, stack_db, users_stack_before):
    stamp = uuid.uuid4().hex[:10]
    path = stack.state_dir / "e2e" / f"alone-{stamp}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("email,first_name\n" + "".join(f"alone-{stamp}-{i}@example.org,Ann\n" for i in range(3)))
    for dag_id in ("import_contacts", "send_campaign"):
        api.wait_for_dag(dag_id)
    assert api.run("import_contacts", {"path": str(path), "list": f"alone-{stamp}"}, timeout=300)["state"] == "success"
    campaign = {"key": f"alone-{stamp}", "name": f"Users stack alone {stamp}", "subject": "Hi",
                "from_email": "news@example.com", "html": "<p>Hi {{ first_name }}</p>",
                "audience": {"lists": [f"alone-{stamp}"]}}
    assert api.run("send_campaign", {"campaign": campaign}, timeout=600)["state"] == "success"

    ours = {row["key"]: row for row in stack_db.execute("SELECT key, status, created_at FROM campaigns")}
    our_lists = {row["name"] for row in stack_db.execute("SELECT name FROM lists")}
    assert ours[f"alone-{stamp}"]["status"] == "sent"
    # the test stack's database started empty: nothing in it is older than this session
    assert all(row["created_at"] >= users_stack_before["at"] for row in ours.values())

    after = users_stack_view()
    assert stack.pg_dsn() != USER_STACK.pg_dsn()
    # A name the user's stack had before the session (`make demo` makes a list `demo` there, and test_demo one on
    # the test stack) is the user's own, not a leak: what the session created must not appear there.
    assert (ours.keys() - users_stack_before["campaigns"]).isdisjoint(after["campaigns"])
    assert (our_lists - users_stack_before["lists"]).isdisjoint(after["lists"])
    assert users_stack_before["campaigns"] <= after["campaigns"]
    assert users_stack_before["lists"] <= after["lists"]
    assert after["pids"] == users_stack_before["pids"]  # nothing of the user's stack was stopped or restarted
