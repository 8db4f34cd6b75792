"""What stands in front of the view's POST routes besides Airflow's login: a CSRF token and an Origin check.

Airflow's session cookie is SameSite=Lax at most, and every port of the host counts as the same site, so a page
served by the tracking service (https://localhost:<its port>) could make the browser POST here with the analyst's
cookie. Two checks refuse that, each alone enough:

- The token: an HMAC of the logged-in user's name under the api-server's JWT secret (the one it signs sessions
  with, so every api-server worker computes the same token, and nobody without that secret can). Pages put it in a
  hidden field; a POST without it, or with another user's, gets 403. It is not a cookie: a same-site page can set
  cookies for localhost, so a double-submit cookie would not hold.
- Origin (or, when a browser sends none, Sec-Fetch-Site): a browser's POST from anywhere but this view's own origin
  gets 403. Clients that send neither (API scripts with a Bearer token) are not browsers and pass on the token.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from airflow.configuration import conf
from fastapi import HTTPException, Request

TOKEN_FIELD = "csrf_token"  # noqa: S105 (the form field's name, not a secret)
_PURPOSE = b"campaigns-view-csrf:"


@cache
def _secret() -> bytes:
    """The api-server's JWT secret (or, with asymmetric JWT keys, the private key file's bytes)."""
    secret = conf.get("api_auth", "jwt_secret", fallback="") or ""
    if secret:
        return secret.encode()
    key_path = conf.get("api_auth", "jwt_private_key_path", fallback="") or ""
    if key_path:
        return Path(key_path).read_bytes()
    raise RuntimeError("[api_auth] jwt_secret (or jwt_private_key_path) must be set for the Campaigns view's actions")


def csrf_token(username: str) -> str:
    """The token the user's forms carry: bound to the user, unforgeable without the api-server's secret."""
    return hmac.new(_secret(), _PURPOSE + username.encode(), hashlib.sha256).hexdigest()


def own_origins(request: Request) -> set[str]:
    """scheme://host[:port] of the view: as the api-server was addressed, and as `[api] base_url` says (behind a
    TLS-terminating proxy the two differ in scheme)."""
    origins = {f"{request.url.scheme}://{request.url.netloc}".lower()}
    base = urlsplit(conf.get("api", "base_url", fallback="") or "")
    if base.scheme and base.netloc:
        origins.add(f"{base.scheme}://{base.netloc}".lower())
    return origins


def check_same_origin(request: Request) -> None:
    """403 for a browser request sent from another origin (another port of the same host counts as another)."""
    origin = request.headers.get("origin")
    if origin is not None:
        if origin.lower() not in own_origins(request):
            raise HTTPException(403, f"cross-origin request refused: Origin {origin} is not this view's origin")
        return
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise HTTPException(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")


def check_csrf(username: str, submitted: str | None) -> None:
    """403 unless `submitted` is this user's token."""
    if not submitted or not hmac.compare_digest(submitted, csrf_token(username)):
        raise HTTPException(403, "missing or invalid CSRF token: reload the campaign page and try again")
