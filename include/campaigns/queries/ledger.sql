-- The ledger (campaign_recipients): one row per (campaign, address).
-- pending -> sending -> sent | failed | skipped | cancelled | unknown

-- name: audience
-- The audience as CTEs `members`, `excluded` and `classified`, shared by the snapshot and the preflight preview so
-- both see exactly the same people. Contacts are unique by lower(email), so GROUP BY c.id dedupes addresses; a
-- member of several target lists counts as subscribed if any membership is. Left-out members carry a skip_reason.
-- Membership of an exclude list counts whatever its status (an unsubscribed customer is still a customer), named
-- by the first such list; it is the last reason checked, so `excluded:<list>` counts exactly the people the
-- exclusion kept from getting the campaign. With no exclude lists `excluded` is empty and costs nothing.
-- {filters} is built by campaigns.audience.filters with bound parameters.
members AS (
    SELECT c.id, c.email, c.first_name, c.last_name, c.attributes,
           bool_or(lm.status = 'subscribed') AS subscribed
      FROM contacts c
      JOIN list_members lm ON lm.contact_id = c.id
      JOIN lists l ON l.id = lm.list_id
     WHERE l.name = ANY(%(lists)s) AND {filters}
     GROUP BY c.id
), excluded AS (
    SELECT lm.contact_id, min(l.name) AS list_name
      FROM list_members lm
      JOIN lists l ON l.id = lm.list_id
     WHERE l.name = ANY(%(exclude_lists)s::text[])
     GROUP BY lm.contact_id
), classified AS (
    SELECT m.id, m.email, m.first_name, m.last_name, m.attributes AS merge_data,
           CASE WHEN s.email IS NOT NULL THEN 'suppressed:' || s.reason
                WHEN NOT m.subscribed THEN 'unsubscribed'
                -- SES has no SMTPUTF8: the local part must be printable ASCII; IDN domains are punycoded later.
                WHEN m.email !~ '^[!-?A-~]+@[^@[:space:]]+\.[^@[:space:]]+$' THEN 'invalid_address'
                WHEN x.list_name IS NOT NULL THEN 'excluded:' || x.list_name
           END AS skip_reason
      FROM members m
      LEFT JOIN suppressions s ON s.email = lower(m.email)
      LEFT JOIN excluded x ON x.contact_id = m.id
)

-- name: snapshot
-- One set-based statement: every audience member gets exactly one row, excluded ones as `skipped` with the
-- reason (never silently dropped). Pages are numbered over the sendable rows only, in contact order. No ON CONFLICT:
-- the snapshot runs once per campaign (campaigns.snapshot guards it) and duplicates cannot arise (contacts are unique
-- by lower(email)); the unique index would still refuse one, and speculative inserts cost a sixth of a 1M snapshot.
WITH {audience}
INSERT INTO campaign_recipients
       (campaign_id, contact_id, email, first_name, last_name, merge_data, page_no, status, skip_reason)
SELECT %(campaign_id)s, id, email, first_name, last_name, merge_data,
       CASE WHEN skip_reason IS NULL
            THEN (row_number() OVER (PARTITION BY skip_reason IS NULL ORDER BY id) - 1) / %(page_size)s
       END,
       CASE WHEN skip_reason IS NULL THEN 'pending' ELSE 'skipped' END,
       skip_reason
  FROM classified

-- name: lock-campaign-snapshot
-- FOR UPDATE: a second snapshot of the same campaign (a retried task, a rerun) waits here for the first to commit,
-- then finds its snapshot and returns it instead of inserting the ledger again.
SELECT snapshot FROM campaigns WHERE id = %(campaign_id)s FOR UPDATE

-- name: snapshot-work-mem
-- Page numbering sorts the whole audience: keep that sort in memory for large lists. LOCAL: for the snapshot's
-- transaction only.
SET LOCAL work_mem = '256MB'

-- name: save-snapshot
-- The ledger's counts on the campaign row, in the snapshot's transaction: what every later snapshot call returns.
UPDATE campaigns SET snapshot = %(snapshot)s, updated_at = now() WHERE id = %(campaign_id)s

-- name: audience-preview
-- Preflight renders the people the snapshot would send to, up to a cap, and counts the rest.
WITH {audience}
SELECT id, email, first_name, last_name, merge_data, count(*) OVER () AS sendable
  FROM classified
 WHERE skip_reason IS NULL
 ORDER BY id
 LIMIT %(limit)s

-- name: audience-counts
-- The preflight's counts by reason, from the same CTEs as the snapshot: what the snapshot will store, before it does.
WITH {audience}
SELECT skip_reason, count(*) AS n
  FROM classified
 GROUP BY skip_reason

