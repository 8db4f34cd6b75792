"""`python -m tracking_service.drain`: drain spooled open/click events into PostgreSQL (once, or as a loop).

The gunicorn workers drain in a background thread already; this command is for operations: empty the spool
while the service is stopped, or run a dedicated drainer with TRACKING_DRAINER=0 on the web workers. It must run
on the host (or volume) that holds TRACKING_SPOOL_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from campaigns import db
from campaigns.config import ConfigError, get_settings
from tracking_service import DRAINER_CONNECT_OPTIONS, check_spool_dir
from tracking_service.drainer import Drainer, SpoolDrainer, backlog


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Drain until the spool is caught up (default) or until stopped with --follow; says how many lines it settled."""
    parser = argparse.ArgumentParser(prog="python -m tracking_service.drain", description=__doc__)
    parser.add_argument("--spool-dir", help="the spool directory (default: TRACKING_SPOOL_DIR, else ./tracking-spool)")
    parser.add_argument("--batch", type=_positive, default=1000, help="lines per INSERT (default 1000)")
    parser.add_argument("--follow", action="store_true",
                        help="keep draining until SIGTERM or Ctrl-C, reconnecting after database outages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    spool_dir = Path(args.spool_dir or settings.tracking_spool_dir).resolve()
    try:
        check_spool_dir(spool_dir)  # a mistyped path would otherwise "drain" nothing and say all is well
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dsn = db.resolve_postgres_dsn(settings.db_conn_id)
    if args.follow:
        # the web workers' drainer loop: reconnects with backoff, so an outage is waited out, not fatal
        drainer = Drainer(spool_dir, lambda: db.connect(dsn, **DRAINER_CONNECT_OPTIONS), batch=args.batch)
        signal.signal(signal.SIGTERM, lambda *_: drainer.stop())
        with contextlib.suppress(KeyboardInterrupt):
            drainer.run()
        settled = drainer.settled
    else:
        spool = SpoolDrainer(spool_dir, args.batch)
        settled = 0
        with db.connect(dsn, **DRAINER_CONNECT_OPTIONS) as conn:
            while True:
                n, more = spool.drain_once(conn)
                settled += n
                if not more:
                    break
    with db.connect(dsn, **DRAINER_CONNECT_OPTIONS) as conn:
        left = backlog(spool_dir, conn)
    print(f"settled {settled} lines; {left} bytes left in {spool_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
