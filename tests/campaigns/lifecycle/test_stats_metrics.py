"""The stats metrics are declared once in campaigns.lifecycle.stats: the tables (migration 0003) and the rollup's
and read API's SQL agree with that declaration."""

from __future__ import annotations

import psycopg
import pytest

from campaigns import queries
from campaigns.lifecycle import stats


@pytest.fixture(scope="module")
def columns(dsn):
    """(table -> its bigint columns other than campaign_id, in column order), read from the test database."""

    def read(table: str, *, generated: bool | None = None) -> tuple[str, ...]:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT column_name, is_generated FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = %s AND data_type = 'bigint'"
                "   AND column_name <> 'campaign_id' ORDER BY ordinal_position", [table]).fetchall()
        return tuple(name for name, is_generated in rows
                     if generated is None or (is_generated == "ALWAYS") == generated)

    return read


def test_the_declared_counts_are_the_count_columns_of_campaign_stats(columns):
    assert columns("campaign_stats") == stats.COUNTS
    assert columns("campaign_stats", generated=True) == stats.GENERATED_COUNTS


def test_the_event_metrics_are_what_campaign_stats_counts_beyond_the_ledger(columns):
    counted = columns("campaign_stats", generated=False)
    assert counted == (*stats.LEDGER_COUNTS, *stats.EVENT_METRICS)
    assert len(stats.EVENT_METRICS) == 13


def test_the_series_columns_are_sent_and_the_event_metrics(columns):
    assert columns("campaign_stats_series") == stats.SERIES_METRICS == ("sent", *stats.EVENT_METRICS)


def test_the_link_metrics_are_the_columns_of_campaign_link_stats(columns):
    assert columns("campaign_link_stats") == stats.LINK_METRICS


def test_the_read_queries_return_exactly_the_declared_metrics(db):
    sql = queries.load("stats")
    params = {"campaign_id": -1}
    returned = [column.name for column in db.execute(sql["campaign-stats"], params).description]
    assert [name for name in returned if name in stats.COUNTS] == list(stats.COUNTS)
    series = [column.name for column in db.execute(sql["campaign-series"], params).description]
    assert series == ["bucket_start", "granularity", *stats.SERIES_METRICS]
    links = [column.name for column in db.execute(sql["campaign-link-stats"], params).description]
    assert links == ["link_id", "url", *stats.LINK_METRICS]


@pytest.mark.parametrize("name", ["apply-campaign-deltas", "apply-series-deltas"])
def test_the_rollup_adds_up_every_event_metric_once(db, name):
    text = stats.with_metrics(name).as_string(db)
    for metric in stats.EVENT_METRICS:
        assert text.count(f"metric = '{metric}'") == 1, metric
        assert text.count(f'"{metric}" = s."{metric}" + excluded."{metric}"') == 1, metric
    assert "{" not in text
