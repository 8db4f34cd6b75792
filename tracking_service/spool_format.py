"""The spool's files and lines, shared by the writer (spool.py) and the drainer (drainer.py).

Files, in the spool directory (TRACKING_SPOOL_DIR):

    <host>.<pid>.<start ns>.events    a segment: one JSON array per line, one line per event

A segment is created as `.<name>.new` and renamed into place once its writer holds it; a start checking the file
system's locking leaves a `.lock-probe.*` for a moment. Names starting with a dot are never segments.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SEGMENT_SUFFIX = ".events"
TEMPORARY_SUFFIX = ".new"  # a segment being created, before the rename
LOCK_PROBE_PREFIX = ".lock-probe."
_MAX_UA = 512
MAX_LINE = 16 * 1024  # far above any line buffer_event writes (a 512-character agent escaped is ~3 KB)
# one encoder: json.dumps(..., separators=...) builds a new JSONEncoder on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


def new_segment_name() -> str:
    """A name no other writer uses: this host, this process and the time in nanoseconds."""
    return f"{_HOST}.{os.getpid()}.{time.time_ns()}{SEGMENT_SUFFIX}"


def segments(directory: str | os.PathLike) -> list[Path]:
    """The spool's segment files; by name, so each writer's segments come oldest first."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return []
    with entries:
        paths = [Path(e.path) for e in entries if e.name.endswith(SEGMENT_SUFFIX) and not e.name.startswith(".")]
    return sorted(paths)


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """One open or click as read back from the spool."""

    key: str  # 'spool:<segment>:<byte offset>': unique per event, stored in email_events.sns_message_id
    type: str
    campaign_id: int
    recipient_id: int
    link_id: int | None
    ip: str | None
    user_agent: str | None
    is_machine: bool
    reasons: str
    method: str
    occurred: float


def encode_event(*, type: str, campaign_id: int, recipient_id: int, link_id: int | None = None,
                 ip: str | None = None, user_agent: str | None = None, is_machine: bool = False,
                 reasons: Iterable[str] = (), method: str = "GET", occurred: float | None = None) -> bytes:
    """One spool line: a compact JSON array (ASCII only, so never a raw newline inside) and a newline."""
    return _ENCODER.encode([type, campaign_id, recipient_id, link_id, ip or "", (user_agent or "")[:_MAX_UA],
                            1 if is_machine else 0, ",".join(reasons), method,
                            time.time() if occurred is None else occurred]).encode() + b"\n"


def parse_line(key: str, line: bytes) -> BufferedEvent | None:
    """One spool line back as an event (`key` is its 'spool:<segment>:<byte offset>'); None when it is malformed."""
    try:
        type_, campaign_id, recipient_id, link_id, ip, ua, machine, reasons, method, occurred = json.loads(line)
        return BufferedEvent(
            key=key, type=str(type_), campaign_id=int(campaign_id), recipient_id=int(recipient_id),
            link_id=None if link_id is None else int(link_id), ip=ip or None, user_agent=ua or None,
            is_machine=machine == 1, reasons=str(reasons), method=str(method or "GET"), occurred=float(occurred),
        )
    except (TypeError, ValueError, RecursionError, OverflowError):  # not JSON, wrong arity or types, absurd nesting
        return None
