-- Campaign stats (campaigns.lifecycle.stats): roll email_events and the ledger up into the tables analysts query.
-- One rollup run is one REPEATABLE READ transaction: the events it counts, the per-recipient state it updates and
-- the snapshot it stores as "counted up to here" commit together, so an event is counted exactly once.

-- name: lock-rollup
-- One rollup at a time, whatever the DAG's max_active_runs says (a manual run, a test, a second scheduler). Taken
-- on the session BEFORE the rollup transaction starts, so that transaction's snapshot sees what the previous
-- rollup committed.
SELECT pg_advisory_lock(hashtext('campaigns.stats.rollup'))

-- name: unlock-rollup
SELECT pg_advisory_unlock(hashtext('campaigns.stats.rollup'))

-- name: repeatable-read
-- Every statement of the run sees the one snapshot that pg_current_snapshot() returns and the run stores.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ

-- name: ensure-rollup-state
-- The migration inserts the row; recreating it (after a TRUNCATE) just means the next run is a first run.
INSERT INTO stats_rollup_state (name) VALUES ('email_events') ON CONFLICT (name) DO NOTHING

-- name: rollup-state
SELECT pg_current_snapshot()::text AS current, snapshot::text AS previous
  FROM stats_rollup_state
 WHERE name = 'email_events'
   FOR UPDATE

-- name: stage-events
-- The run's batch of events, chosen by {which}: stage-all-events on the first run, stage-new-events after it.
CREATE TEMP TABLE stats_batch ON COMMIT DROP AS
SELECT e.id, e.campaign_id, e.recipient_id, e.type, e.subtype, e.link_id, e.is_machine, e.occurred_at,
       coalesce(c.started_at, c.created_at) AS started,
       campaign_stats_bucket(coalesce(c.started_at, c.created_at), e.occurred_at) AS bucket
  FROM email_events e
  LEFT JOIN campaigns c ON c.id = e.campaign_id
 WHERE {which}

-- name: stage-all-events
-- The first run: every event this transaction sees (rows from before migration 0003 have no txid).
e.txid IS NULL OR pg_visible_in_snapshot(e.txid, %(current)s::pg_snapshot)

-- name: stage-new-events
-- Exactly the events committed between the previous run's snapshot and this one's, whatever their ids: an event
-- of a transaction still running at the previous run (id lower than ones already counted) is not visible in that
-- snapshot, so it is taken now. `txid >= xmin(previous)` lets the txid index skip everything older (every
-- transaction below xmin had finished by the previous run); the cost follows the new events, not the history.
e.txid >= pg_snapshot_xmin(%(previous)s::pg_snapshot)
   AND NOT pg_visible_in_snapshot(e.txid, %(previous)s::pg_snapshot)
   AND pg_visible_in_snapshot(e.txid, %(current)s::pg_snapshot)

-- name: count-batch
SELECT count(*) AS n FROM stats_batch

-- name: count-events-by-hour
INSERT INTO email_event_counts_hourly AS h (hour, type, subtype, is_machine, events)
SELECT date_trunc('hour', occurred_at, 'UTC'), type, subtype, is_machine, count(*)
  FROM stats_batch
 GROUP BY 1, 2, 3, 4
    ON CONFLICT (hour, type, subtype, is_machine) DO UPDATE SET events = h.events + excluded.events

