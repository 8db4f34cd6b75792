#!/usr/bin/env bash
# docker-compose.yaml's local-ses service (profile `local-ses`): moto server as a stand-in for SES, so the whole
# pipeline runs without an AWS account. moto keeps everything in memory, so after every (re)start this verifies the
# sender's domain (from SES_FROM_EMAIL, plus any LOCAL_SES_IDENTITIES, comma-separated), as a real SES account has it.
# Sent messages: http://localhost:${LOCAL_SES_PORT:-5000}/moto-api/data.json (or the moto dashboard at /moto-api/).
set -euo pipefail

moto_server -H 0.0.0.0 -p 5000 &
server=$!
trap 'kill -TERM "${server}" 2>/dev/null || true' TERM INT

for _ in $(seq 1 120); do
    if curl -fs -o /dev/null http://127.0.0.1:5000/moto-api/data.json; then
        break
    fi
    sleep 0.5
done

python - <<'PY'
import os
from email.utils import parseaddr

import boto3

client = boto3.client(
    "sesv2", endpoint_url="http://127.0.0.1:5000", region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    aws_access_key_id="testing", aws_secret_access_key="testing",
)
sender = parseaddr(os.environ.get("SES_FROM_EMAIL") or "news@example.com")[1]
identities = {sender.rpartition("@")[2]} | {i.strip() for i in os.environ.get("LOCAL_SES_IDENTITIES", "").split(",")}
for identity in sorted(i for i in identities if i):
    client.create_email_identity(EmailIdentity=identity)
    print(f"[local-ses] verified identity {identity}", flush=True)
PY

wait "${server}"
