-- Reads for the Campaigns view in the Airflow UI. The pages read the campaign row, the stats rollups
-- (campaign_stats, campaign_stats_series, campaign_link_stats through campaigns.lifecycle.stats) or the small
-- campaign_actions log: never email_events, so a page costs the same for 100 or 10,000,000 rows. The ledger is
-- read only for one campaign at a time: by its unique (campaign_id, lower(email)) index for a search, by primary
-- key for a preview, and counted by status for the live progress of a running campaign.

-- name: campaign-list
-- Newest first, keyset paged by id (an OFFSET would read every skipped row). No recipient address is selected:
-- list pages never show one. The rates are computed in Python from these counts (campaign_view.data.rates).
-- `unknown` (the rolled-up ledger count) marks campaigns with sends whose outcome was lost.
SELECT c.id, c.key, c.name, c.status, c.status_reason, c.run_id, c.send_at, c.created_at, c.started_at,
       c.finished_at,
       coalesce(s.recipients, 0) AS recipients, coalesce(s.sent, 0) AS sent, coalesce(s.pending, 0) AS pending,
       coalesce(s.bounced, 0) AS bounced, coalesce(s.complained, 0) AS complained,
       coalesce(s.unique_opens, 0) AS unique_opens, coalesce(s.unique_human_opens, 0) AS unique_human_opens,
       coalesce(s.unique_clicks, 0) AS unique_clicks, coalesce(s.unsubscribes, 0) AS unsubscribes,
       coalesce(s.unknown, 0) AS unknown, s.ledger_counted_at
  FROM campaigns c
  LEFT JOIN campaign_stats s ON s.campaign_id = c.id
 WHERE (%(status)s::text IS NULL OR c.status = %(status)s::text)
   AND (%(before)s::bigint IS NULL OR c.id < %(before)s::bigint)
 ORDER BY c.id DESC
 LIMIT %(limit)s

-- name: status-counts
-- The filter chips: how many campaigns are in each state (campaigns_status_idx; campaigns are few).
SELECT status, count(*) AS n FROM campaigns GROUP BY status ORDER BY status

-- name: campaign-row
-- What the campaign page shows beyond campaign_stats(): why it is in its state, and its current send run.
SELECT id, key, name, subject, status, status_reason, run_id, send_at, recurrence, parent_id, created_at,
       updated_at, started_at, finished_at
  FROM campaigns
 WHERE id = %(campaign_id)s

-- name: campaign-actions
-- What the reputation guard, the SES account guard, campaign_control and the dispatcher did, newest first
-- (campaign_actions_campaign_idx). `detail` may carry addresses of test sends; only the run ids are read from it.
SELECT id, requested_at, action, actor, run_id, old_status, new_status, reason,
       detail->>'trigger_run_id' AS trigger_run_id, detail->>'previous_run_id' AS previous_run_id
  FROM campaign_actions
 WHERE campaign_id = %(campaign_id)s
 ORDER BY requested_at DESC, id DESC
 LIMIT %(limit)s

-- name: ledger-search
-- An address or its start, on the campaign's own page only: the unique (campaign_id, lower(email)) index is read
-- from the prefix on, and the scan ends at the 10th match.
SELECT id, email, status
  FROM campaign_recipients
 WHERE campaign_id = %(campaign_id)s AND lower(email) >= %(prefix)s AND starts_with(lower(email), %(prefix)s)
 ORDER BY lower(email)
 LIMIT %(limit)s

-- name: ledger-row
-- One recipient's frozen merge data for "as X received it"; the campaign id keeps the lookup to its own page.
SELECT id, email, first_name, last_name, merge_data, status
  FROM campaign_recipients
 WHERE id = %(id)s AND campaign_id = %(campaign_id)s

-- name: audience-search
-- A draft has no ledger yet: {members} is the ledger's own audience-preview query (ledger.audience_query, bound
-- with LIMIT NULL), so the search finds exactly the people the snapshot would freeze, with the same merge data.
SELECT id, email, first_name, last_name, merge_data
  FROM ({members}) AS m
 WHERE (%(prefix)s::text IS NULL OR starts_with(lower(m.email), %(prefix)s::text))
   AND (%(contact_id)s::bigint IS NULL OR m.id = %(contact_id)s::bigint)
 ORDER BY lower(m.email)
 LIMIT %(shown)s

-- name: test-sends
-- The result of the test sends asked for on the page (send_test_email writes them), newest first
-- (test_sends_campaign_idx).
SELECT id, email, status, error, ses_message_id, run_id, sent_at
  FROM test_sends
 WHERE campaign_id = %(campaign_id)s
 ORDER BY sent_at DESC, id DESC
 LIMIT %(limit)s

-- name: campaign-progress
-- The live part of a running campaign's page (progress.json, polled every 2 s): its state now.
SELECT id, status, status_reason, run_id, started_at, finished_at, updated_at
  FROM campaigns
 WHERE id = %(campaign_id)s
