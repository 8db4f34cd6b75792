"""`python -m devstack COMMAND`: what the Makefile's targets run (on the stack instance STACK_INSTANCE names, by
default the user's stack)."""

from __future__ import annotations

import argparse
import time

from devstack import services, stack, testenv
from devstack.settings import SETTINGS


def _services() -> None:
    services.start_postgres(SETTINGS)
    services.start_redis(SETTINGS)
    services.ensure_databases(SETTINGS)
    services.migrate(SETTINGS)


COMMANDS = {
    "services": _services,
    "prepare-tests": lambda: (_services(), testenv.prepare(SETTINGS)),
    "up": lambda: stack.up(SETTINGS),
    "down": lambda: stack.down(SETTINGS),
    "status": lambda: stack.status(SETTINGS),
    "reset": lambda: stack.reset(SETTINGS),
    "clean": lambda: stack.clean(SETTINGS),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args()
    started = time.monotonic()
    COMMANDS[args.command]()
    print(f"[stack] {args.command} done in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
