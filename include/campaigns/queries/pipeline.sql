-- The send_campaign run's writes to the campaign row (campaigns.lifecycle.pipeline): what a run leaves on the
-- campaign for the UI, finalize and the next run to read.

-- name: save-preflight
-- The report is stored whether preflight passed or failed: the campaign shows why its run stopped.
UPDATE campaigns SET preflight = %(report)s, updated_at = now() WHERE id = %(campaign_id)s

-- name: set-run
-- The run that drives the campaign now: CampaignWatch and finalize compare their own run id with it, so two runs
-- never send one campaign and a superseded run leaves the state alone.
UPDATE campaigns SET run_id = %(run_id)s WHERE id = %(campaign_id)s

-- name: save-summary
-- finalize's ledger counts and final state, kept on the campaign row.
UPDATE campaigns SET summary = %(summary)s, updated_at = now() WHERE id = %(campaign_id)s
