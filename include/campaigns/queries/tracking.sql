-- Tracking: campaign links, buffered open/click events, one-click unsubscribe.

-- name: register-links
-- Idempotent: the send pipeline may call it on every (re)run; a stored link id keeps its URL.
INSERT INTO campaign_links (campaign_id, link_id, url)
SELECT %(campaign_id)s, link_id, url
  FROM unnest(%(link_ids)s::integer[], %(urls)s::text[]) AS l(link_id, url)
ON CONFLICT (campaign_id, link_id) DO NOTHING

-- name: link-url
SELECT url FROM campaign_links WHERE campaign_id = %(campaign_id)s AND link_id = %(link_id)s

-- name: insert-buffered-events
-- One statement per drained batch (arrays in, unnest out) instead of one INSERT per event.
-- Idempotency: sns_message_id (UNIQUE) holds the event's spool key, 'spool:<segment>:<byte offset>', so a line can
-- never be inserted twice, whatever a drainer did before it crashed (the segment offset already makes it so).
-- The joins drop events whose campaign or ledger row no longer exists instead of failing the whole batch on a
-- foreign key, and give the address and sent_at: a click within scanner_seconds of sending is a machine click.
-- A click proves the message was opened: the same statement records one open (subtype implied_by_click) for a
-- clicking recipient with no open yet, in the table or in this batch (a statement does not see its own inserts),
-- copied from the recipient's first new click (machine flag included). Its conflict clause has no target: besides
-- a repeated key, email_events_one_implied_open (one per ledger row) may conflict when two drainers store clicks of
-- the same recipient at once and neither sees the other's open yet. Returns the number of events inserted (the
-- implied opens not counted).
WITH batch AS (
    SELECT *
      FROM unnest(%(event_keys)s::text[], %(types)s::text[], %(campaign_ids)s::bigint[],
                  %(recipient_ids)s::bigint[], %(link_ids)s::integer[], %(ips)s::inet[], %(user_agents)s::text[],
                  %(machine)s::boolean[], %(reasons)s::text[], %(methods)s::text[], %(occurred)s::float8[])
           AS u(event_key, type, campaign_id, recipient_id, link_id, ip, user_agent, is_machine, reasons, method,
                occurred_epoch)
), resolved AS (
    SELECT b.*, r.email, to_timestamp(b.occurred_epoch) AS occurred_at,
           coalesce(b.type = 'click' AND to_timestamp(b.occurred_epoch)
                    < r.sent_at + make_interval(secs => %(scanner_seconds)s), false) AS fast_click
      FROM batch b
      JOIN campaign_recipients r ON r.id = b.recipient_id AND r.campaign_id = b.campaign_id
      JOIN campaigns c ON c.id = b.campaign_id
), inserted AS (
    INSERT INTO email_events (campaign_id, recipient_id, email, type, subtype, link_id, ip, user_agent, is_machine,
                              sns_message_id, payload, occurred_at)
    SELECT campaign_id, recipient_id, email, type, NULL, link_id, ip, user_agent, is_machine OR fast_click,
           event_key,
           jsonb_build_object('spool_key', event_key, 'method', method,
                              'machine_reasons', to_jsonb(array_remove(
                                  string_to_array(reasons, ',') || CASE WHEN fast_click THEN 'within_seconds_of_send' END,
                                  NULL))),
           occurred_at
      FROM resolved
    ON CONFLICT (sns_message_id) DO NOTHING
    RETURNING id, campaign_id, recipient_id, email, type, ip, user_agent, is_machine, sns_message_id, occurred_at
), implied AS (
    INSERT INTO email_events (campaign_id, recipient_id, email, type, subtype, link_id, ip, user_agent, is_machine,
                              sns_message_id, payload, occurred_at)
    SELECT DISTINCT ON (c.recipient_id)
           c.campaign_id, c.recipient_id, c.email, 'open', 'implied_by_click', NULL, c.ip, c.user_agent,
           c.is_machine, c.sns_message_id || ':implied', jsonb_build_object('click_event_id', c.id), c.occurred_at
      FROM inserted c
     WHERE c.type = 'click'
       AND NOT EXISTS (SELECT 1 FROM resolved o WHERE o.recipient_id = c.recipient_id AND o.type = 'open')
       AND NOT EXISTS (SELECT 1 FROM email_events o WHERE o.recipient_id = c.recipient_id AND o.type = 'open')
     ORDER BY c.recipient_id, c.occurred_at
    ON CONFLICT DO NOTHING
)
SELECT count(*) AS n FROM inserted

