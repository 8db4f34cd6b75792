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


def test_every_stats_column_of_the_campaign_list_is_a_declared_count(db):
    from campaigns_view import data

    cur = db.execute(queries.load("view", data.QUERIES)["campaign-list"], {"status": None, "before": None, "limit": 1})
    returned = {column.name for column in cur.description}
    campaign_columns = {row["column_name"] for row in db.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'campaigns'")}
    from_stats = returned - campaign_columns - {"ledger_counted_at"}
    assert from_stats
    assert from_stats <= set(stats.COUNTS)
