"""The Campaigns view for the Airflow UI (mounted by plugins/campaigns_plugin.py); see plugins/README.md."""
