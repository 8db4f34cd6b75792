"""`make demo` as a newcomer runs it, on the test stack: it ends with a funnel that has every stage, equal to the
database (the same rollups the Campaigns view reads)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from campaigns.lifecycle.stats import campaign_stats
from devstack.demo import FUNNEL

pytestmark = pytest.mark.timeout(900)


def test_the_demo_ends_with_a_whole_funnel_equal_to_the_database(stack, stack_db):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRACKING_", "SES_", "SNS_"))},
           "STACK_INSTANCE": stack.instance}
    demo = subprocess.run([sys.executable, "-m", "devstack.demo"], env=env, capture_output=True, text=True,
                          timeout=800)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    url = re.search(rf"{re.escape(stack.airflow_url)}/plugin/campaigns/campaigns/(\d+)", demo.stdout)
    assert url, demo.stdout
    printed = {name: int(value) for name, value in re.findall(r"^  ([a-z_]+)\s+(\d+)$", demo.stdout, re.MULTILINE)}
    assert set(printed) == set(FUNNEL)
    stats = campaign_stats(stack_db, int(url.group(1)))
    assert printed == {name: stats[name] for name in FUNNEL}
    for stage in ("delivered", "bounced", "complained", "unique_opens", "unique_human_opens", "unique_clicks",
                  "unique_human_clicks", "unsubscribes"):
        assert printed[stage] > 0, stage
    # the privacy-proxy opens and scanner clicks are counted, but not as people
    assert printed["unique_human_opens"] < printed["unique_opens"]
    assert printed["unique_human_clicks"] < printed["unique_clicks"]
