"""Campaign stats: rollups of email_events and the ledger that analysts (and the UI) query instead of raw scans.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The inserting transaction of every event. Event ids come from a sequence at INSERT time but transactions
        -- commit in any order, so "id > last id seen" skips an event whose transaction commits late. The rollup
        -- instead takes exactly the events visible in its snapshot and not in the previous run's (PgQ's batches).
        -- Added without a default first: a volatile default on ADD COLUMN would rewrite the whole table. Rows from
        -- before this migration keep NULL; the first rollup counts them all.
        ALTER TABLE email_events ADD COLUMN txid xid8;
        ALTER TABLE email_events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
        CREATE INDEX email_events_txid_idx ON email_events (txid);

        -- Where the rollup is: the snapshot of its last committed run. An event visible in it has been counted.
        CREATE TABLE stats_rollup_state (
            name             text PRIMARY KEY,
            snapshot         pg_snapshot,
            events_rolled_up bigint NOT NULL DEFAULT 0,
            last_run_at      timestamptz,
            last_run_events  bigint
        );
        INSERT INTO stats_rollup_state (name) VALUES ('email_events');

        -- Time series buckets: hourly for the first 7 days of a campaign (counted from its start), daily (UTC days)
        -- after. The hourly part runs to the first UTC midnight at least 168 hours after the start, so hour and
        -- day buckets never overlap. Fixed-length intervals keep the functions independent of the session TimeZone.
        CREATE FUNCTION campaign_stats_hourly_until(started timestamptz) RETURNS timestamptz
            LANGUAGE sql STABLE PARALLEL SAFE
            RETURN date_trunc('day', started + interval '168 hours', 'UTC') + interval '24 hours';
        CREATE FUNCTION campaign_stats_bucket(started timestamptz, at timestamptz) RETURNS timestamptz
            LANGUAGE sql STABLE PARALLEL SAFE
            RETURN CASE WHEN at < campaign_stats_hourly_until(started) THEN date_trunc('hour', at, 'UTC')
                        ELSE date_trunc('day', at, 'UTC') END;
        CREATE FUNCTION campaign_stats_granularity(started timestamptz, bucket_start timestamptz) RETURNS text
            LANGUAGE sql STABLE PARALLEL SAFE
            RETURN CASE WHEN bucket_start < campaign_stats_hourly_until(started) THEN 'hour' ELSE 'day' END;

        -- One row per campaign. Ledger columns are recounted for campaigns that changed; event columns are
        -- incremented by each rollup run. Unique counts are recipients (per-recipient state below), not events.
        CREATE TABLE campaign_stats (
            campaign_id          bigint PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
            recipients           bigint NOT NULL DEFAULT 0,
            pending              bigint NOT NULL DEFAULT 0,
            sending              bigint NOT NULL DEFAULT 0,
            sent                 bigint NOT NULL DEFAULT 0,
            failed               bigint NOT NULL DEFAULT 0,
            skipped              bigint NOT NULL DEFAULT 0,
            cancelled            bigint NOT NULL DEFAULT 0,
            unknown              bigint NOT NULL DEFAULT 0,
            skipped_by_reason    jsonb NOT NULL DEFAULT '{}'::jsonb,
            delivered            bigint NOT NULL DEFAULT 0,
            bounced              bigint NOT NULL DEFAULT 0,
            bounced_hard         bigint NOT NULL DEFAULT 0,
            bounced_soft         bigint GENERATED ALWAYS AS (bounced - bounced_hard) STORED,
            complained           bigint NOT NULL DEFAULT 0,
            opens                bigint NOT NULL DEFAULT 0,
            human_opens          bigint NOT NULL DEFAULT 0,
            unique_opens         bigint NOT NULL DEFAULT 0,
            unique_human_opens   bigint NOT NULL DEFAULT 0,
            clicks               bigint NOT NULL DEFAULT 0,
            human_clicks         bigint NOT NULL DEFAULT 0,
            unique_clicks        bigint NOT NULL DEFAULT 0,
            unique_human_clicks  bigint NOT NULL DEFAULT 0,
            unsubscribes         bigint NOT NULL DEFAULT 0,
            -- the campaign row as it was when the ledger was last counted: a change means "count again"
            ledger_seen_status   text,
            ledger_seen_updated_at timestamptz,
            ledger_counted_at    timestamptz,
            events_rolled_up_at  timestamptz
        );

        CREATE TABLE campaign_stats_series (
            campaign_id          bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            bucket_start         timestamptz NOT NULL,
            granularity          text NOT NULL CHECK (granularity IN ('hour', 'day')),
            sent                 bigint NOT NULL DEFAULT 0,
            delivered            bigint NOT NULL DEFAULT 0,
            bounced              bigint NOT NULL DEFAULT 0,
            bounced_hard         bigint NOT NULL DEFAULT 0,
            complained           bigint NOT NULL DEFAULT 0,
            opens                bigint NOT NULL DEFAULT 0,
            human_opens          bigint NOT NULL DEFAULT 0,
            unique_opens         bigint NOT NULL DEFAULT 0,
            unique_human_opens   bigint NOT NULL DEFAULT 0,
            clicks               bigint NOT NULL DEFAULT 0,
            human_clicks         bigint NOT NULL DEFAULT 0,
            unique_clicks        bigint NOT NULL DEFAULT 0,
            unique_human_clicks  bigint NOT NULL DEFAULT 0,
            unsubscribes         bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (campaign_id, bucket_start)
        );
        -- "the last 24 hours / 7 days across campaigns" reads by time
        CREATE INDEX campaign_stats_series_bucket_idx ON campaign_stats_series (bucket_start);

        -- No foreign key to campaign_links: a click names a link id the tracking service resolved, and the stats
        -- must not fail over a link row; campaign deletion still cascades.
        CREATE TABLE campaign_link_stats (
            campaign_id          bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            link_id              integer NOT NULL,
            clicks               bigint NOT NULL DEFAULT 0,
            human_clicks         bigint NOT NULL DEFAULT 0,
            unique_clicks        bigint NOT NULL DEFAULT 0,
            unique_human_clicks  bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (campaign_id, link_id)
        );

        -- Per-recipient firsts: what makes unique counts incremental (a second open of a recipient finds its first
        -- open here instead of rescanning the events). Also answers "who opened/clicked/bounced" after retention
        -- pruned the raw events. recipient_id is a ledger row id (no foreign key, like the ledger itself).
        CREATE TABLE campaign_recipient_activity (
            recipient_id          bigint PRIMARY KEY,
            campaign_id           bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            first_open_at         timestamptz,
            first_human_open_at   timestamptz,
            first_click_at        timestamptz,
            first_human_click_at  timestamptz,
            delivered_at          timestamptz,
            bounced_at            timestamptz,
            hard_bounced_at       timestamptz,
            complained_at         timestamptz,
            unsubscribed_at       timestamptz
        );
        CREATE INDEX campaign_recipient_activity_campaign_idx ON campaign_recipient_activity (campaign_id);

        CREATE TABLE campaign_recipient_link_activity (
            recipient_id          bigint NOT NULL,
            link_id               integer NOT NULL,
            campaign_id           bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
            first_click_at        timestamptz,
            first_human_click_at  timestamptz,
            PRIMARY KEY (recipient_id, link_id)
        );
        CREATE INDEX campaign_recipient_link_activity_campaign_idx ON campaign_recipient_link_activity (campaign_id);

        -- Every event by UTC hour, type and subtype, campaign or not (SES notifications without a ledger row too):
        -- "recent events by type" without scanning email_events, and kept after retention prunes them.
        CREATE TABLE email_event_counts_hourly (
            hour        timestamptz NOT NULL,
            type        text NOT NULL,
            subtype     text,
            is_machine  boolean NOT NULL,
            events      bigint NOT NULL,
            UNIQUE NULLS NOT DISTINCT (hour, type, subtype, is_machine)
        );
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE email_event_counts_hourly;
        DROP TABLE campaign_recipient_link_activity;
        DROP TABLE campaign_recipient_activity;
        DROP TABLE campaign_link_stats;
        DROP TABLE campaign_stats_series;
        DROP TABLE campaign_stats;
        DROP FUNCTION campaign_stats_granularity(timestamptz, timestamptz);
        DROP FUNCTION campaign_stats_bucket(timestamptz, timestamptz);
        DROP FUNCTION campaign_stats_hourly_until(timestamptz);
        DROP TABLE stats_rollup_state;
        DROP INDEX email_events_txid_idx;
        ALTER TABLE email_events DROP COLUMN txid;
        """
    )
