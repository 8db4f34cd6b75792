-- Campaign definitions (campaigns.lifecycle.definitions): create or update a campaign by key, load it.
-- {columns} and {values} are the definition's fields, composed in as identifiers and bound placeholders of the
-- same names (the field names are the code's, never the caller's).

-- name: lock-campaign-by-key
-- FOR UPDATE: the content and timing checks are judged against the row as it stays until the update commits.
SELECT * FROM campaigns WHERE key = %(key)s FOR UPDATE

-- name: insert-campaign
INSERT INTO campaigns ({columns}) VALUES ({values}) RETURNING *

-- name: update-campaign
-- SET (columns) = ROW(values): the insert's two lists serve the update too. The status guard is the state
-- machine's draft -> scheduled move, judged under the row lock.
UPDATE campaigns SET ({columns}) = ROW({values}), status_reason = NULL, updated_at = now()
 WHERE id = %(id)s AND status = %(old_status)s
RETURNING *

-- name: campaign-by-id
SELECT * FROM campaigns WHERE id = %(campaign_id)s
