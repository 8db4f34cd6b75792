-- Contact import (campaigns.audience.contacts.import_csv). All statements run in one transaction on one connection:
-- the staging table is a TEMP table, visible only to that session.

-- name: create-staging
-- A TEMP table: no WAL, no locks other sessions can see, gone at commit (and dropped explicitly too, so a caller
-- that runs two imports inside one outer transaction does not trip over the first one's table).
-- Only rows that passed validation and de-duplication in Python arrive here.
CREATE TEMP TABLE import_staging (
    line        integer NOT NULL,
    email       text    NOT NULL,
    first_name  text,
    last_name   text,
    attributes  jsonb   NOT NULL
) ON COMMIT DROP

-- name: copy-staging
-- COPY streams every row in one round trip; row-by-row INSERTs pay a round trip and a plan per row.
COPY import_staging (line, email, first_name, last_name, attributes) FROM STDIN

-- name: analyze-staging
-- Autovacuum never analyzes TEMP tables: without statistics the planner guesses ~1,000 rows and may pick a
-- nested loop over 100,000. ANALYZE samples, so it is cheap even for large files.
ANALYZE import_staging

-- name: upsert-contacts
-- One set-based statement for the whole file.
-- * DISTINCT ON (lower(email)): PostgreSQL's lower() is the uniqueness rule (contacts_email_key), so even where
--   Python's lower() might disagree, ON CONFLICT never has to touch one row twice (which would be an error).
-- * ORDER BY lower(email): rows are locked in a fixed order, so two concurrent imports cannot deadlock.
-- * The WHERE on DO UPDATE skips rows the file does not change: a re-import writes nothing, not even updated_at.
-- * Empty cells never erase data: COALESCE keeps a stored name, attributes are merged (||), not replaced, so a
--   file of bare addresses cannot wipe what an earlier import stored. The stored spelling of the address stays.
-- * xmax = 0 marks a freshly inserted row in RETURNING; an updated row carries the updating transaction's id.
WITH upserted AS (
    INSERT INTO contacts AS c (email, first_name, last_name, attributes)
    SELECT DISTINCT ON (lower(s.email)) s.email, s.first_name, s.last_name, s.attributes
    FROM import_staging s
    ORDER BY lower(s.email), s.line
    ON CONFLICT ((lower(email))) DO UPDATE
        SET first_name = COALESCE(EXCLUDED.first_name, c.first_name),
            last_name  = COALESCE(EXCLUDED.last_name, c.last_name),
            attributes = c.attributes || EXCLUDED.attributes,
            updated_at = now()
        WHERE (c.first_name, c.last_name, c.attributes) IS DISTINCT FROM
              (COALESCE(EXCLUDED.first_name, c.first_name), COALESCE(EXCLUDED.last_name, c.last_name),
               c.attributes || EXCLUDED.attributes)
    RETURNING (c.xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted)     AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM upserted

-- name: ensure-list
-- Create the list if it is missing without touching an existing row (an upsert with DO UPDATE would write a new
-- row version on every import). Both branches read the same snapshot, so exactly one returns a row, except when
-- a concurrent import created the list after our snapshot: then neither does and the caller simply asks again.
WITH created AS (
    INSERT INTO lists (name) VALUES (%(name)s)
    ON CONFLICT (name) DO NOTHING
    RETURNING id
)
SELECT id, true AS created FROM created
UNION ALL
SELECT id, false AS created FROM lists WHERE name = %(name)s

-- name: add-list-members
-- Classify every imported row against the list first (one join), then insert only the rows with no membership
-- at all. An existing `unsubscribed` member is never flipped back: the import must not re-subscribe anyone; such
-- rows come back so they can be reported. Both parts are one statement because a second statement would see
-- the new members and could no longer tell "added now" from "already there".
WITH classified AS MATERIALIZED (
    SELECT s.line, s.email, c.id AS contact_id, lm.status
    FROM import_staging s
    JOIN contacts c ON lower(c.email) = lower(s.email)
    LEFT JOIN list_members lm ON lm.list_id = %(list_id)s AND lm.contact_id = c.id
),
added AS (
    INSERT INTO list_members (list_id, contact_id)
    SELECT %(list_id)s, contact_id FROM classified WHERE status IS NULL
    ON CONFLICT (list_id, contact_id) DO NOTHING
    RETURNING contact_id
)
SELECT (SELECT count(*) FROM added)                   AS added_to_list,
       count(*) FILTER (WHERE status = 'subscribed')   AS already_member,
       COALESCE(jsonb_agg(jsonb_build_object('line', line, 'email', email) ORDER BY line)
                FILTER (WHERE status = 'unsubscribed'), '[]'::jsonb) AS unsubscribed
FROM classified

-- name: suppressed-rows
-- Suppressions are global and are never cleared by an import (only bounces, complaints, unsubscribes and
-- people manage them); the import only reports which of its rows are suppressed. suppressions.email is stored
-- lowercase, hence lower() on the staging side.
SELECT s.line, s.email, sup.reason
FROM import_staging s
JOIN suppressions sup ON sup.email = lower(s.email)
ORDER BY s.line

-- name: drop-staging
DROP TABLE IF EXISTS import_staging
