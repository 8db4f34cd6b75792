-- Suppressions changed by a person (the manage_suppressions DAG): every add and remove is audited in
-- suppression_changes in the same statement that makes it.

-- name: existing
-- The current entries for the requested addresses, locked so the report of "already suppressed" / "removed"
-- describes exactly what this transaction then changes.
SELECT email, reason, source, detail, created_at
  FROM suppressions
 WHERE email = ANY(%(emails)s)
   FOR UPDATE

-- name: add
-- A manual suppression never replaces an existing one: a hard bounce or complaint stays what SES said it was
-- (ON CONFLICT DO NOTHING), and only the addresses actually added get an audit row.
WITH added AS (
    INSERT INTO suppressions (email, reason, source, detail)
    SELECT email, 'manual', %(source)s, %(reason)s
      FROM unnest(%(emails)s::text[]) AS wanted(email)
        ON CONFLICT (email) DO NOTHING
    RETURNING email
)
INSERT INTO suppression_changes (email, action, reason, old_reason, actor, run_id)
SELECT email, 'add', %(reason)s, NULL, %(actor)s, %(run_id)s
  FROM added
RETURNING email

-- name: remove
-- The audit row keeps the reason the suppression had (old_reason), so a removed complaint can be told from a
-- removed manual entry later.
WITH removed AS (
    DELETE FROM suppressions
     WHERE email = ANY(%(emails)s)
    RETURNING email, reason
)
INSERT INTO suppression_changes (email, action, reason, old_reason, actor, run_id)
SELECT email, 'remove', %(reason)s, reason, %(actor)s, %(run_id)s
  FROM removed
RETURNING email, old_reason

-- name: export
-- COPY streams the whole list to the file without holding it in memory; timestamps in UTC, ISO 8601.
COPY (
    SELECT email, reason, source, detail,
           to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at
      FROM suppressions
     ORDER BY email
) TO STDOUT WITH (FORMAT csv, HEADER true)
