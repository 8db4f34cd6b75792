"""The local stack's `[core] hostname_callable`: each Celery worker of the stack reports a name of its own.

Every worker runs on this one machine, so Airflow's default (the FQDN) would record the same host for every task
instance and nobody could tell on which worker a task ran. The stack gives each worker process the environment
variable WORKER_HOSTNAME_ENV (its task processes inherit it); the scheduler, api-server and the other components
have none and report the FQDN, as by default.
"""

from __future__ import annotations

import os
import socket

WORKER_HOSTNAME_ENV = "STACK_WORKER_HOSTNAME"


def worker_hostname() -> str:
    """This process's Celery worker name (TaskInstance.hostname), or the machine's FQDN outside a worker."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()
