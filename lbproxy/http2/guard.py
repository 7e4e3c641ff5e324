"""
Metering what an HTTP/2 client sends that costs lbproxy work but no
request: the h2 library answers PINGs and SETTINGS by itself and counts no
resets, so the floods of the published HTTP/2 attacks (Rapid Reset,
CVE-2023-44487; the PING, SETTINGS, PRIORITY, reset and empty-frame
floods of CVE-2019-9512/9513/9514/9515/9518) are counted here, per connection, in fixed
windows of time.
"""

from __future__ import annotations

#: The kinds of frames counted, and the settings limiting each.
RESET = "RST_STREAM"
PING = "PING"
SETTINGS = "SETTINGS"
EMPTY = "empty DATA"
PRIORITY = "PRIORITY"


class FloodMeter:
    """
    Counts of one connection's frames of each kind in the current window.

    @ivar limits: the most frames of each kind a window may hold.
    """

    __slots__ = ("_seconds", "_window", "limits", "_start", "_counts")

    def __init__(self, settings, seconds) -> None:
        """
        @param settings: the listener's
            L{lbproxy.http2.config.HTTP2Settings}.
        @param seconds: the clock (the reactor's C{seconds}).
        """
        self._seconds = seconds
        self._window = settings.floodWindow
        self.limits = {
            RESET: settings.maxResets,
            PING: settings.maxPings,
            SETTINGS: settings.maxSettings,
            EMPTY: settings.maxEmptyFrames,
            PRIORITY: settings.maxPriority,
        }
        self._start = seconds()
        self._counts = dict.fromkeys(self.limits, 0)

    def count(self, kind: str) -> bool:
        """
        Count one frame of C{kind}; True when it is one too many.
        """
        now = self._seconds()
        counts = self._counts
        if now - self._start >= self._window:
            self._start = now
            for key in counts:
                counts[key] = 0
        counts[kind] += 1
        return counts[kind] > self.limits[kind]
