-- name: record-action
-- The audit row of a state action (campaign_control, the dispatcher, the reputation and account guards), written
-- in the transaction of the move it records. requested_at defaults to now(), the start of that transaction: the
-- clock the "stops within 5 seconds" promises count from.
INSERT INTO campaign_actions (campaign_id, action, actor, run_id, old_status, new_status, reason, detail)
VALUES (%(campaign_id)s, %(action)s, %(actor)s, %(run_id)s, %(old_status)s, %(new_status)s, %(reason)s, %(detail)s)
RETURNING id, requested_at
