"""Email addresses in the one form the product stores them, whoever hands them in.

A contact is imported in this form, and a suppression, a manual one or one caused by an SES bounce or complaint,
is this form lower-cased (the `suppressions` CHECK), because the snapshot matches `suppressions.email` against
`lower(contacts.email)`. An address normalised any other way would suppress a string no contact has. So the CSV
import, `manage_suppressions` and the SES event handler all call these functions; the sender's own
`sending.addresses` is a different thing, the form an address takes in a message header (IDN as punycode).

The form is email-validator's normalised address (syntax only, no DNS): domain lower-case and, when
international, in Unicode (`ann@xn--bcher-kva.de` and `ann@BÜCHER.de` are both `ann@bücher.de`); local part as
written; quoted local parts and non-ASCII local parts are invalid, because SES cannot send to them.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

__all__ = ["EmailNotValidError", "stored_address", "suppression_address"]


def stored_address(address: str) -> str:
    """The address as contacts store it; EmailNotValidError (a ValueError) saying why when it is not one."""
    return validate_email(address, check_deliverability=False, allow_smtputf8=False).normalized


def suppression_address(address: str) -> str:
    """The address as `suppressions.email` holds it: the stored form, lower-cased."""
    return stored_address(address).lower()
