-- send_test_email: the queries of campaigns.lifecycle.testsend. A test send writes no ledger row: it reads the
-- campaign, the suppression list and the contacts, and records each message in test_sends.

-- name: campaign-by-key
SELECT * FROM campaigns WHERE key = %(key)s

-- name: suppressed-addresses
-- suppressions.email is stored lower-case; the caller passes lower-cased addresses.
SELECT email, reason
  FROM suppressions
 WHERE email = ANY(%(emails)s::text[])
 ORDER BY email

-- name: contacts-by-address
-- Served by the unique index on lower(email).
SELECT id, email, first_name, last_name, attributes
  FROM contacts
 WHERE lower(email) = ANY(%(emails)s::text[])

-- name: insert-test-send
INSERT INTO test_sends (campaign_id, email, contact_id, status, ses_message_id, error, run_id)
VALUES (%(campaign_id)s, %(email)s, %(contact_id)s, %(status)s, %(ses_message_id)s, %(error)s, %(run_id)s)
RETURNING id, sent_at