-- name: stage-recipient-firsts
-- Per recipient, the batch's first event of each kind against the stored first: a row per (recipient, metric)
-- whose first moved. old_at NULL: the recipient counts for the first time (+1); otherwise an event that happened
-- earlier arrived late, and only its time-series bucket moves. Only events of campaigns that exist (started).
CREATE TEMP TABLE stats_firsts ON COMMIT DROP AS
WITH batch AS (
    SELECT campaign_id, recipient_id, min(started) AS started,
           min(occurred_at) FILTER (WHERE type = 'open') AS open_at,
           min(occurred_at) FILTER (WHERE type = 'open' AND NOT is_machine) AS human_open_at,
           min(occurred_at) FILTER (WHERE type = 'click') AS click_at,
           min(occurred_at) FILTER (WHERE type = 'click' AND NOT is_machine) AS human_click_at,
           min(occurred_at) FILTER (WHERE type = 'delivery') AS delivered_at,
           min(occurred_at) FILTER (WHERE type = 'bounce') AS bounced_at,
           min(occurred_at) FILTER (WHERE type = 'bounce' AND subtype = 'Permanent') AS hard_bounced_at,
           min(occurred_at) FILTER (WHERE type = 'complaint') AS complained_at,
           min(occurred_at) FILTER (WHERE type = 'unsubscribe') AS unsubscribed_at
      FROM stats_batch
     WHERE recipient_id IS NOT NULL AND started IS NOT NULL
       AND type IN ('open', 'click', 'delivery', 'bounce', 'complaint', 'unsubscribe')
     GROUP BY campaign_id, recipient_id
)
SELECT b.campaign_id, b.recipient_id, b.started, m.metric, m.old_at, m.at AS new_at
  FROM batch b
  LEFT JOIN campaign_recipient_activity a ON a.recipient_id = b.recipient_id
 CROSS JOIN LATERAL (VALUES
        ('unique_opens', a.first_open_at, b.open_at),
        ('unique_human_opens', a.first_human_open_at, b.human_open_at),
        ('unique_clicks', a.first_click_at, b.click_at),
        ('unique_human_clicks', a.first_human_click_at, b.human_click_at),
        ('delivered', a.delivered_at, b.delivered_at),
        ('bounced', a.bounced_at, b.bounced_at),
        ('bounced_hard', a.hard_bounced_at, b.hard_bounced_at),
        ('complained', a.complained_at, b.complained_at),
        ('unsubscribes', a.unsubscribed_at, b.unsubscribed_at)
       ) AS m(metric, old_at, at)
 WHERE m.at IS NOT NULL AND (m.old_at IS NULL OR m.at < m.old_at)

-- name: save-recipient-firsts
-- new_at is never later than the stored value, so "the new one if it moved" is the earliest.
INSERT INTO campaign_recipient_activity AS a
       (recipient_id, campaign_id, first_open_at, first_human_open_at, first_click_at, first_human_click_at,
        delivered_at, bounced_at, hard_bounced_at, complained_at, unsubscribed_at)
SELECT recipient_id, min(campaign_id),
       min(new_at) FILTER (WHERE metric = 'unique_opens'),
       min(new_at) FILTER (WHERE metric = 'unique_human_opens'),
       min(new_at) FILTER (WHERE metric = 'unique_clicks'),
       min(new_at) FILTER (WHERE metric = 'unique_human_clicks'),
       min(new_at) FILTER (WHERE metric = 'delivered'),
       min(new_at) FILTER (WHERE metric = 'bounced'),
       min(new_at) FILTER (WHERE metric = 'bounced_hard'),
       min(new_at) FILTER (WHERE metric = 'complained'),
       min(new_at) FILTER (WHERE metric = 'unsubscribes')
  FROM stats_firsts
 GROUP BY recipient_id
    ON CONFLICT (recipient_id) DO UPDATE
   SET first_open_at = coalesce(excluded.first_open_at, a.first_open_at),
       first_human_open_at = coalesce(excluded.first_human_open_at, a.first_human_open_at),
       first_click_at = coalesce(excluded.first_click_at, a.first_click_at),
       first_human_click_at = coalesce(excluded.first_human_click_at, a.first_human_click_at),
       delivered_at = coalesce(excluded.delivered_at, a.delivered_at),
       bounced_at = coalesce(excluded.bounced_at, a.bounced_at),
       hard_bounced_at = coalesce(excluded.hard_bounced_at, a.hard_bounced_at),
       complained_at = coalesce(excluded.complained_at, a.complained_at),
       unsubscribed_at = coalesce(excluded.unsubscribed_at, a.unsubscribed_at)

