"""Per-key request quotas, in fixed windows of the (injectable) clock.

Minutes, hours and UTC days start at multiples of 60 s, 3,600 s and 86,400 s (VirusTotal resets
daily quotas at 00:00 UTC), months on the 1st. A request refused for quota does not count against
it; `spend` plays another client using the same key.
"""

from __future__ import annotations

import threading
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
    def __init__(
        self,
        per_minute: int,
        per_day: int,
        clock: Callable[[], float],
        per_hour: int = 0,
        per_month: int = 0,
    ) -> None:
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.per_day = per_day
        self.per_month = per_month
        self._clock = clock
        self._lock = threading.Lock()  # the server thread and `spend` from a test
        # key -> window name -> (window number, requests counted in it)
        self._usage: dict[str, dict[str, tuple[int, int]]] = {}

    def _used(self, key: str, windows: dict[str, int]) -> dict[str, int]:
        usage = self._usage.get(key, {})
        return {
            name: count for name, (window, count) in usage.items() if windows.get(name) == window
        }

    def _limits(self) -> dict[str, int]:
        return {
            "minute": self.per_minute,
            "hour": self.per_hour,
            "day": self.per_day,
            "month": self.per_month,
        }

    def consume(self, key: str) -> str | None:
        """Count one request for ``key``; the refusal message when a quota is exhausted."""
        with self._lock:
            windows = _windows(self._clock())
            used = self._used(key, windows)
            for name, limit in self._limits().items():
                if limit and used.get(name, 0) >= limit:
                    return f"Quota exceeded: {limit} requests per {name}"
            self._usage[key] = {
                name: (window, used.get(name, 0) + 1) for name, window in windows.items()
            }
            return None

    def spend(self, key: str, count: int) -> int:
        """Another client on ``key`` makes ``count`` requests now; how many VT accepted."""
        return sum(self.consume(key) is None for _ in range(max(0, count)))

    def report(self, key: str) -> dict[str, dict]:
        """The ``overall_quotas`` data for ``key`` (hourly and monthly derived from the limits)."""
        with self._lock:
            used = self._used(key, _windows(self._clock()))
        minute, hour, day, month = self.per_minute, self.per_hour, self.per_day, self.per_month
        allowed = {
            "hourly": _cap(minute * 60, hour, day),
            "daily": _cap(minute * 1440, hour * 24, day, month),
            "monthly": _cap(minute * 44640, hour * 744, day * 31, month),
        }
        periods = {"hourly": "hour", "daily": "day", "monthly": "month"}
        return {
            f"api_requests_{period}": {
                "user": {"allowed": allowed[period], "used": used.get(window, 0)}
            }
            for period, window in periods.items()
        }
