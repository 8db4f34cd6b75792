-- The SES account-level suppression list synced with the product's suppressions (campaigns.feedback.
-- ses_account_list): where the last import left off, the import itself, and what the push still has to send.

-- name: high-water
-- The newest LastUpdateTime the last successful import saw; no row: never synced, read the whole list.
SELECT high_water, synced_at, run_id
  FROM ses_suppression_sync

-- name: save-high-water
-- Written only after every page is stored, so a failed run starts again from the previous mark. greatest() keeps
-- the mark from moving back when a run (a full one, say) saw only older entries; NULLs are ignored by greatest().
INSERT INTO ses_suppression_sync (id, high_water, synced_at, run_id)
VALUES (true, %(high_water)s, now(), %(run_id)s)
    ON CONFLICT (id) DO UPDATE
   SET high_water = greatest(ses_suppression_sync.high_water, excluded.high_water),
       synced_at = excluded.synced_at, run_id = excluded.run_id
RETURNING high_water

-- name: import
-- One page of the account list in one statement. A new address becomes a `ses-account` suppression; an existing
-- one keeps its reason unless it is the weaker soft_bounce_limit (the rule of events.sql's `suppress`: nothing
-- downgrades hard_bounce/complaint, and unsubscribe/manual stay as the person set them). Either way the row is
-- marked as listed, so the push never sends it back. `before` reads the rows as they were when the statement
-- started (every CTE sees one snapshot), which is what tells added, upgraded and kept apart; only the first two
-- get an audit row. The caller passes each address once (ON CONFLICT cannot touch a row twice in one statement).
WITH entries AS (
    SELECT *
      FROM unnest(%(emails)s::text[], %(reasons)s::text[], %(details)s::text[]) AS e(email, reason, detail)
), before AS (
    SELECT email, reason
      FROM suppressions
     WHERE email = ANY(%(emails)s)
       FOR UPDATE
), upserted AS (
    INSERT INTO suppressions AS s (email, reason, source, detail, ses_account_listed_at)
    SELECT email, reason, 'ses-account', detail, now()
      FROM entries
        ON CONFLICT (email) DO UPDATE
       SET reason = CASE WHEN s.reason = 'soft_bounce_limit' THEN excluded.reason ELSE s.reason END,
           source = CASE WHEN s.reason = 'soft_bounce_limit' THEN excluded.source ELSE s.source END,
           detail = CASE WHEN s.reason = 'soft_bounce_limit' THEN excluded.detail ELSE s.detail END,
           created_at = CASE WHEN s.reason = 'soft_bounce_limit' THEN now() ELSE s.created_at END,
           ses_account_listed_at = coalesce(s.ses_account_listed_at, excluded.ses_account_listed_at)
    RETURNING s.email
), changed AS (
    SELECT e.email, e.detail, b.reason AS old_reason
      FROM entries e
      LEFT JOIN before b USING (email)
     WHERE b.reason IS NULL OR b.reason = 'soft_bounce_limit'
), audited AS (
    INSERT INTO suppression_changes (email, action, reason, old_reason, actor, run_id)
    SELECT email, 'add', detail, old_reason, %(actor)s, %(run_id)s
      FROM changed
)
SELECT e.email, b.reason AS old_reason, c.email IS NOT NULL AS changed
  FROM entries e
  LEFT JOIN before b USING (email)
  LEFT JOIN changed c USING (email)

-- name: to-push
-- The product's own hard bounces and complaints that SES does not have yet (never imported from it, never pushed);
-- oldest first, so a long backlog goes out in the order the addresses were suppressed.
SELECT email, reason
  FROM suppressions
 WHERE reason IN ('hard_bounce', 'complaint')
   AND ses_account_listed_at IS NULL
 ORDER BY created_at, email

-- name: mark-listed
-- After SES took the address: one row per call, so a run stopped half-way does not push the same addresses again.
UPDATE suppressions
   SET ses_account_listed_at = now()
 WHERE email = %(email)s
