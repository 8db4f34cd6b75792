-- campaign_control (pause, resume, cancel, release, start) and the Campaigns view's duplicate and test send: the
-- queries of campaigns.lifecycle.control. Every action is one transaction that holds the campaign row locked.

-- name: lock-campaign
-- FOR UPDATE: two control runs for the same campaign (a double click in the UI) act one after the other, so the
-- second sees the state the first left and is judged against it.
SELECT id, key, status, run_id, recurrence
  FROM campaigns
 WHERE id = %(campaign_id)s
   FOR UPDATE

-- name: action-of-run
-- A retried control task finds the row its first attempt wrote and reports it instead of acting twice.
SELECT id, campaign_id, action, old_status, new_status, detail, requested_at
  FROM campaign_actions
 WHERE campaign_id = %(campaign_id)s AND action = %(action)s AND actor = %(actor)s AND run_id = %(run_id)s
 ORDER BY id
 LIMIT 1

-- name: set-action-detail
UPDATE campaign_actions SET detail = %(detail)s WHERE id = %(id)s

-- name: set-campaign-run
-- The send run a resume/release starts is named before it exists, so send_campaign's resolve step accepts the
-- running campaign as its own and any other run is refused as "already being sent".
UPDATE campaigns SET run_id = %(run_id)s, updated_at = now() WHERE id = %(campaign_id)s

-- name: send-scheduled-now
-- A scheduled campaign started by a person: due now, so the send run's resolve step takes it at once. The guard on
-- status keeps this to the move apply_action judged under the row lock.
UPDATE campaigns SET send_at = now(), updated_at = now() WHERE id = %(campaign_id)s AND status = 'scheduled'

-- name: keys-starting-with
-- The keys a copy's new key must not take. left() instead of LIKE: keys may contain `_`, a LIKE wildcard.
SELECT key FROM campaigns WHERE left(key, length(%(prefix)s)) = %(prefix)s

-- name: copy-campaign
-- A duplicate is a new draft with the same content, audience and settings: no schedule, ledger, preflight report
-- or run (those belong to the campaign that was sent).
INSERT INTO campaigns (key, name, subject, preheader, from_email, from_name, reply_to, html, text, audience, settings)
SELECT %(key)s, name || ' (copy)', subject, preheader, from_email, from_name, reply_to, html, text, audience, settings
  FROM campaigns
 WHERE id = %(campaign_id)s
RETURNING id, key, name, status