-- name: known-lists
-- Which of the named lists exist: preflight refuses an audience that names one that does not.
SELECT name FROM lists WHERE name = ANY(%(names)s::text[])

-- name: count-by-status
SELECT status, skip_reason, count(*) AS n
  FROM campaign_recipients
 WHERE campaign_id = %(campaign_id)s
 GROUP BY status, skip_reason
 ORDER BY status, skip_reason

-- name: open-pages
-- Pages that still have work (pending, or sending rows of a crashed attempt to be settled). A resumed campaign
-- plans only these, so it sends only what is still pending.
SELECT DISTINCT page_no
  FROM campaign_recipients
 WHERE campaign_id = %(campaign_id)s AND status IN ('pending', 'sending')
 ORDER BY page_no

-- name: settle-stale-sending
-- A retried or resumed send task: rows another attempt left in `sending` may have reached SES. They are NOT
-- resent. One that SES already reported on (a Send, Delivery, bounce or complaint event recorded by its tags: SES
-- publishes within seconds, long before Airflow retries the task, and the webhook leaves `sending` rows to their
-- sender) is `sent` with that event's message id; the rest become `unknown` for later events to settle.
WITH stale AS (
    SELECT r.id,
           (SELECT e.ses_message_id
              FROM email_events e
             WHERE e.recipient_id = r.id AND e.ses_message_id IS NOT NULL
               AND e.type IN ('send', 'delivery', 'bounce', 'complaint', 'delivery_delay')
             ORDER BY e.occurred_at
             LIMIT 1) AS message_id
      FROM campaign_recipients r
     WHERE r.campaign_id = %(campaign_id)s
       AND r.page_no BETWEEN %(first_page)s AND %(last_page)s
       AND r.status = 'sending'
       AND r.attempt IS DISTINCT FROM %(attempt)s
       FOR UPDATE OF r
)
UPDATE campaign_recipients r
   SET status = CASE WHEN s.message_id IS NULL THEN 'unknown' ELSE 'sent' END,
       ses_message_id = coalesce(r.ses_message_id, s.message_id),
       sent_at = CASE WHEN s.message_id IS NULL THEN r.sent_at ELSE coalesce(r.sent_at, now()) END,
       error = CASE WHEN s.message_id IS NULL
                    THEN 'attempt ' || coalesce(r.attempt, '?') || ' ended while sending; outcome unknown' END,
       updated_at = now()
  FROM stale s
 WHERE r.id = s.id
RETURNING r.status

-- name: next-pending
-- Keyset pagination on the (campaign_id, page_no, id) index: cost per chunk does not grow with progress.
SELECT id, page_no, email, first_name, last_name, merge_data
  FROM campaign_recipients
 WHERE campaign_id = %(campaign_id)s
   AND page_no BETWEEN %(first_page)s AND %(last_page)s
   AND (page_no, id) > (%(after_page)s, %(after_id)s)
   AND status = 'pending'
 ORDER BY page_no, id
 LIMIT %(limit)s

-- name: claim
-- Right before its own SES call a row becomes `sending` with this attempt's id, committed. The suppression list
-- is checked again here, so an unsubscribe, bounce or complaint that arrived mid-campaign takes effect.
-- The same statement records the thread's previous row as `sent` (%(sent_id)s, NULL when there is none): one round
-- trip per email, and a send thread never has more than one row `sending`, the one it is about to send or has
-- just sent. With %(id)s NULL it only records the sent row (ledger.mark_sent).
WITH sent AS (
    UPDATE campaign_recipients
       SET status = 'sent', ses_message_id = %(sent_message_id)s, sent_at = %(sent_at)s, error = NULL,
           updated_at = now()
     WHERE id = %(sent_id)s AND status = 'sending' AND attempt = %(attempt)s
), sup AS (SELECT reason FROM suppressions WHERE email = lower(%(email)s))
UPDATE campaign_recipients
   SET status = CASE WHEN EXISTS (SELECT 1 FROM sup) THEN 'skipped' ELSE 'sending' END,
       skip_reason = (SELECT 'suppressed:' || reason FROM sup),
       attempt = %(attempt)s, claimed_at = now(), updated_at = now()
 WHERE id = %(id)s AND status = 'pending'
RETURNING status, skip_reason

-- name: release-claim
-- Used when SES certainly did not receive the request (failed, back to pending, or unknown).
UPDATE campaign_recipients
   SET status = %(status)s, error = %(error)s, updated_at = now(),
       attempt = CASE WHEN %(status)s = 'pending' THEN NULL ELSE attempt END
 WHERE id = %(id)s AND status = 'sending' AND attempt = %(attempt)s

-- name: cancel-pending
UPDATE campaign_recipients
   SET status = 'cancelled', updated_at = now()
 WHERE campaign_id = %(campaign_id)s AND status = 'pending'
