"""What comes back from a sent message: signed tracking tokens, tracked links, SNS-delivered SES events and the
suppressions they cause. The tracking service is built on this part.

Imports only the shared ground and `audience`.
"""
