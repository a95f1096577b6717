"""What a 429 does to the budget: which quota VT refused for, decided from overall_quotas, and a
per-minute rate that never drops near 1 a minute because one 429 arrived at idle.

The budget-only tests drive `Budget.shrink` on a real SQLite store; the others drive the VT
emulator (quotas enforced as VT does, another client spending the same key) through the
resource, on a scaled clock shared by the emulator and the budget.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.virustotal.budget import (
    SHRINK_FLOOR,
    SHRINK_SECONDS,
    Budget,
    BudgetClock,
    Limits,
    window,
)
from vt_pipeline.virustotal.resource import (
    VirusTotalError,
    VirusTotalResource,
    call_scope,
)
from vt_pipeline_tests.conftest import PREMIUM_KEY
from vt_pipeline_tests.virustotal.test_budget import budget as budget_store

KEY = "secret-api-key-0123456789"
SCALE = 30.0  # a budget and emulator minute lasts 2 s
RETRY_AT = re.compile(r"retrying at \d\d:\d\d:\d\d UTC")


def budget(tmp_path: Path, limits: Limits, clock: BudgetClock | None = None) -> Budget:
    """The budget tests' store, on this file's clock (a minute of 2 s)."""
    return budget_store(tmp_path, limits, clock or BudgetClock(SCALE))


def noon(clock_scale: float = 1.0) -> BudgetClock:
    """A clock at noon UTC today (far from any daily reset), running at `clock_scale`."""
    base = BudgetClock(clock_scale)
    now = base.now()
    return BudgetClock(clock_scale, offset=window("day", now)[0] + 43200 - now)


def report(hourly: tuple[int, int], daily: tuple[int, int], monthly: tuple[int, int]) -> dict:
    """overall_quotas data: (used, allowed) per period."""
    names = {"hourly": hourly, "daily": daily, "monthly": monthly}
    return {
        f"api_requests_{name}": {"user": {"used": used, "allowed": allowed}}
        for name, (used, allowed) in names.items()
    }


def minute_limit(b: Budget) -> int:
    return int(b.usage()["limits"]["minute"])


# -- the budget alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "expected"),
    [(20, 10), (4, 4), (6, SHRINK_FLOOR), (1000, 500)],
    ids=["half", "a public key's 4 stays 4", "floor", "premium"],
)
def test_one_429_at_idle_halves_the_minute_at_most_and_never_below_the_floor(
    tmp_path: Path, configured: int, expected: int
) -> None:
    clock = noon(SCALE)
    b = budget(tmp_path, Limits(per_minute=configured), clock)
    asyncio.run(b.acquire("interactive"))  # the minute spent 1 call: the old 3/4 of it was 1

    throttle = b.shrink(None)  # VT did not say which quota: the per-minute rate

    assert throttle.period == "minute" and not throttle.gives_up
    assert throttle.limit == expected and minute_limit(b) == expected
    assert throttle.until == window("minute", clock.now())[1]
    assert b.usage()["used"]["minute"] >= expected  # the rest of this minute counts as spent
    b.shrink(None)  # a second 429 while lowered does not lower it further
    assert minute_limit(b) == expected
    b.clock = BudgetClock(SCALE, clock.offset + SHRINK_SECONDS + 1)
    assert minute_limit(b) == configured  # recovered on its own, 2 minutes later


def test_a_429_with_no_limit_known_holds_the_minute_at_the_floor(tmp_path: Path) -> None:
    b = budget(tmp_path, Limits(), noon(SCALE))
    throttle = b.shrink(report((3, 10**9), (3, 10**9), (3, 10**9)))  # VT: unlimited, 3 used
    assert throttle.period == "minute" and throttle.limit == SHRINK_FLOOR
    assert minute_limit(b) == SHRINK_FLOOR


def test_the_quota_refused_for_is_read_from_overall_quotas(tmp_path: Path) -> None:
    clock = noon()
    b = budget(tmp_path, Limits(per_minute=20), clock)
    now = clock.now()

    day = b.shrink(report((10, 240), (500, 500), (500, 15000)))
    assert (day.period, day.limit, day.until) == ("day", 500, window("day", now)[1])
    assert day.gives_up  # midnight is 12 h away, beyond max_reset_wait: BudgetExhausted follows
    assert minute_limit(b) == 20  # a spent day leaves the per-minute rate alone

    month = b.shrink(report((10, 240), (20, 500), (15000, 15000)))
    assert month.period == "month" and month.gives_up

    hour = b.shrink(report((240, 240), (260, 500), (260, 15000)))
    assert hour.period == "hour" and not hour.gives_up
    assert hour.until == window("hour", now)[1]
    assert minute_limit(b) == 20

    rate = b.shrink(report((12, 240), (40, 500), (40, 15000)))
    assert rate.period == "minute" and rate.limit == 10


# -- against the emulator ----------------------------------------------------------------------


@pytest.fixture
def four_a_minute(vt_corpus: Corpus) -> Iterator[VirusTotalEmulator]:
    """VT with a public key's rate, 4 requests a (scaled) minute, on the key."""
    emulator = VirusTotalEmulator(
        vt_corpus,
        api_keys={PREMIUM_KEY: True},
        quota_per_minute=4,
        clock=BudgetClock(SCALE).now,
    )
    with emulator.serve():
        yield emulator


