#!/usr/bin/env bash
# docker-compose.yaml's airflow-init service: the one-shot setup the other services wait for
# (depends_on: service_completed_successfully). Idempotent; it runs on every `docker compose up`.
# The official image's entrypoint is bypassed (it would read the secrets below before they exist), so this script
# does what that entrypoint's _AIRFLOW_DB_MIGRATE does, and the rest of the project's setup, in order:
#   1. secrets (Fernet key, JWT secret, API secret key, UI password) and the tracking service's TLS certificate
#   2. `airflow db migrate` (the Airflow metadata database)
#   3. the `ses` pool, sized by SES_POOL_SLOTS (send_batch tasks queue on it; a missing pool stalls them silently)
#   4. the campaign_db / redis_default / aws_default connections, imported so they show in the UI
#   5. the campaign database's migrations
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
umask 0027

python "${here}/stack_init.py" secrets
python "${here}/stack_init.py" tls

echo "[init] airflow db migrate"
airflow db migrate

echo "[init] pool ses: ${SES_POOL_SLOTS} slots"
airflow pools set ses "${SES_POOL_SLOTS}" \
    "Concurrent send_batch tasks across all campaigns and workers (the Redis limiter caps the rate)"

connections="$(mktemp --suffix=.json)"
trap 'rm -f "${connections}"' EXIT
python "${here}/stack_init.py" connections "${connections}"
airflow connections import --overwrite "${connections}"

python "${here}/stack_init.py" campaign-db

airflow version
echo "[init] done"
