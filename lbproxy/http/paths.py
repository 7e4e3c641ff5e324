"""
The normal form of request paths, which routing rules, hash keys and the
server all see.

A path that two servers would read as the same resource must match the same
routing rule: a rule for C{/admin} has to catch C{/%61dmin}, C{//admin},
C{/./admin} and C{/web/../admin} as nginx's C{location} and common
frameworks do, or the rule is bypassed by spelling. So before a request is
routed, the path of its target (what precedes C{"?"}; the query is never
touched) is brought to the normal form of RFC 3986 §6.2.2:

  - a percent-encoded unreserved character (letters, digits, C{-._~}) is
    decoded (C{%61} is C{a}, C{%2e} and C{%2E} are C{.});
  - the hex digits of every other percent-encoding are upper case
    (C{%c3%a9} is C{%C3%A9}); non-ASCII stays encoded;
  - a byte not allowed in a path (C{"<>[]^`{|}}) is percent-encoded;
  - repeated slashes are merged (C{//a///b} is C{/a/b}), as nginx does;
  - the dot segments C{.} and C{..} are removed (§5.2.4), percent-encoded
    ones included; a path that ends with one ends with C{/}.

What cannot be normalised safely is refused with 400, because servers
disagree on what it means and no single answer agrees with all of them:

  - an encoded slash, C{%2F}: nginx decodes it into a separator, Apache
    refuses it, Tomcat refuses or passes it;
  - a backslash, raw or C{%5C}: a separator on Windows servers and for some
    frameworks, an ordinary character for others;
  - an encoded control character, C{%00} to C{%1F} and C{%7F}: NUL cuts C
    strings short, CR and LF end up in headers and logs;
  - a malformed percent-encoding (C{%zz}, a trailing C{%});
  - a C{..} that would climb above the root (nginx answers 400 too);
  - a dot segment with parameters, C{.;x} or C{..;x}: a segment for
    RFC 3986 and nginx, C{.} or C{..} for servlet containers, which strip
    parameters first.

An operator whose servers need encoded slashes, backslashes or encoded
control characters allows each on the listener (L{PathsConfig}); they then
pass through as they are, never decoded, so they are no separator for the
rules (nor for the dot segments). Parameters (C{;x}) otherwise stay part of
their segment.

Only origin-form and absolute-form targets have a path; C{OPTIONS *} and
C{CONNECT}'s authority form are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import RequestHead

#: What a normal path is made of besides "/" and percent-encodings: pchar
#: (RFC 3986 §3.3) without pct-encoded.
_PCHAR = rb"A-Za-z0-9\-._~!$&'()*+,;=:@"

#: A path already in the normal form, without a percent-encoding: segments
#: of pchar that are not empty, not dot segments and not dot segments with
#: parameters, then an optional final "/", then the query or the end. The
#: quick check that lets a normal path through without any other work.
_NORMAL = re.compile(
    rb"(?:/(?!\.\.?+(?:[/;?]|\Z))[" + _PCHAR + rb"]++)*+/?+(?:\?|\Z)"
)

#: What the full normalisation looks at: a percent sign with what follows,
#: and every byte outside pchar and "/".
_WORK = re.compile(rb"%(?:[0-9A-Fa-f]{2})?|[^" + _PCHAR + rb"/]")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

#: Normal targets a normaliser remembers (the same come again and again),
#: up to this many, each at most _KNOWN_SIZE bytes long.
_KNOWN_LIMIT = 4096
_KNOWN_SIZE = 256


@dataclass(frozen=True)
class PathsConfig:
    """
    A listener's path normalisation (its C{[listeners.NAME.paths]} table).

    @ivar normalize: normalise paths (the default); false: routing rules
        and hash keys see the path as received, and so does the server.
    @ivar allowEncodedSlash: let C{%2F} through, undecoded, instead of 400.
    @ivar allowBackslash: let C{\\} and C{%5C} through, undecoded.
    @ivar allowEncodedControl: let C{%00}-C{%1F} and C{%7F} through,
        undecoded.
    """

    normalize: bool = True
    allowEncodedSlash: bool = False
    allowBackslash: bool = False
    allowEncodedControl: bool = False


_STRICT = PathsConfig()


def _refuse(reason: str) -> HTTPParseError:
    return HTTPParseError(400, reason)


def _recode(path: bytes, rules: PathsConfig) -> bytes:
    """
    C{path} with unreserved characters decoded, other percent-encodings in
    upper case, bytes not allowed in a path encoded; refused when it holds
    what C{rules} do not let through.
    """

    def replace(match: re.Match) -> bytes:
        found = match.group()
        if found[0] != 0x25:
            byte = found[0]
            if byte == 0x5C:
                if rules.allowBackslash:
                    return found
                raise _refuse("backslash in the path")
            if byte <= 0x20 or byte == 0x7F:
                raise _refuse("control character in the path")
            return b"%%%02X" % byte
        if len(found) != 3:
            raise _refuse("malformed percent-encoding in the path")
        byte = int(found[1:], 16)
        if byte in _UNRESERVED:
            return bytes((byte,))
        if byte == 0x2F:
            if not rules.allowEncodedSlash:
                raise _refuse("encoded slash in the path")
        elif byte == 0x5C:
            if not rules.allowBackslash:
                raise _refuse("backslash in the path")
        elif (byte < 0x20 or byte == 0x7F) and not rules.allowEncodedControl:
            raise _refuse("encoded control character in the path")
        return found.upper()

    return _WORK.sub(replace, path)


def normalizePath(path: bytes, rules: PathsConfig = _STRICT) -> bytes:
    """
    The normal form of C{path} (which starts with "/" and has no query).

    @raise HTTPParseError: 400, when C{path} cannot be normalised safely;
        its reason says why, without echoing the path.
    """
    if _NORMAL.match(path) is not None:
        return path
    return _normalize(path, rules)


def _normalize(path: bytes, rules: PathsConfig) -> bytes:
    """
    What L{normalizePath} does when the quick check finds work to do.
    """
    segments: list[bytes] = []
    parts = _recode(path, rules).split(b"/")
    for part in parts[1:]:
        if not part or part == b".":
            continue
        if part == b"..":
            if not segments:
                raise _refuse("path climbs above the root")
            segments.pop()
            continue
        if part[:2] == b".;" or part[:3] == b"..;":
            raise _refuse("dot segment with parameters in the path")
        segments.append(part)
    last = parts[-1]
    normal = b"/" + b"/".join(segments)
    if segments and (not last or last == b"." or last == b".."):
        normal += b"/"
    return normal


def normalizeTarget(target: bytes, rules: PathsConfig = _STRICT) -> bytes:
    """
    An origin-form target with its path normalised, its query as it is.
    """
    query = target.find(b"?")
    if query < 0:
        return normalizePath(target, rules)
    return normalizePath(target[:query], rules) + target[query:]


class PathNormalizer:
    """
    Normalises the targets of one listener's requests.
    """

    def __init__(self, rules: PathsConfig = _STRICT) -> None:
        """
        @param rules: what the listener lets through (its C{normalize} is
            the caller's business: without it there is no normaliser).
        """
        self._rules = rules
        self._known: set[bytes] = set()

    def normalize(self, head: RequestHead) -> None:
        """
        Give C{head} the normal form of its target (keeping the target as
        received in L{RequestHead.rawTarget} when it changes).

        @raise HTTPParseError: 400, when the path cannot be normalised
            safely.
        """
        target = head.target
        known = self._known
        if target in known:
            return
        form = head.targetForm
        if form == "origin":
            if _NORMAL.match(target) is not None:
                if len(target) <= _KNOWN_SIZE:
                    if len(known) >= _KNOWN_LIMIT:
                        known.clear()
                    known.add(target)
                return
            normal = normalizeTarget(target, self._rules)
        elif form == "absolute":
            start = target.index(b"://") + 3
            end = len(target)
            for index in range(start, end):
                if target[index] in b"/?":
                    end = index
                    break
            uri = target[end:]
            if uri[:1] != b"/":
                uri = b"/" + uri
            normal = normalizeTarget(uri, self._rules)
            if normal == uri:
                return
            normal = target[:end] + normal
        else:
            return
        if normal != target:
            head.rawTarget = target
            head.target = normal