-- name: unsubscribe-recipient
-- The ledger row a verified unsubscribe token names; the token's campaign must match (defence in depth).
SELECT id, campaign_id, contact_id, email
  FROM campaign_recipients
 WHERE id = %(recipient_id)s AND campaign_id = %(campaign_id)s

-- name: suppress-unsubscribe
-- Global suppression: the send path re-checks it right before each send, so it takes effect immediately.
INSERT INTO suppressions (email, reason, source, detail)
VALUES (lower(%(email)s), 'unsubscribe', 'one_click', %(detail)s)
ON CONFLICT (email) DO NOTHING

-- name: unsubscribe-list-members
-- Every list membership of the contact (by ledger contact id, else by address) becomes unsubscribed.
UPDATE list_members lm
   SET status = 'unsubscribed', unsubscribed_at = now()
 WHERE lm.status = 'subscribed'
   AND lm.contact_id IN (SELECT c.id FROM contacts c
                          WHERE c.id = %(contact_id)s OR lower(c.email) = lower(%(email)s))

-- name: record-unsubscribe-event
-- One unsubscribe event per ledger row, however often the POST is repeated (the key makes it idempotent).
INSERT INTO email_events (campaign_id, recipient_id, email, type, subtype, ip, user_agent, sns_message_id, payload)
VALUES (%(campaign_id)s, %(recipient_id)s, %(email)s, 'unsubscribe', %(subtype)s, %(ip)s, %(user_agent)s,
        'unsubscribe:' || %(campaign_id)s::text || ':' || %(recipient_id)s::text, %(payload)s)
ON CONFLICT (sns_message_id) DO NOTHING

-- name: spool-register-segment
-- A segment is known from the first time a drainer sees it, so that spool-lock-segment has a row to lock; racing
-- drainers both registering it is harmless.
INSERT INTO tracking_spool_segments (segment) VALUES (%(segment)s) ON CONFLICT (segment) DO NOTHING

-- name: spool-lock-segment
-- The segment's drain position, locked for this transaction; no row when another drainer holds it (skip it).
SELECT drained_bytes FROM tracking_spool_segments WHERE segment = %(segment)s FOR UPDATE SKIP LOCKED

-- name: spool-advance
-- Commits with the events it covers: the next drainer starts exactly where this one stopped.
UPDATE tracking_spool_segments
   SET drained_bytes = %(drained_bytes)s, drained_events = drained_events + %(events)s,
       rejected_lines = rejected_lines + %(rejected)s, updated_at = now(),
       finished_at = CASE WHEN %(finished)s THEN now() END
 WHERE segment = %(segment)s

-- name: spool-reject
-- Keyed by position, so a line rejected again after a drainer crash is kept once.
INSERT INTO tracking_spool_rejects (segment, byte_offset, line, error)
VALUES (%(segment)s, %(byte_offset)s, %(line)s, %(error)s)
ON CONFLICT (segment, byte_offset) DO NOTHING

-- name: spool-drained-bytes
-- Where each listed segment stands; a segment without a row has not been drained at all (the backlog is its size).
SELECT segment, drained_bytes FROM tracking_spool_segments WHERE segment = ANY(%(segments)s::text[])

-- name: spool-prune-finished
-- Rows of segments whose files were drained and deleted; a re-listed name would read nothing anyway.
DELETE FROM tracking_spool_segments WHERE finished_at < now() - make_interval(days => %(days)s)

-- name: health-check
-- GET /healthz: PostgreSQL answers a query. Nothing is read, so the check costs the same on any database size.
SELECT 1

-- name: view-recipient
-- The "view in browser" page: one ledger row with the merge data frozen at snapshot. Only a row that was sent (or
-- may have been: unknown) has a message someone received; pending, skipped, failed and cancelled rows show nothing.
SELECT id, email, first_name, last_name, merge_data
  FROM campaign_recipients
 WHERE id = %(recipient_id)s AND campaign_id = %(campaign_id)s AND status = ANY(%(statuses)s::text[])

-- name: view-campaign
-- The content the Composer is built from; updated_at keys the page's cache of built Composers.
SELECT id, updated_at, subject, preheader, html, text, from_email, from_name, reply_to, settings
  FROM campaigns
 WHERE id = %(campaign_id)s
