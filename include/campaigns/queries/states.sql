-- name: record-action
-- The audit row of a state action (campaign_control, the dispatcher, the reputation and account guards), written
-- in the transaction of the move it records. requested_at defaults to now(), the start of that transaction: the
-- clock the "stops within 5 seconds" promises count from.
INSERT INTO campaign_actions (campaign_id, action, actor, run_id, old_status, new_status, reason, detail)
VALUES (%(campaign_id)s, %(action)s, %(actor)s, %(run_id)s, %(old_status)s, %(new_status)s, %(reason)s, %(detail)s)
RETURNING id, requested_at

-- name: campaign-status
-- The state a move is judged against. No lock: move-campaign repeats the check in its WHERE clause.
SELECT status FROM campaigns WHERE id = %(campaign_id)s

-- name: move-campaign
-- One UPDATE guarded by the old state: a move by someone else between campaign-status and here matches no row,
-- and the caller says "try again" instead of overwriting it. started_at keeps the first start (a resume is not a
-- new start); finished_at is set on the finished states and cleared on running (a sent campaign whose unknown rows
-- were released is not finished while it sends them).
UPDATE campaigns
   SET status = %(new)s, status_reason = %(reason)s, updated_at = now(),
       started_at = CASE WHEN %(new)s = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
       finished_at = CASE WHEN %(new)s IN ('sent', 'cancelled', 'failed') THEN now()
                          WHEN %(new)s = 'running' THEN NULL ELSE finished_at END
 WHERE id = %(id)s AND status = %(old)s
RETURNING id, status, status_reason
