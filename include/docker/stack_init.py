"""The Python steps of docker-compose.yaml's airflow-init service (airflow-init.sh runs them, in this order).

    python stack_init.py secrets            Airflow's Fernet key, JWT secret, API secret key and UI password file
    python stack_init.py tls                the tracking service's certificate and key
    python stack_init.py connections FILE   the AIRFLOW_CONN_* connections as an `airflow connections import` file
    python stack_init.py campaign-db        the campaign database's alembic migrations

Every step is idempotent: airflow-init runs on each `docker compose up`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

SECRETS_DIR = Path(os.environ.get("STACK_SECRETS_DIR", "/opt/airflow/secrets"))
TLS_DIR = Path(os.environ.get("TRACKING_TLS_DIR", "/opt/airflow/tls"))
# Where a user's own certificate is picked up from: ./include/docker/certs, bind-mounted with ./include.
TLS_SOURCE_DIR = Path(os.environ.get("TRACKING_TLS_SOURCE_DIR", "/opt/airflow/project/include/docker/certs"))
CONNECTION_IDS = ("campaign_db", "redis_default", "aws_default")


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# file name in SECRETS_DIR -> (environment variable that may supply it, generator). The compose file points Airflow
# at these files with AIRFLOW__..._CMD variables (`cat FILE`), so every component reads the same values.
SECRETS = {
    "fernet_key": ("AIRFLOW_FERNET_KEY", _fernet_key),
    "jwt_secret": ("AIRFLOW_JWT_SECRET", lambda: secrets.token_urlsafe(48)),
    "api_secret_key": ("AIRFLOW_API_SECRET_KEY", lambda: secrets.token_urlsafe(48)),
}


def _write_private(path: Path, content: str | bytes) -> None:
    """Owner and group 0 may read (every container runs in group 0), nobody else."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    tmp.chmod(0o640)
    tmp.replace(path)


def write_secrets() -> None:
    """A value from the environment wins (and is stored); otherwise the stored one is kept; otherwise one is made.
    Changing the Fernet key later makes stored connection passwords unreadable: rotate with `airflow rotate-fernet-key`.
    """
    SECRETS_DIR.mkdir(parents=True, exist_ok=True)
    for name, (env_name, make) in SECRETS.items():
        path = SECRETS_DIR / name
        given = os.environ.get(env_name, "").strip()
        if given:
            _write_private(path, given)
            print(f"[init] {name}: from {env_name}")
        elif not path.exists() or not path.read_text().strip():
            _write_private(path, make())
            print(f"[init] {name}: generated")
    # SimpleAuthManager's password file: {"user": "password"}, rewritten each time so .env changes take effect.
    user = os.environ.get("AIRFLOW_ADMIN_USERNAME", "").strip() or "admin"
    password = os.environ.get("AIRFLOW_ADMIN_PASSWORD", "").strip() or "admin"
    _write_private(SECRETS_DIR / "simple_auth_manager_passwords.json", json.dumps({user: password}))


def _tls_names() -> tuple[list[str], list[str]]:
    """DNS names and IPs the self-signed certificate covers: localhost, the service name, TRACKING_BASE_URL's host."""
    names, ips = ["localhost", "tracking"], ["127.0.0.1"]
    host = urlsplit(os.environ.get("TRACKING_BASE_URL", "")).hostname
    if host:
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            names.append(host)
    return sorted(set(names)), sorted(set(ips))


def write_tls() -> None:
    """The user's certificate from ./include/docker/certs if both files are there, else a self-signed one (kept
    across restarts in the tracking-tls volume; remade when TRACKING_BASE_URL's host changes or it nears expiry)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    TLS_DIR.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = TLS_DIR / "tracking.crt", TLS_DIR / "tracking.key"
    given_cert, given_key = TLS_SOURCE_DIR / "tracking.crt", TLS_SOURCE_DIR / "tracking.key"
    if given_cert.is_file() and given_key.is_file():
        shutil.copyfile(given_cert, cert_path)
        _write_private(key_path, given_key.read_bytes())
        print(f"[init] tracking TLS: certificate from {given_cert}")
        return

    names, ips = _tls_names()
    now = dt.datetime.now(dt.UTC)
    if cert_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:  # a certificate someone supplied earlier, without SANs: replace it
            san = x509.SubjectAlternativeName([])
        dns = sorted(san.get_values_for_type(x509.DNSName))
        covered = (dns, sorted(str(ip) for ip in san.get_values_for_type(x509.IPAddress)))
        if covered == (names, ips) and current.not_valid_after_utc - now > dt.timedelta(days=30):
            return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    print(f"[init] tracking TLS: self-signed certificate for {', '.join(names + ips)}")


def write_connections(target: Path) -> None:
    """The connections the compose file gives every container as AIRFLOW_CONN_* (JSON or URI), in the format of
    `airflow connections import`, so they also show in the Airflow UI. The environment still wins at run time."""
    found = {}
    for conn_id in CONNECTION_IDS:
        raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}", "").strip()
        if not raw:
            raise SystemExit(f"AIRFLOW_CONN_{conn_id.upper()} is not set")
        found[conn_id] = json.loads(raw) if raw.startswith("{") else raw
    _write_private(target, json.dumps(found))


def migrate_campaign_db() -> None:
    """Apply the campaign database's migrations (alembic), as `make` does for the local stack."""
    from campaigns.config import get_settings
    from campaigns.db import postgres_dsn
    from campaigns.schema import upgrade

    dsn = postgres_dsn(get_settings().db_conn_id)
    upgrade(dsn)
    print(f"[init] campaign database migrated: {dsn.rsplit('@', 1)[-1]}")


def main(argv: list[str]) -> None:
    steps = {
        "secrets": lambda: write_secrets(),
        "tls": lambda: write_tls(),
        "connections": lambda: write_connections(Path(argv[1])),
        "campaign-db": lambda: migrate_campaign_db(),
    }
    if not argv or argv[0] not in steps or (argv[0] == "connections" and len(argv) != 2):
        raise SystemExit(__doc__)
    steps[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
