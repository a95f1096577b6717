"""Per-key request quotas, in fixed windows of the (injectable) clock.

Minutes and UTC days start at multiples of 60 s and 86,400 s, as VirusTotal resets daily quotas
at 00:00 UTC. A request refused for quota does not count against it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

UNLIMITED = 1_000_000_000  # what overall_quotas reports as "allowed" for a limit of 0


def _windows(now: float) -> dict[str, int]:
    moment = datetime.fromtimestamp(now, UTC)
    return {
        "minute": int(now // 60),
        "hour": int(now // 3600),
        "day": int(now // 86400),
        "month": moment.year * 12 + moment.month,
    }


def _cap(*limits: int) -> int:
    """The tightest of the configured limits (0 = not configured)."""
    return min((limit for limit in limits if limit), default=UNLIMITED)


class QuotaTracker:
    def __init__(self, per_minute: int, per_day: int, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self.per_day = per_day
        self._clock = clock
        # key -> window name -> (window number, requests counted in it)
        self._usage: dict[str, dict[str, tuple[int, int]]] = {}

    def _used(self, key: str, windows: dict[str, int]) -> dict[str, int]:
        usage = self._usage.get(key, {})
        return {
            name: count for name, (window, count) in usage.items() if windows.get(name) == window
        }

    def consume(self, key: str) -> str | None:
        """Count one request for ``key``; the refusal message when a quota is exhausted."""
        windows = _windows(self._clock())
        used = self._used(key, windows)
        if self.per_minute and used.get("minute", 0) >= self.per_minute:
            return f"Quota exceeded: {self.per_minute} requests per minute"
        if self.per_day and used.get("day", 0) >= self.per_day:
            return f"Quota exceeded: {self.per_day} requests per day"
        self._usage[key] = {
            name: (window, used.get(name, 0) + 1) for name, window in windows.items()
        }
        return None

    def report(self, key: str) -> dict[str, dict]:
        """The ``overall_quotas`` data for ``key`` (hourly and monthly derived from the limits)."""
        used = self._used(key, _windows(self._clock()))
        minute, day = self.per_minute, self.per_day
        allowed = {
            "hourly": _cap(minute * 60, day),
            "daily": _cap(minute * 1440, day),
            "monthly": _cap(minute * 44640, day * 31),
        }
        periods = {"hourly": "hour", "daily": "day", "monthly": "month"}
        return {
            f"api_requests_{period}": {
                "user": {"allowed": allowed[period], "used": used.get(window, 0)}
            }
            for period, window in periods.items()
        }
