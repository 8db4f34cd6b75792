"""The Campaigns view's own named SQL (plugins/campaigns_view/queries) goes through campaigns.queries.load."""

from __future__ import annotations

import pytest

from campaigns import queries
from campaigns.lifecycle import stats


def test_the_plugin_loads_its_own_folder_through_the_same_loader():
    from campaigns_view import data

    view = queries.load("view", data.QUERIES)
    assert view is queries.load("view", data.QUERIES)
    assert {"campaign-list", "status-counts", "campaign-row", "campaign-actions"} <= set(view)
    with pytest.raises(KeyError, match=r"no query 'nope' in queries/view\.sql"):
        view["nope"]
    with pytest.raises(FileNotFoundError, match="known areas: view"):
        queries.load("stats", data.QUERIES)


def test_the_campaign_list_reads_only_declared_counts(db):
    from campaigns_view import data

    cur = db.execute(queries.load("view", data.QUERIES)["campaign-list"], {"status": None, "before": None, "limit": 1})
    counts = {column.name for column in cur.description} & {*stats.COUNTS, *stats.RATES}
    # Every stats column the list shows is one campaign_stats() declares (and the CSV exports).
    assert counts == {"recipients", "sent", "pending", "bounced", "complained", "unique_opens", "unique_human_opens",
                      "unique_clicks", "unsubscribes"}
    assert counts <= set(stats.COUNTS)