def resource(emulator: VirusTotalEmulator, tmp_path: Path, **kw: Any) -> VirusTotalResource:
    settings: dict[str, Any] = {
        "api_key": PREMIUM_KEY,
        "api_url": emulator.url,
        "timeout_seconds": 5.0,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "budget_url": f"sqlite:///{tmp_path / 'budget.db'}",
        "budget_time_scale": SCALE,
        "budget_boundary_margin_seconds": 0.1,
        **kw,
    }
    return ScaledClockVirusTotalResource(**settings)


@pytest.mark.integration
def test_five_files_after_one_429_at_idle_take_a_couple_of_minutes_not_six(
    four_a_minute: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    """Issue 16's case: another client spent the minute, our one call got a 429 at idle. The
    old shrink made the key 1 call a minute for 10 minutes: five files took six minutes."""
    clock = BudgetClock(SCALE)
    first, *five = sorted(vt_corpus.files)[:6]
    notices: list[tuple[str, str, float]] = []

    async def main() -> list[float]:
        async with resource(four_a_minute, tmp_path).session(
            on_wait=lambda *notice: notices.append(notice)
        ) as session:
            call_scope("request-1")
            start = window("minute", clock.now())[1]
            await asyncio.sleep(clock.real(start - clock.now()) + 0.05)  # a fresh minute
            four_a_minute.spend(PREMIUM_KEY, 4)  # another client on the key: the minute is gone
            assert await session.lookup("file", first) is not None
            answered = [clock.now()]

            async def one(sha256: str) -> float:
                assert await session.lookup("file", sha256) is not None
                return clock.now()

            answered += await asyncio.gather(*(one(sha256) for sha256 in five))
            assert session.budget is not None
            assert session.budget.usage()["limits"]["minute"] == 4  # not lowered towards 1
            return answered

    started = time.monotonic()
    moments = asyncio.run(main())
    minutes = sorted({window("minute", moment)[0] for moment in moments})
    # The 429's minute is spent; the six calls fit in the next two minutes at 4 a minute
    # (one more minute allowed for a slow host), not one a minute.
    assert len(minutes) <= 3, minutes
    assert four_a_minute.count("file", 429) == 1
    assert four_a_minute.count("file", 200) == 6
    assert time.monotonic() - started < 60  # generous: about 3 scaled minutes, 6 s
    scope, reason, seconds = notices[0]
    assert scope == "request-1"
    assert "VirusTotal asked us to slow down (QuotaExceededError" in reason
    assert "per-minute rate" in reason and RETRY_AT.search(reason)
    assert 0 < seconds <= clock.real(60)


@pytest.mark.integration
def test_a_spent_day_is_recognized_from_overall_quotas_and_fails_at_once(
    vt_corpus: Corpus, tmp_path: Path
) -> None:
    """A 429 because the day is spent is not retried every minute until the attempts run out:
    overall_quotas says the day is spent, and the call fails saying when it resets."""
    clock = noon()
    emulator = VirusTotalEmulator(
        vt_corpus, api_keys={PREMIUM_KEY: True}, quota_per_day=10, clock=clock.now
    )
    notices: list[tuple[str, str, float]] = []
    with emulator.serve():
        vt = resource(emulator, tmp_path, budget_time_scale=1.0, budget_time_offset=clock.offset)

        async def main() -> None:
            async with vt.session(on_wait=lambda *notice: notices.append(notice)) as session:
                emulator.spend(PREMIUM_KEY, 10)  # another client spent the day
                await session.lookup("file", sorted(vt_corpus.files)[0])

        with pytest.raises(VirusTotalError) as raised:
            asyncio.run(main())
    assert raised.value.code == "QuotaExhausted"
    message = str(raised.value)
    assert "daily quota spent" in message and "retry after 00:00 UTC" in message
    assert emulator.count("file", 429) == 1  # not retried into the spent day
    assert not notices  # it fails at once: no "retrying at" that will not happen


@pytest.mark.integration
def test_a_spent_day_about_to_reset_is_waited_for_and_said_so(
    vt_corpus: Corpus, tmp_path: Path
) -> None:
    base = BudgetClock()
    now = base.now()
    clock = BudgetClock(1.0, offset=window("day", now)[1] - 4.0 - now)  # 4 s before midnight
    emulator = VirusTotalEmulator(
        vt_corpus, api_keys={PREMIUM_KEY: True}, quota_per_day=10, clock=clock.now
    )
    notices: list[tuple[str, str, float]] = []
    with emulator.serve():
        vt = resource(emulator, tmp_path, budget_time_scale=1.0, budget_time_offset=clock.offset)

        async def main() -> Any:
            async with vt.session(on_wait=lambda *notice: notices.append(notice)) as session:
                emulator.spend(PREMIUM_KEY, 10)
                return await session.lookup("file", sorted(vt_corpus.files)[0])

        found = asyncio.run(main())
    assert found is not None
    assert emulator.count("file", 429) == 1 and emulator.count("file", 200) == 1
    ((_, reason, seconds),) = notices
    assert "the key's daily quota of 10 calls is spent" in reason
    assert "retrying at 00:00:0" in reason and "when it resets" in reason
    assert 0 < seconds <= 4.5
