"""The project's own local stack: PostgreSQL, Redis, Airflow, the tracking service and a local SES, no Docker needed."""
