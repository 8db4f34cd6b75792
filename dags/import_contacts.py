"""
### Import contacts

Loads a CSV file of contacts into the campaign database and adds them to a list (created if missing).

Trigger with conf `{"path": "<csv file or URI>", "list": "<list name>"}` or the trigger form:

- **path**: a file on the worker (`/data/contacts.csv`) or anything Airflow's ObjectStoragePath reads, e.g.
  `s3://bucket/key.csv` through the `aws_default` connection (or `s3://conn_id@bucket/key.csv`).
- **list**: the list the contacts join.

Columns `email`, `first_name`, `last_name` (header case and spaces do not matter); every other column is
stored in the contact's `attributes`. Contacts are upserted by email, case-insensitively; empty cells never erase
stored values. Invalid addresses and duplicates are reported with their line numbers in the log and in the
task's result; they never fail the import. The import never re-subscribes an unsubscribed member and never
clears a suppression: such rows are reported too. Importing the same file again changes nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import Param, dag, task

# A fixed name: DagBag imports DAG files under a generated module name, which would make log lines unreadable.
log = logging.getLogger("campaigns.dags.import_contacts")


@dag(
    dag_id="import_contacts",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["campaigns", "contacts"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "path": Param(
            type="string",
            minLength=1,
            title="CSV file",
            description="A local path on the worker or a URI such as s3://bucket/contacts.csv",
        ),
        "list": Param(
            type="string",
            minLength=1,
            title="List",
            description="Name of the list the contacts join; created if it does not exist",
        ),
    },
)
def import_contacts():
    @task
    def import_csv(params: dict | None = None) -> dict:
        """Stream the file into campaigns.audience.contacts.import_csv; log every problem row, return the report."""
        from airflow.sdk.exceptions import AirflowFailException

        from campaigns.audience.contacts import import_csv as run_import
        from campaigns.audience.contacts import open_csv
        from campaigns.config import get_settings
        from campaigns.db import campaign_db

        path, list_name = params["path"], params["list"]
        log.info("importing %s into list %r", path, list_name)
        try:
            settings = get_settings()
            with open_csv(path, settings.aws_conn_id) as stream, campaign_db(settings.db_conn_id) as conn:
                report = run_import(conn, stream, list_name)
        except (ValueError, FileNotFoundError) as exc:
            # A file that cannot be imported as it is will not import on a retry either.
            raise AirflowFailException(str(exc)) from exc
        report.log_to(log)
        return report.as_dict()

    import_csv()


import_contacts()
