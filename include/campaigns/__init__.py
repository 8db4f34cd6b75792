"""The domain package: everything the DAGs, the tracking service and the Airflow plugin do is here.

The parts, each importing only those listed before it (docs/architecture.md, checked by tests/test_architecture.py):

    ground      config, db, errors, queries, states, schema (+ queries/*.sql, migrations/)
    audience    contacts and lists, audience filters
    feedback    tracking tokens, tracked links, SNS and SES events, suppressions
    sending     ledger, preflight, compose, SES transport, rate limiter, the send loop
    lifecycle   definitions, scheduling, control, reputation, stats, test sends, the send_campaign run
    doctor      ses-doctor
"""
