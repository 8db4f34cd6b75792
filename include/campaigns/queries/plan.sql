-- Planning a send (campaigns.sending.plan): what the plan reads besides the ledger's open pages.

-- name: other-sending-campaigns
-- The campaigns that share the `ses` pool with this one's send tasks: `running` ones that still have rows to send
-- (a running campaign with none left is only waiting for its finalize and holds no slot). Counted when the plan
-- runs, so each campaign plans its fair share of the pool as it starts or resumes; the open-rows index answers the
-- EXISTS without reading sent rows.
SELECT count(*) AS n
  FROM campaigns c
 WHERE c.status = 'running'
   AND c.id <> %(campaign_id)s
   AND EXISTS (SELECT 1 FROM campaign_recipients r
                WHERE r.campaign_id = c.id AND r.status IN ('pending', 'sending'))
