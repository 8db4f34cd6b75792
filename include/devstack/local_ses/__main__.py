"""`python -m devstack.local_ses --host 127.0.0.1 --port N`: the local SES (moto + the record + the inbox)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from devstack.local_ses.server import DEFAULT_MAX_MESSAGES, create_app, make_server


def _exit(signum: int, frame: Any) -> None:
    sys.exit(0)  # as moto_server does: SIGTERM from `make down` ends the process cleanly


def main(argv: list[str] | None = None) -> None:
    """Serve the local SES with a threaded WSGI server until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m devstack.local_ses", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=25500)
    parser.add_argument("--max-messages", type=int, default=DEFAULT_MAX_MESSAGES,
                        help="how many accepted messages the record and the inbox keep (oldest forgotten first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    app, _ = create_app(max_messages=args.max_messages)
    server = make_server(app, args.host, args.port)
    logging.getLogger("devstack.local_ses").info(
        "local SES on http://%s:%s (inbox: /inbox, record: /local-ses/messages)", args.host, server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    main()
