"""`ses-doctor`: checks an installation against SES, SNS, the tracking service, Redis and PostgreSQL.

The top part: it may import every other part, and none imports it.
"""
