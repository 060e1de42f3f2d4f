"""Durations written as Go writes them, and fn's RFC 3339 timestamps."""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["parse_duration", "format_duration", "rfc3339_ms", "parse_rfc3339", "now_rfc3339"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
          "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go-style duration ("10ms", "1.5s", "1m30s") or plain seconds ("2.5") to seconds.

    >>> parse_duration("1m30s")
    90.0
    """
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0 or value != value:
            raise ValueError(f"duration must be >= 0, got {text!r}")
        return value
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(
                f"invalid duration {text!r}: use a number of seconds "
                "or Go syntax like 10ms, 1.5s, 6m"
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if sign < 0 and total > 0:
        raise ValueError(f"duration must be >= 0, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Seconds back to a short Go-style string, for logs and --help defaults."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def rfc3339_ms(dt: datetime) -> str:
    """fn's timestamp format: 2006-01-02T15:04:05.000Z07:00 (UTC written as Z)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now_rfc3339() -> str:
    return rfc3339_ms(datetime.now(UTC))


def parse_rfc3339(text: str) -> datetime | None:
    """Parse an RFC 3339 timestamp; None for an empty or malformed one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
