"""
Secret files named by a configuration (the HA key, the admin token): read
once, refused unless only their owner can access them.
"""

from __future__ import annotations

import os
import stat

from lbproxy.errors import ConfigError


def readSecret(source: str, key: str, path: str, minSize: int, maxSize: int, what: str) -> bytes:
    """
    The secret in C{path}: the file's bytes without trailing white space,
    after checking that it is a regular file only its owner can access
    and that the secret has C{minSize} to C{maxSize} bytes.

    @param key: the config key naming the file, for errors.
    @param what: what the secret is called in errors (C{"key"}).
    @raise ConfigError: one line naming C{key}, never the secret's bytes.
    """

    def fail(message: str):
        raise ConfigError(source, key, message)

    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            raw = f.read(maxSize + 1) if stat.S_ISREG(info.st_mode) else b""
    except OSError as e:
        fail(f"cannot read {path!r}: {e.strerror}")
    if not stat.S_ISREG(info.st_mode):
        fail(f"expected a regular file, got {path!r}")
    if info.st_mode & 0o077:
        fail(f"expected a file only its owner can access (chmod 600), got mode {stat.S_IMODE(info.st_mode):04o} on {path!r}")
    secret = raw.rstrip()
    if not minSize <= len(secret) <= maxSize:
        fail(f"expected a {what} of {minSize} to {maxSize} bytes in {path!r}, got {len(secret)} bytes")
    return secret
