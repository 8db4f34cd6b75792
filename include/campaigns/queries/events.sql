-- SES events delivered by SNS (campaigns.feedback.ses_events): the event log, suppressions and settling the ledger.
-- Every query runs inside the one transaction record_notification opens per SNS message.

-- name: recipient-by-message
-- The primary join: SES's messageId, stored on the ledger row when SendEmail answered. FOR UPDATE so two
-- events for the same message (Send and Delivery arrive close together) settle the row one after the other.
SELECT id, campaign_id, email, status
  FROM campaign_recipients
 WHERE ses_message_id = %(ses_message_id)s
   FOR UPDATE

-- name: recipient-by-tags
-- Fallback for rows whose SendEmail answer was lost (status unknown): the sender tags every message with the
-- campaign id and the ledger row id. Both must match, so a stray tag cannot touch another campaign's row.
SELECT id, campaign_id, email, status
  FROM campaign_recipients
 WHERE id = %(recipient_id)s AND campaign_id = %(campaign_id)s
   FOR UPDATE

-- name: insert-event
-- The SNS MessageId is stable across SNS retries: the unique key makes a redelivery insert nothing, and the
-- caller treats "no row returned" as a duplicate and does nothing else.
INSERT INTO email_events
       (campaign_id, recipient_id, email, type, subtype, ip, user_agent, sns_message_id, ses_message_id,
        payload, occurred_at)
VALUES (%(campaign_id)s, %(recipient_id)s, %(email)s, %(type)s, %(subtype)s, %(ip)s, %(user_agent)s,
        %(sns_message_id)s, %(ses_message_id)s, %(payload)s, %(occurred_at)s)
    ON CONFLICT (sns_message_id) DO NOTHING
RETURNING id

-- name: soft-bounce-recipients
-- Candidates for counting one address's soft bounces in the window (this one included: it was inserted just
-- before in the same transaction): each bounced recipient string of each soft bounce that contains the address's
-- local part. SES writes recipients as they were addressed ("John <john@example.com>", punycode domains), so the
-- caller parses each candidate the way it parsed the bounce and counts the events whose recipient is the address;
-- the local part only narrows the rows, and a multi-recipient bounce counts for each of its addresses.
SELECT e.id, r ->> 'emailAddress' AS address
  FROM email_events e,
       jsonb_array_elements(CASE WHEN jsonb_typeof(e.payload -> 'bounce' -> 'bouncedRecipients') = 'array'
                                 THEN e.payload -> 'bounce' -> 'bouncedRecipients' ELSE '[]'::jsonb END) r
 WHERE e.type = 'bounce'
   AND e.subtype IN ('Transient', 'Undetermined')
   AND e.occurred_at > now() - make_interval(days => %(days)s)
   AND strpos(lower(r ->> 'emailAddress'), %(local_part)s) > 0

-- name: suppress
-- One upsert for every rule. A hard bounce or complaint replaces only a soft_bounce_limit entry (a stronger
-- reason); nothing downgrades hard_bounce/complaint, and unsubscribe/manual entries are kept as the person set them.
INSERT INTO suppressions (email, reason, source, detail)
VALUES (%(email)s, %(reason)s, 'ses', %(detail)s)
    ON CONFLICT (email) DO UPDATE
   SET reason = excluded.reason, source = excluded.source, detail = excluded.detail, created_at = now()
 WHERE suppressions.reason = 'soft_bounce_limit' AND excluded.reason IN ('hard_bounce', 'complaint')
RETURNING email

-- name: settle-sent
-- An event from SES proves it accepted the message: an `unknown` row (SendEmail's answer lost) becomes sent
-- with the message id. Only `unknown` rows: `sending` rows belong to a sender that is still running. The NOT
-- EXISTS keeps the unique message id from failing the whole transaction if another row already holds it.
UPDATE campaign_recipients
   SET status = 'sent', ses_message_id = %(ses_message_id)s, sent_at = coalesce(sent_at, %(sent_at)s),
       error = NULL, updated_at = now()
 WHERE id = %(recipient_id)s AND status = 'unknown'
   AND NOT EXISTS (SELECT 1 FROM campaign_recipients o
                    WHERE o.ses_message_id = %(ses_message_id)s AND o.id <> %(recipient_id)s)
RETURNING id

-- name: settle-failed
-- SES rejected the message or could not render it: an `unknown` row did not go out.
UPDATE campaign_recipients
   SET status = 'failed', error = %(error)s, updated_at = now()
 WHERE id = %(recipient_id)s AND status = 'unknown'
RETURNING id
