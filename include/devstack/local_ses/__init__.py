"""The local stack's SES: moto's SES behind a thin WSGI layer that records what it accepted and publishes the events
real SES would publish for a configuration set with an SNS destination. Dev stack and tests only.

    server.py     the WSGI app (moto + the recording layer + the inbox page); `python -m devstack.local_ses`
    message.py    AcceptedMessage: one message the local SES accepted, with its receive time
    events.py     SES event JSON for an accepted message, by the mailbox simulator's rules
    publisher.py  signed SNS HTTP notifications of those events to the tracking service, with SNS's retries
"""
