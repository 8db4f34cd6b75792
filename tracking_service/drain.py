"""`python -m tracking_service.drain`: drain spooled open/click events into PostgreSQL (once, or as a loop).

The gunicorn workers drain in a background thread already; this command is for operations: empty the spool
while the service is stopped, or run a dedicated drainer with TRACKING_DRAINER=0 on the web workers. It must run
on the host (or volume) that holds TRACKING_SPOOL_DIR.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from campaigns import db
from campaigns.config import get_settings
from tracking_service import DRAINER_CONNECT_OPTIONS, events_buffer


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Drain until the spool is empty (default) or forever with --follow; prints how many lines it settled."""
    parser = argparse.ArgumentParser(prog="python -m tracking_service.drain", description=__doc__)
    parser.add_argument("--spool-dir", default=os.environ.get("TRACKING_SPOOL_DIR", "tracking-spool"),
                        help="the spool directory (default: TRACKING_SPOOL_DIR, else ./tracking-spool)")
    parser.add_argument("--batch", type=_positive, default=1000, help="lines per INSERT (default 1000)")
    parser.add_argument("--follow", action="store_true", help="keep draining until interrupted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    drainer = events_buffer.SpoolDrainer(args.spool_dir, args.batch)
    total = 0
    with db.connect(db.resolve_postgres_dsn(settings.db_conn_id), **DRAINER_CONNECT_OPTIONS) as conn:
        try:
            while True:
                settled, more = drainer.drain_once(conn)
                total += settled
                if not more and not args.follow:
                    break
                if not more:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        left = events_buffer.backlog(args.spool_dir, conn)
    print(f"drained {total} events; {left} bytes left in {args.spool_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
