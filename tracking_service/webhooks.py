"""SES notifications delivered by SNS over HTTPS: verify, then record."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webhooks", __name__)
