-- The reputation guard (campaigns.lifecycle.reputation): a sending campaign's bounce and complaint rates, and the guarded
-- pauses it and the SES account guard make.

-- name: campaign-outcomes
-- Counted for one campaign, only over events that occurred after the guard last paused it: a person who resumes
-- a paused campaign gets a fresh sample instead of an instant second pause on the same evidence.
-- Deliveries are a plain count(*) over email_events_campaign_idx (campaign_id, type, occurred_at), so this stays
-- an index-only count even for a million-recipient campaign; bounces and complaints are few, so they are read from
-- the table and counted per recipient (an address that bounced twice, or an event SES published both to a
-- configuration set and as an identity notification, counts once).
-- Hard bounce = bounceType Permanent, as in SES's own review; Permanent/OnAccountSuppressionList is left out of
-- the numerator because SES did not attempt the delivery and does not count it against the account.
WITH since AS (
    SELECT coalesce(max(requested_at), '-infinity'::timestamptz) AS at
      FROM campaign_actions
     WHERE campaign_id = %(campaign_id)s AND actor = 'reputation_guard'
)
SELECT (SELECT count(*)
          FROM email_events d, since
         WHERE d.campaign_id = %(campaign_id)s AND d.type = 'delivery' AND d.occurred_at > since.at) AS delivered,
       count(DISTINCT e.recipient_id) FILTER (WHERE e.type = 'bounce') AS bounced,
       count(DISTINCT e.recipient_id) FILTER (
           WHERE e.type = 'bounce' AND e.subtype = 'Permanent'
             AND coalesce(e.payload #>> '{bounce,bounceSubType}', '') <> 'OnAccountSuppressionList') AS hard_bounced,
       count(DISTINCT e.recipient_id) FILTER (WHERE e.type = 'complaint') AS complained
  FROM email_events e, since
 WHERE e.campaign_id = %(campaign_id)s AND e.type IN ('bounce', 'complaint') AND e.occurred_at > since.at

-- name: running-campaigns
-- The account guard pauses every campaign that is sending right now (campaigns_status_idx).
SELECT id, key
  FROM campaigns
 WHERE status = 'running'
 ORDER BY id

