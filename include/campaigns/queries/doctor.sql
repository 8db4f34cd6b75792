-- ses_doctor's reads of the campaign database (campaigns.doctor.checks.check_postgres).

-- name: migrations-table
-- to_regclass answers NULL instead of failing when migrations never ran, so the check can say so.
SELECT to_regclass('alembic_version') AS t

-- name: schema-version
SELECT version_num FROM alembic_version
