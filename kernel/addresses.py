"""E-mail address checks shared by the sync (owner addresses) and the e-mail channel.

An owner address comes from a CRM or a CSV file, so it is hostile input: a
CR/LF in it would inject headers, two addresses in it would send one seller's
deals to a stranger. ``address_problem`` accepts exactly one bare address
(``local@domain``) that the standard library's header parser reads back
unchanged, and says why anything else is refused.
"""

from __future__ import annotations

from email.headerregistry import Address

__all__ = ["address_problem", "valid_address"]

MAX_LENGTH = 320


def address_problem(value: str) -> str | None:
    """Why ``value`` is not one usable e-mail address, or ``None`` when it is."""
    if not value or not value.strip():
        return "empty"
    if any(c in value for c in "\r\n") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a line break or a control character"
    if not value.isascii():
        return "contains non-ASCII characters (use the punycode form of the domain)"
    if len(value) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if any(c in value for c in ",;<>") or value.count("@") != 1:
        return "not exactly one bare address (local@domain)"
    try:
        parsed = Address(addr_spec=value)
    except Exception:  # the parser raises ValueError, IndexError and header defects alike
        return "not a parseable e-mail address"
    if parsed.addr_spec != value or not parsed.username or not parsed.domain:
        return "not a parseable e-mail address"
    return None


def valid_address(value: str | None) -> str | None:
    """``value`` when it is one usable address, else ``None``."""
    if value is None or address_problem(value) is not None:
        return None
    return value
