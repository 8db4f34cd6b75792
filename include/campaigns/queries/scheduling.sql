-- Scheduled and recurring campaigns: the queries of campaigns.lifecycle.scheduling (dispatch_scheduled_campaigns and the
-- scheduling checks of send_campaign's resolve step).
-- A one-off scheduled campaign: status `scheduled`, send_at set, recurrence NULL.
-- A recurring campaign (template): status `scheduled`, recurrence set, send_at = its next occurrence.
-- An occurrence (instance): its own campaign, parent_id = the template, occurrence_at = send_at.

-- name: due-recurring
-- Templates whose next occurrence has come. SKIP LOCKED: a template an analyst is redefining right now is
-- left for the next minute rather than waited on. Served by campaigns_due_idx (send_at WHERE status = 'scheduled').
SELECT id, key, recurrence, send_at
  FROM campaigns
 WHERE status = 'scheduled' AND recurrence IS NOT NULL AND send_at <= %(now)s
 ORDER BY send_at, id
   FOR UPDATE SKIP LOCKED

-- name: create-occurrence
-- The instance copies the template's content as it is now; its audience is frozen later, when its own send run
-- snapshots it. ON CONFLICT on campaigns_occurrence_key: whatever races, one instance per (template, occurrence).
INSERT INTO campaigns (key, name, subject, from_email, from_name, reply_to, html, text, audience, settings,
                       status, send_at, parent_id, occurrence_at)
SELECT %(key)s, name, subject, from_email, from_name, reply_to, html, text, audience, settings,
       'scheduled', %(occurrence_at)s, id, %(occurrence_at)s
  FROM campaigns
 WHERE id = %(template_id)s
    ON CONFLICT (parent_id, occurrence_at) WHERE parent_id IS NOT NULL DO NOTHING
RETURNING id, key, send_at

-- name: advance-recurring
-- Guarded by the send_at the dispatcher read, so a redefinition committed meanwhile is not overwritten.
UPDATE campaigns
   SET send_at = %(next_at)s, updated_at = now()
 WHERE id = %(template_id)s AND status = 'scheduled' AND send_at = %(send_at)s

-- name: hold-stale
-- scheduled -> held for one-off campaigns (and instances) whose send_at passed more than the hold delay ago and
-- that no send run has taken (run_id NULL): the scheduler was down, and a late send needs a person's decision.
-- One statement moves them and writes their campaign_actions rows; the WHERE is the state machine's guard.
-- %(campaign_id)s NULL: every stale campaign (the dispatcher); a value: only that one (a late send run).
WITH held AS (
    UPDATE campaigns
       SET status = 'held', updated_at = now(),
           status_reason = 'send_at ' || to_char(send_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                           || ' passed more than ' || %(hold_after_text)s || ' before it could be sent ('
                           || %(found_by)s || ' found it at '
                           || to_char(%(now)s::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                           || '); release it to send it now, or cancel it'
     WHERE status = 'scheduled' AND recurrence IS NULL AND run_id IS NULL
       AND send_at <= %(now)s::timestamptz - %(hold_after)s::interval
       AND (%(campaign_id)s::bigint IS NULL OR id = %(campaign_id)s::bigint)
    RETURNING id, key, send_at, status_reason
)
INSERT INTO campaign_actions (campaign_id, action, actor, run_id, old_status, new_status, reason, detail)
SELECT id, 'hold', %(actor)s, %(run_id)s, 'scheduled', 'held', status_reason,
       jsonb_build_object('send_at', send_at, 'found_at', %(now)s::timestamptz)
  FROM held
RETURNING campaign_id, reason

-- name: due-campaigns
-- One-off campaigns and instances whose time has come and that no send run has taken yet. A run that took one
-- (run_id set by its resolve step) and then failed leaves it alone: it is not re-dispatched every minute.
-- LIMIT keeps the mapped trigger task under Airflow's max_map_length; the rest go a minute later.
SELECT id, key, send_at
  FROM campaigns
 WHERE status = 'scheduled' AND recurrence IS NULL AND run_id IS NULL AND send_at <= %(now)s
 ORDER BY send_at, id
 LIMIT %(limit)s

-- name: claim-scheduled
-- A send run takes a due scheduled campaign: only if it is still scheduled for the time the run was started for
-- and no other run took it. Row lock + guard: two runs for the same campaign cannot both get it.
UPDATE campaigns
   SET run_id = %(run_id)s, updated_at = now()
 WHERE id = %(campaign_id)s AND status = 'scheduled' AND recurrence IS NULL AND send_at = %(send_at)s
   AND (run_id IS NULL OR run_id = %(run_id)s OR NOT %(exclusive)s)
RETURNING id, run_id