-- name: stage-link-firsts
-- The same per (recipient, link): unique clicks of each link.
CREATE TEMP TABLE stats_link_firsts ON COMMIT DROP AS
WITH batch AS (
    SELECT campaign_id, recipient_id, link_id, min(occurred_at) AS click_at,
           min(occurred_at) FILTER (WHERE NOT is_machine) AS human_click_at
      FROM stats_batch
     WHERE type = 'click' AND link_id IS NOT NULL AND recipient_id IS NOT NULL AND started IS NOT NULL
     GROUP BY campaign_id, recipient_id, link_id
)
SELECT b.campaign_id, b.recipient_id, b.link_id, m.metric, m.old_at, m.at AS new_at
  FROM batch b
  LEFT JOIN campaign_recipient_link_activity a ON a.recipient_id = b.recipient_id AND a.link_id = b.link_id
 CROSS JOIN LATERAL (VALUES
        ('unique_clicks', a.first_click_at, b.click_at),
        ('unique_human_clicks', a.first_human_click_at, b.human_click_at)
       ) AS m(metric, old_at, at)
 WHERE m.at IS NOT NULL AND (m.old_at IS NULL OR m.at < m.old_at)

-- name: save-link-firsts
INSERT INTO campaign_recipient_link_activity AS a
       (recipient_id, link_id, campaign_id, first_click_at, first_human_click_at)
SELECT recipient_id, link_id, min(campaign_id),
       min(new_at) FILTER (WHERE metric = 'unique_clicks'),
       min(new_at) FILTER (WHERE metric = 'unique_human_clicks')
  FROM stats_link_firsts
 GROUP BY recipient_id, link_id
    ON CONFLICT (recipient_id, link_id) DO UPDATE
   SET first_click_at = coalesce(excluded.first_click_at, a.first_click_at),
       first_human_click_at = coalesce(excluded.first_human_click_at, a.first_human_click_at)

-- name: apply-link-deltas
WITH deltas AS (
    SELECT campaign_id, link_id, count(*) AS clicks, count(*) FILTER (WHERE NOT is_machine) AS human_clicks,
           0 AS unique_clicks, 0 AS unique_human_clicks
      FROM stats_batch
     WHERE type = 'click' AND link_id IS NOT NULL AND started IS NOT NULL
     GROUP BY campaign_id, link_id
    UNION ALL
    SELECT campaign_id, link_id, 0, 0, count(*) FILTER (WHERE metric = 'unique_clicks'),
           count(*) FILTER (WHERE metric = 'unique_human_clicks')
      FROM stats_link_firsts
     WHERE old_at IS NULL
     GROUP BY campaign_id, link_id
)
INSERT INTO campaign_link_stats AS s (campaign_id, link_id, clicks, human_clicks, unique_clicks, unique_human_clicks)
SELECT campaign_id, link_id, sum(clicks), sum(human_clicks), sum(unique_clicks), sum(unique_human_clicks)
  FROM deltas
 GROUP BY campaign_id, link_id
    ON CONFLICT (campaign_id, link_id) DO UPDATE
   SET clicks = s.clicks + excluded.clicks,
       human_clicks = s.human_clicks + excluded.human_clicks,
       unique_clicks = s.unique_clicks + excluded.unique_clicks,
       unique_human_clicks = s.unique_human_clicks + excluded.unique_human_clicks

-- name: stage-deltas
-- Everything this batch adds, as (campaign, bucket, metric, n): totals from the events, +1 at the bucket of each
-- new first and -1 at the bucket a moved first left. Summed over buckets, a moved first adds nothing to the
-- campaign's unique counts; per bucket, the series stays equal to a from-scratch count.
CREATE TEMP TABLE stats_deltas ON COMMIT DROP AS
SELECT campaign_id, min(started) AS started, bucket_start, metric, sum(n)::bigint AS n
  FROM (SELECT b.campaign_id, b.started, b.bucket AS bucket_start, m.metric, 1 AS n
          FROM stats_batch b
         CROSS JOIN LATERAL (VALUES
                ('opens', b.type = 'open'),
                ('human_opens', b.type = 'open' AND NOT b.is_machine),
                ('clicks', b.type = 'click'),
                ('human_clicks', b.type = 'click' AND NOT b.is_machine)
               ) AS m(metric, hit)
         WHERE b.started IS NOT NULL AND b.type IN ('open', 'click') AND m.hit
        UNION ALL
        SELECT campaign_id, started, campaign_stats_bucket(started, new_at), metric, 1
          FROM stats_firsts
        UNION ALL
        SELECT campaign_id, started, campaign_stats_bucket(started, old_at), metric, -1
          FROM stats_firsts
         WHERE old_at IS NOT NULL) AS d
 GROUP BY campaign_id, bucket_start, metric

