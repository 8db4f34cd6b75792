"""Email addresses as they may go into a message header: checked, and international domains as punycode."""

from __future__ import annotations

import re

import idna

from campaigns.errors import AddressProblem

__all__ = ["AddressProblem", "normalize_address"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ADDRESS = re.compile(rf"{_LOCAL_PART.pattern}@{_DOMAIN.pattern}")


def normalize_address(address: str, what: str = "recipient") -> str:
    """The address as it may go into a header (IDN domain as punycode); AddressProblem if it cannot."""
    if not isinstance(address, str):
        raise AddressProblem(f"{what} address must be a string, got {type(address).__name__}")
    if "\r" in address or "\n" in address:
        raise AddressProblem(f"{what} address contains a line break (CR/LF)")
    addr = address.strip()
    match = _ADDRESS.fullmatch(addr)
    if match is not None and len(addr) <= 254 and addr.index("@") <= 64:
        return addr
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise AddressProblem(f"{what} address {address!r} is not an email address")
    if not local.isascii():
        raise AddressProblem(f"{what} address {address!r} has a non-ASCII local part (SES cannot send SMTPUTF8)")
    if _LOCAL_PART.fullmatch(local) is None or len(local) > 64:
        raise AddressProblem(f"{what} address {address!r} has an invalid local part (quoted forms are not supported)")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise AddressProblem(f"{what} address {address!r} has an invalid international domain: {exc}") from exc
    if _DOMAIN.fullmatch(domain) is None:
        raise AddressProblem(f"{what} address {address!r} has an invalid domain")
    addr = f"{local}@{domain}"
    if len(addr) > 254:
        raise AddressProblem(f"{what} address {address!r} is longer than 254 characters")
    return addr
