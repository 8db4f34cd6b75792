-- Unknown sends reconciled (campaigns.lifecycle.reconcile): the `unknown` ledger rows no SES event settled, reported
-- by reconcile_unknown and shown on the Campaigns view, and releasing them to `pending` for one more send.

-- name: unsettled
-- The one definition of "an unknown row no SES event settled" that the report and the release share. Its SES call
-- happened, if at all, around claimed_at, and SES publishes a Send event within seconds of accepting a message: a
-- row still `unknown` a window later is not going to be settled by one. A row with any event on record (an SES
-- event that came while it was still `sending`, which the webhook leaves to its sender, or an open or click) has
-- its answer: it is never reported or released for another send.
r.status = 'unknown'
AND coalesce(r.claimed_at, r.updated_at) < now() - make_interval(secs => %(window_seconds)s)
AND NOT EXISTS (SELECT 1 FROM email_events e WHERE e.recipient_id = r.id)

-- name: unsettled-report
-- Per campaign: how many such rows, since when, and the first few (by id) as a sample. NULL campaign_id: every
-- campaign, the hourly report; a campaign id: that campaign's rows. Both read the partial index of unknown rows
-- (migration 0007), which holds only the few rows a dead task left in flight.
WITH unsettled AS (
    SELECT r.campaign_id, r.id, r.email, r.claimed_at, r.error,
           count(*) OVER by_campaign AS unknown,
           min(coalesce(r.claimed_at, r.updated_at)) OVER by_campaign AS oldest,
           row_number() OVER (PARTITION BY r.campaign_id ORDER BY r.id) AS nth
      FROM campaign_recipients r
     WHERE (%(campaign_id)s::bigint IS NULL OR r.campaign_id = %(campaign_id)s::bigint)
       AND {unsettled}
    WINDOW by_campaign AS (PARTITION BY r.campaign_id)
)
SELECT u.campaign_id, c.key, c.status, u.unknown, u.oldest, u.id, u.email, u.claimed_at, u.error
  FROM unsettled u
  JOIN campaigns c ON c.id = u.campaign_id
 WHERE u.nth <= %(sample)s
 ORDER BY u.campaign_id, u.id

-- name: release-unsettled
-- One guarded statement, run in the release action's transaction with the campaign row locked: only rows that are
-- still unknown, still past the window and still without an event become pending. A row an SES event settled
-- between the page and the POST (the webhook locks the row and makes it sent or failed) no longer matches.
-- The attempt is cleared as for any row that goes back to pending; the error stays until the row is sent again.
UPDATE campaign_recipients r
   SET status = 'pending', attempt = NULL, updated_at = now()
 WHERE r.campaign_id = %(campaign_id)s
   AND {unsettled}
RETURNING r.id