-- name: apply-campaign-deltas
-- {metrics}, {metric_sums} and {metric_increments} list the event metrics (campaigns.lifecycle.stats
-- EVENT_METRICS, the columns of migration 0003), composed from metric-sum and metric-increment below: the one
-- list both tables are incremented by.
INSERT INTO campaign_stats AS s (campaign_id, {metrics}, events_rolled_up_at)
SELECT campaign_id,
       {metric_sums},
       now()
  FROM stats_deltas
 GROUP BY campaign_id
    ON CONFLICT (campaign_id) DO UPDATE
   SET {metric_increments},
       events_rolled_up_at = excluded.events_rolled_up_at

-- name: apply-series-deltas
INSERT INTO campaign_stats_series AS s (campaign_id, bucket_start, granularity, {metrics})
SELECT campaign_id, bucket_start, campaign_stats_granularity(min(started), bucket_start),
       {metric_sums}
  FROM stats_deltas
 GROUP BY campaign_id, bucket_start
    ON CONFLICT (campaign_id, bucket_start) DO UPDATE
   SET {metric_increments}

-- name: metric-sum
-- One metric's delta in the batch; 0 where it has none (the columns are NOT NULL, and s.x + NULL is NULL).
coalesce(sum(n) FILTER (WHERE metric = {metric_name}), 0)

-- name: metric-increment
{metric} = s.{metric} + excluded.{metric}

-- name: campaigns-to-recount
-- Ledger counts are cheap per campaign (its rows through the unique index) but not across history, so only
-- campaigns that may have changed are counted: never counted, sending or paused (rows move, unknown rows get
-- released), the campaign row changed since the last count (a state move: finalize, cancel, snapshot), or it has
-- `unknown` rows and events in this batch (an SES event settles an unknown row in the transaction that records
-- it). Opens trickling in for a finished campaign do not recount its ledger.
SELECT c.id
  FROM campaigns c
  LEFT JOIN campaign_stats s ON s.campaign_id = c.id
 WHERE s.ledger_counted_at IS NULL
    OR c.status IN ('running', 'paused')
    OR s.ledger_seen_status IS DISTINCT FROM c.status
    OR s.ledger_seen_updated_at IS DISTINCT FROM c.updated_at
    OR (s.unknown > 0 AND c.id IN (SELECT campaign_id FROM stats_batch WHERE campaign_id IS NOT NULL))
 ORDER BY c.id

-- name: recount-ledger
WITH counts AS (
    SELECT campaign_id, status AS row_status, skip_reason, count(*) AS n
      FROM campaign_recipients
     WHERE campaign_id = ANY(%(campaign_ids)s)
     GROUP BY campaign_id, row_status, skip_reason
)
INSERT INTO campaign_stats AS s
       (campaign_id, recipients, pending, sending, sent, failed, skipped, cancelled, unknown, skipped_by_reason,
        ledger_seen_status, ledger_seen_updated_at, ledger_counted_at)
SELECT c.id,
       coalesce(sum(n), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'pending'), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'sending'), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'sent'), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'failed'), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'skipped'), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'cancelled'), 0),
       coalesce(sum(n) FILTER (WHERE row_status = 'unknown'), 0),
       coalesce(jsonb_object_agg(skip_reason, n) FILTER (WHERE row_status = 'skipped'), '{}'::jsonb),
       c.status, c.updated_at, now()
  FROM campaigns c
  LEFT JOIN counts ON counts.campaign_id = c.id
 WHERE c.id = ANY(%(campaign_ids)s)
 GROUP BY c.id
    ON CONFLICT (campaign_id) DO UPDATE
   SET recipients = excluded.recipients, pending = excluded.pending, sending = excluded.sending,
       sent = excluded.sent, failed = excluded.failed, skipped = excluded.skipped, cancelled = excluded.cancelled,
       unknown = excluded.unknown, skipped_by_reason = excluded.skipped_by_reason,
       ledger_seen_status = excluded.ledger_seen_status, ledger_seen_updated_at = excluded.ledger_seen_updated_at,
       ledger_counted_at = excluded.ledger_counted_at

