"""
HTTP grammar pieces (RFC 9110, RFC 9112) as compiled byte patterns.

The parser, the serialiser and the forwarding headers all validate with the
same definitions, so what one accepts the others can write back out.
"""

from __future__ import annotations

import ipaddress
import re

#: tchar (RFC 9110 §5.6.2).
TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
TOKEN = TCHAR + rb"+"
#: quoted-string (RFC 9110 §5.6.4): no CTLs except HTAB, quoted-pair escapes.
QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
#: field-value (RFC 9110 §5.5) without surrounding whitespace: visible
#: characters and obs-text, with SP/HTAB only between them.
FIELD_VALUE = rb"(?:[\x21-\x7e\x80-\xff](?:[\t \x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?"

_token = re.compile(TOKEN)
_fieldValue = re.compile(FIELD_VALUE)

#: One field line of a trailer section, without its CRLF.
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[\t ]*(" + FIELD_VALUE + rb")[\t ]*")

#: request-line (RFC 9112 §3): exactly one SP between the three parts.
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e\x80-\xff]+) HTTP/([0-9])\.([0-9])")

#: status-line (RFC 9112 §4). The reason phrase may be absent together with
#: its SP, as some servers send it; it may not hold CTLs other than HTAB.
STATUS_LINE = re.compile(
    rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?"
)

#: chunk-size and chunk-ext (RFC 9112 §7.1.1), strictly: no whitespace
#: anywhere, at most 16 hex digits.
CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + TOKEN + rb"(?:=(?:" + TOKEN + rb"|" + QUOTED_STRING + rb"))?)*"
)

#: Content-Length: digits only, bounded so the value fits 63 bits.
CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")

# reg-name (RFC 3986 §3.2.2) is matched in two steps, which is faster than
# one alternation per byte: its characters with "%" anywhere first, then,
# only for a name that has a "%", that each is followed by two hex digits.
_HOST_PORT = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?"
)
_PERCENT_ENCODED = re.compile(rb"(?:[^%]|%[0-9A-Fa-f]{2})*")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)([/?][^#]*)?")
_ORIGIN_FORM = ("origin", None)

# Parameters after a transfer coding name (RFC 9110 §5.6.6).
_PARAMETERS = re.compile(
    rb"(?:[\t ]*;[\t ]*" + TOKEN + rb"=(?:" + TOKEN + rb"|" + QUOTED_STRING + rb"))*"
)
_CODING = re.compile(rb"(" + TOKEN + rb")(" + _PARAMETERS.pattern + rb")")


def isToken(value: bytes) -> bool:
    """
    Whether C{value} is a non-empty token.
    """
    return _token.fullmatch(value) is not None


def isFieldValue(value: bytes) -> bool:
    """
    Whether C{value} can be written as a field value as it is (no CR, LF,
    NUL or other CTL, no leading or trailing whitespace).
    """
    return _fieldValue.fullmatch(value) is not None


def splitList(value: bytes) -> list[bytes]:
    """
    The elements of a comma-separated list (RFC 9110 §5.6.1), surrounding
    whitespace removed and empty elements skipped, as recipients must.
    """
    return [e for e in (part.strip(b" \t") for part in value.split(b",")) if e]


def splitStrictList(value: bytes) -> list[bytes] | None:
    """
    The elements of a comma-separated list, or L{None} when an element is
    empty: for framing headers an odd list is treated as an attack.
    """
    elements = []
    for part in value.split(b","):
        element = part.strip(b" \t")
        if not element:
            return None
        elements.append(element)
    return elements


def parseCoding(element: bytes) -> tuple[bytes, bool] | None:
    """
    The lowercased name of a transfer coding list element, and whether it has
    parameters; L{None} when it is not C{token *( OWS ";" OWS parameter )}.
    """
    match = _CODING.fullmatch(element)
    if match is None:
        return None
    return match.group(1).lower(), bool(match.group(2))


def parseHostPort(value: bytes) -> tuple[bytes, int | None] | None:
    """
    Split a Host value or an authority (C{uri-host [ ":" port ]}, RFC 9110
    §7.2) into host and port, or L{None} when it is malformed. IP literals
    must be valid IPv6 addresses; userinfo is refused.
    """
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        return None
    host, port = match.groups()
    if host[:1] == b"[":
        try:
            ipaddress.IPv6Address(host[1:-1].decode("ascii"))
        except ValueError:
            return None
    elif b"%" in host and _PERCENT_ENCODED.fullmatch(host) is None:
        return None
    if not port:
        return host, None
    number = int(port)
    if number > 65535:
        return None
    return host, number


def classifyTarget(target: bytes) -> tuple[str, bytes | None] | None:
    """
    The form of a request target (RFC 9112 §3.2) and, for absolute and
    authority forms, the authority it names.

    @return: C{("origin", None)}, C{("absolute", authority)},
        C{("authority", authority)}, C{("asterisk", None)}, or L{None} when
        the target is none of them (fragments, unknown schemes, userinfo,
        empty hosts, authority without a port).
    """
    if target[:1] == b"/":
        # origin-form: a path and query, without a fragment.
        return None if b"#" in target else _ORIGIN_FORM
    if target == b"*":
        return "asterisk", None
    match = _ABSOLUTE.fullmatch(target)
    if match is not None:
        if match.group(1).lower() not in (b"http", b"https"):
            return None
        authority = match.group(2)
        parsed = parseHostPort(authority)
        if parsed is None or not parsed[0]:
            return None
        return "absolute", authority
    parsed = parseHostPort(target)
    if parsed is None or not parsed[0] or parsed[1] is None:
        return None
    return "authority", target
