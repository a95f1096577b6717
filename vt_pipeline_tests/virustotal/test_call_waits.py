"""Why a call waits, told to the caller (`on_wait`), and how long a call that keeps failing may
retry (`retry_deadline_seconds`), against the VT emulator through the resource."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.storage.store import ArtifactStore
from vt_pipeline.virustotal.budget import window
from vt_pipeline.virustotal.resource import (
    RETRY_DEADLINE_ENV,
    VirusTotalError,
    VirusTotalResource,
    VirusTotalSession,
    call_scope,
)
from vt_pipeline_tests.virustotal.test_virustotal_resource import vt as emulator_resource

pytestmark = pytest.mark.integration
RETRY_AT = re.compile(r"retrying at \d\d:\d\d:\d\d UTC")
Notice = tuple[str, str, float]


def vt(emulator: VirusTotalEmulator, tmp_path: Path, **overrides: Any) -> VirusTotalResource:
    """The resource tests' fast-retry resource, with a budget of this test's own."""
    return emulator_resource(
        emulator, budget_url=f"sqlite:///{tmp_path / 'budget.db'}", **overrides
    )


def domain_of(corpus: Corpus, index: int = 0) -> str:
    return sorted(corpus.domains)[index]


def lookup_in_scope(
    resource: VirusTotalResource, scope: str, domain: str, notices: list[Notice]
) -> Any:
    async def main() -> Any:
        async with resource.session(on_wait=lambda *notice: notices.append(notice)) as session:
            call_scope(scope)
            return await session.lookup("domain", domain)

    return asyncio.run(main())


def test_on_wait_tells_the_scope_why_its_call_retries_a_server_error(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    vt_emulator.set_faults("domain:500:1.0:2")
    notices: list[Notice] = []
    found = lookup_in_scope(vt(vt_emulator, tmp_path), "request-7", domain_of(vt_corpus), notices)
    assert found is not None
    assert len(notices) == 2  # one per retry
    for scope, reason, seconds in notices:
        assert scope == "request-7"
        assert reason.startswith("VirusTotal domain failed (ServerError")
        assert RETRY_AT.search(reason) and "giving up at" in reason
        assert 0 <= seconds <= 0.02  # the backoff it is about to sleep


@pytest.mark.parametrize("budgeted", [True, False], ids=["budget", "no budget"])
def test_on_wait_says_virustotal_asked_us_to_slow_down_on_a_429(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path, budgeted: bool
) -> None:
    vt_emulator.set_faults("domain:429:1.0:1")
    notices: list[Notice] = []
    resource = vt(vt_emulator, tmp_path, quota_budget=budgeted)
    assert lookup_in_scope(resource, "request-8", domain_of(vt_corpus), notices) is not None
    ((scope, reason, seconds),) = notices
    assert scope == "request-8"
    assert reason.startswith("VirusTotal asked us to slow down (QuotaExceededError")
    assert RETRY_AT.search(reason)
    if budgeted:  # the emulator reports no quota spent: it was the per-minute rate
        assert "the key's per-minute rate" in reason
        assert 0 < seconds <= 0.26  # the next (scaled) minute
    assert vt_emulator.count("domain", 429) == 1 and vt_emulator.count("domain", 200) == 1


def test_a_long_wait_for_budget_is_announced_to_each_waiting_scope(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    resource = vt(
        vt_emulator,
        tmp_path,
        quota_per_minute=2,
        budget_time_scale=40.0,  # a minute lasts 1.5 s
        budget_boundary_margin_seconds=0.05,
    )
    clock = resource.clock()
    notices: list[Notice] = []

    async def main() -> list[Any]:
        async with resource.session(on_wait=lambda *notice: notices.append(notice)) as session:
            session.wait_notice_seconds = 0.1
            # A fresh minute: the third call then waits most of it, far more than 0.1 s
            await asyncio.sleep(clock.real(window("minute", clock.now())[1] - clock.now()) + 0.02)

            async def one(index: int) -> Any:
                call_scope(f"request-{index}")
                return await session.lookup("domain", domain_of(vt_corpus, index))

            return list(await asyncio.gather(*(one(index) for index in range(3))))

    assert all(found is not None for found in asyncio.run(main()))
    assert notices, "the third call waited for the next minute without a word"
    scopes = {scope for scope, _, _ in notices}
    assert scopes <= {"request-0", "request-1", "request-2"} and len(scopes) == len(notices)
    for _, reason, seconds in notices:
        assert reason.startswith("Waiting for the VirusTotal quota: the per-minute quota of 2")
        assert RETRY_AT.search(reason)
        assert 0 <= seconds <= 1.5


def test_an_async_on_wait_runs_beside_the_call_and_a_failing_one_never_fails_it(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    vt_emulator.set_faults("domain:503:1.0:2")
    posted: list[str] = []

    async def main() -> tuple[Any, list[str]]:
        release = asyncio.Event()

        async def post(scope: str, reason: str, seconds: float) -> None:
            await release.wait()  # e.g. OpenCTI slow to take the message
            posted.append(reason)

        async with vt(vt_emulator, tmp_path).session(on_wait=post) as session:
            # The call would never end if it waited for its notices
            found = await asyncio.wait_for(session.lookup("domain", domain_of(vt_corpus)), 30)
            before = list(posted)
            release.set()
        return found, before

    found, before = asyncio.run(main())
    assert found is not None
    assert before == [] and len(posted) == 2  # the session let them finish when it closed

    def broken(scope: str, reason: str, seconds: float) -> None:
        raise RuntimeError("the notice's own bug")

    async def with_broken() -> Any:
        async with vt(vt_emulator, tmp_path).session(on_wait=broken) as session:
            return await session.lookup("domain", domain_of(vt_corpus))

    vt_emulator.set_faults("domain:503:1.0:2")
    assert asyncio.run(with_broken()) is not None


@pytest.mark.parametrize("fault", ["500", "malformed"])
def test_a_call_whose_answer_keeps_failing_ends_at_the_deadline_and_holds_no_other(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path, fault: str
) -> None:
    vt_emulator.set_faults(f"domain:{fault}:1.0")  # every domain lookup, forever
    resource = vt(
        vt_emulator,
        tmp_path,
        retry_deadline_seconds=1.5,
        backoff_base_seconds=0.1,
        backoff_max_seconds=0.3,
        max_attempts=1000,
    )
    notices: list[Notice] = []
    ended: dict[str, float] = {}

    async def main() -> tuple[BaseException | None, Any]:
        async with resource.session(on_wait=lambda *notice: notices.append(notice)) as session:

            async def failing() -> None:
                call_scope("failing")
                try:
                    await session.lookup("domain", domain_of(vt_corpus))
                finally:
                    ended["failing"] = time.monotonic()

            async def other(s: VirusTotalSession) -> Any:
                call_scope("other")
                await asyncio.sleep(0.3)  # while the failing call retries
                found = await s.lookup("file", sorted(vt_corpus.files)[0])
                ended["other"] = time.monotonic()
                return found

            error, found = await asyncio.gather(failing(), other(session), return_exceptions=True)
            return error, found  # type: ignore[return-value]

    started = time.monotonic()
    error, found = asyncio.run(main())
    assert isinstance(error, VirusTotalError) and error.code == "RetriesExhausted"
    message = str(error)
    assert "VirusTotal domain kept failing for" in message and RETRY_DEADLINE_ENV in message
    assert "the limit is 1.5 s" in message and "last error" in message
    if fault == "500":
        assert "ServerError" in message
    assert 1.0 < ended["failing"] - started < 15.0  # about 1.5 s; generous for a slow host
    attempts = vt_emulator.count("domain")
    assert 3 <= attempts < 1000  # it retried, then the deadline, not the attempts, stopped it
    assert f"over {attempts} attempts" in message
    assert found is not None and ended["other"] < ended["failing"]  # the other went on
    assert {scope for scope, _, _ in notices} == {"failing"}
    assert len(notices) == attempts - 1  # each retry was announced, the last one never came


def test_a_sample_that_never_matches_is_not_available_once_the_deadline_passes(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    """Livehunt's downloads retry through the same `_call`: the deadline ends them the same way,
    and the reason counts the attempts really made."""
    sha256 = next(s for s in vt_corpus.files if 1000 < (vt_corpus.sample_size(s) or 0) < 10**6)
    vt_emulator.set_faults("sample:malformed:1.0")  # every download's bytes are corrupted
    store = ArtifactStore(tmp_path / "samples")
    resource = vt(
        vt_emulator,
        tmp_path,
        retry_deadline_seconds=1.0,
        backoff_base_seconds=0.1,
        backoff_max_seconds=0.2,
        max_attempts=1000,
    )

    async def main() -> Any:
        async with resource.session() as session:
            return await session.download_sample(sha256, store)

    result = asyncio.run(main())
    attempts = vt_emulator.count("file_download")
    assert result.status == "not_available" and not store.has(sha256)
    assert 3 <= attempts < 1000
    assert result.reason is not None
    assert f"never matched the SHA-256 in {attempts} attempts" in result.reason