-- name: reset-sent-series
UPDATE campaign_stats_series SET sent = 0 WHERE campaign_id = ANY(%(campaign_ids)s) AND sent <> 0

-- name: count-sent-series
-- Sent per bucket, from the ledger's sent_at (updated_at for a row settled without one).
INSERT INTO campaign_stats_series AS s (campaign_id, bucket_start, granularity, sent)
SELECT campaign_id, bucket_start, campaign_stats_granularity(started, bucket_start), count(*)
  FROM (SELECT r.campaign_id, coalesce(c.started_at, c.created_at) AS started,
               campaign_stats_bucket(coalesce(c.started_at, c.created_at), coalesce(r.sent_at, r.updated_at))
                   AS bucket_start
          FROM campaign_recipients r
          JOIN campaigns c ON c.id = r.campaign_id
         WHERE r.campaign_id = ANY(%(campaign_ids)s) AND r.status = 'sent') AS sent
 GROUP BY campaign_id, started, bucket_start
    ON CONFLICT (campaign_id, bucket_start) DO UPDATE SET sent = excluded.sent

-- name: save-rollup-state
UPDATE stats_rollup_state
   SET snapshot = %(current)s::pg_snapshot, events_rolled_up = events_rolled_up + %(events)s,
       last_run_at = now(), last_run_events = %(events)s
 WHERE name = 'email_events'

-- name: prune-events
-- Retention: only events the rollup has counted (visible in its stored snapshot; NULL txid rows predate the
-- stats and were counted by the first run), oldest first, a bounded chunk per statement so locks stay short.
WITH state AS (
    SELECT snapshot FROM stats_rollup_state WHERE name = 'email_events' AND snapshot IS NOT NULL
), doomed AS (
    SELECT e.id
      FROM email_events e, state
     WHERE e.created_at < now() - make_interval(days => %(days)s)
       AND (e.txid IS NULL OR pg_visible_in_snapshot(e.txid, state.snapshot))
     ORDER BY e.created_at
     LIMIT %(limit)s
)
DELETE FROM email_events e USING doomed WHERE e.id = doomed.id

-- name: campaign-stats
SELECT c.id AS campaign_id, c.key, c.name, c.status, c.started_at, c.finished_at,
       s.recipients, s.pending, s.sending, s.sent, s.failed, s.skipped, s.cancelled, s.unknown, s.skipped_by_reason,
       s.delivered, s.bounced, s.bounced_hard, s.bounced_soft, s.complained,
       s.opens, s.human_opens, s.unique_opens, s.unique_human_opens,
       s.clicks, s.human_clicks, s.unique_clicks, s.unique_human_clicks, s.unsubscribes,
       s.ledger_counted_at, s.events_rolled_up_at, r.last_run_at AS rolled_up_at
  FROM campaigns c
  LEFT JOIN campaign_stats s ON s.campaign_id = c.id
  LEFT JOIN stats_rollup_state r ON r.name = 'email_events'
 WHERE c.id = %(campaign_id)s

-- name: campaign-link-stats
-- Every tracked link of the campaign, clicked or not (and a clicked link id that has no link row, should one).
SELECT link_id, l.url, coalesce(s.clicks, 0) AS clicks, coalesce(s.human_clicks, 0) AS human_clicks,
       coalesce(s.unique_clicks, 0) AS unique_clicks, coalesce(s.unique_human_clicks, 0) AS unique_human_clicks
  FROM (SELECT link_id, url FROM campaign_links WHERE campaign_id = %(campaign_id)s) AS l
  FULL JOIN (SELECT * FROM campaign_link_stats WHERE campaign_id = %(campaign_id)s) AS s USING (link_id)
 ORDER BY link_id

-- name: campaign-series
SELECT bucket_start, granularity, sent, delivered, bounced, bounced_hard, complained, opens, human_opens,
       unique_opens, unique_human_opens, clicks, human_clicks, unique_clicks, unique_human_clicks, unsubscribes
  FROM campaign_stats_series
 WHERE campaign_id = %(campaign_id)s
 ORDER BY bucket_start
