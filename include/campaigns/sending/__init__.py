"""The send path: the ledger, preflight, message composition, the SES transport, the global rate limiter and the
send loop of one mapped task.

Imports the shared ground, `audience` and `feedback` (tokens for the tracking URLs it writes, links it registers).
"""
