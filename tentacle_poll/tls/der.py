"""Just enough DER to read a certificate's notAfter with the standard library.

The agent daemon never loads ``cryptography`` (about 9 MB of memory), and ``ssl`` exposes the
fields of a certificate only for CA certificates it holds as trust anchors; agent certificates
are not CAs. So the one field the agent needs is read here (RFC 5280, section 4.1).
"""

from __future__ import annotations

import datetime as dt

SEQUENCE = 0x30
VERSION_TAG = 0xA0
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18


def not_after_of_der(der: bytes) -> dt.datetime:
    """Raises ValueError when ``der`` is not a certificate."""
    return validity_of_der(der)[1]


def validity_of_der(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter); raises ValueError when ``der`` is not a certificate."""
    try:
        tbs = _contents(der, 0, SEQUENCE)[0]
        fields = _children(der, *_contents(der, tbs, SEQUENCE))
        if der[fields[0]] == VERSION_TAG:
            fields = fields[1:]
        # serialNumber, signature, issuer, validity
        start, end = _contents(der, fields[3], SEQUENCE)
        not_before, not_after = _children(der, start, end)[:2]
        return _time(der, not_before), _time(der, not_after)
    except IndexError as exc:
        raise ValueError("not a DER certificate") from exc


def _header(der: bytes, at: int) -> tuple[int, int]:
    """(where the contents start, their length) of the element at ``at``."""
    length = der[at + 1]
    if length < 0x80:
        return at + 2, length
    count = length & 0x7F
    if not 1 <= count <= 4:
        raise ValueError("unsupported DER length")
    return at + 2 + count, int.from_bytes(der[at + 2 : at + 2 + count], "big")


def _contents(der: bytes, at: int, tag: int) -> tuple[int, int]:
    if der[at] != tag:
        raise ValueError(f"expected DER tag {tag:#x} at {at}, found {der[at]:#x}")
    start, length = _header(der, at)
    return start, start + length


def _children(der: bytes, start: int, end: int) -> list[int]:
    found = []
    while start < end:
        found.append(start)
        contents, length = _header(der, start)
        start = contents + length
    return found


def _time(der: bytes, at: int) -> dt.datetime:
    start, length = _header(der, at)
    text = der[start : start + length].decode("ascii")
    if der[at] == UTC_TIME:  # YYMMDDHHMMSSZ; years 50-99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif der[at] != GENERALIZED_TIME:
        raise ValueError("notAfter is not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
