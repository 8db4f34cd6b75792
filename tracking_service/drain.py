"""`python -m tracking_service.drain`: drain buffered open/click events into PostgreSQL (once, or as a loop).

The gunicorn workers drain in a background thread already; this command is for operations: empty the stream
while the service is stopped, or run a dedicated drainer with TRACKING_DRAINER=0 on the web workers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from campaigns import db
from campaigns.config import get_settings
from tracking_service import events_buffer


def main(argv: list[str] | None = None) -> int:
    """Drain until the stream is empty (default) or forever with --follow; prints how many entries it settled."""
    parser = argparse.ArgumentParser(prog="python -m tracking_service.drain", description=__doc__)
    parser.add_argument("--batch", type=int, default=1000, help="entries per INSERT (default 1000)")
    parser.add_argument("--follow", action="store_true", help="keep draining until interrupted")
    parser.add_argument("--claim-idle-ms", type=int, default=events_buffer.CLAIM_IDLE_MS,
                        help="take over entries another consumer left pending this long (default 60000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    client = db.resolve_redis(settings.redis_conn_id)
    total = 0
    with db.connect(db.resolve_postgres_dsn(settings.db_conn_id), autocommit=True) as conn:
        try:
            while True:
                settled = events_buffer.drain_once(client, conn, args.batch, block_ms=1000 if args.follow else None,
                                                   claim_idle_ms=args.claim_idle_ms)
                total += settled
                if settled == 0 and not args.follow:
                    break
                if settled < args.batch and args.follow:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    print(f"drained {total} entries; {events_buffer.backlog(client)} left in {events_buffer.STREAM}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
