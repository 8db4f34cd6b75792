-- Run once by the postgres image when it initialises an empty data volume (/docker-entrypoint-initdb.d).
-- The image itself creates the Airflow metadata database `airflow` (POSTGRES_DB); this adds the campaign
-- database with its own owner. Its tables come from the alembic migrations that airflow-init applies.
-- The credentials match AIRFLOW_CONN_CAMPAIGN_DB in docker-compose.yaml (a local stack: not for production).
CREATE ROLE campaigns LOGIN PASSWORD 'campaigns';
CREATE DATABASE campaigns OWNER campaigns ENCODING 'UTF8' TEMPLATE template0;
