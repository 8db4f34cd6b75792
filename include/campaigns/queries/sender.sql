-- The send loop's reads (campaigns.sending.sender).

-- name: campaign-watch
-- CampaignWatch re-reads this in every send task, by default every half second: a primary-key read of two
-- columns. run_id tells a task that another run took the campaign over (a resume while it still sends).
SELECT status, run_id FROM campaigns WHERE id = %(campaign_id)s
