"""VirusTotalResource against the emulator: paging, retries, clear errors, verified downloads."""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.storage.store import ArtifactStore
from vt_pipeline.virustotal.resource import (
    VirusTotalError,
    VirusTotalResource,
    VirusTotalSession,
)
from vt_pipeline_tests.conftest import LIVEHUNT_START, PREMIUM_KEY, PUBLIC_KEY

pytestmark = pytest.mark.integration
T = TypeVar("T")


def vt(emulator: VirusTotalEmulator, **overrides: Any) -> VirusTotalResource:
    config: dict[str, Any] = {
        "api_key": PREMIUM_KEY,
        "api_url": emulator.url,
        "timeout_seconds": 2.0,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.02,
        "budget_time_scale": 240.0,  # a 429 waits for the next "minute": 0.25 s
        "max_attempts": 6,
    }
    return ScaledClockVirusTotalResource(**{**config, **overrides})


def call(resource: VirusTotalResource, work: Callable[[VirusTotalSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with resource.session() as session:
            return await work(session)

    return asyncio.run(main())


def notification_ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["context_attributes"]["notification_id"] for item in items]


def test_paging_returns_each_notification_of_the_window_once(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    start, end = LIVEHUNT_START, LIVEHUNT_START + timedelta(hours=6)
    items, truncated = call(vt(vt_emulator), lambda s: s.livehunt_notifications(start, end))
    assert not truncated
    assert sorted(notification_ids(items)) == sorted(e.notification_id for e in vt_corpus.stream)
    assert len(items) > 40  # several pages were followed
    assert vt_emulator.count("ioc_stream") == -(-len(items) // 40)


def test_adjacent_windows_never_share_a_notification(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    """VT's `date:X-` is inclusive: a notification exactly on a boundary belongs to one window."""
    boundary = LIVEHUNT_START + timedelta(hours=2)
    on_boundary = [e for e in vt_corpus.stream if e.date == int(boundary.timestamp())]
    resource = vt(vt_emulator)
    before, _ = call(
        resource, lambda s: s.livehunt_notifications(boundary - timedelta(hours=1), boundary)
    )
    after, _ = call(
        resource, lambda s: s.livehunt_notifications(boundary, boundary + timedelta(hours=1))
    )
    assert not set(notification_ids(before)) & set(notification_ids(after))
    assert {e.notification_id for e in on_boundary} <= set(notification_ids(after))


def test_limit_stops_paging(vt_emulator: VirusTotalEmulator) -> None:
    start, end = LIVEHUNT_START, LIVEHUNT_START + timedelta(hours=6)
    items, truncated = call(
        vt(vt_emulator), lambda s: s.livehunt_notifications(start, end, limit=45)
    )
    assert truncated and len(items) == 45
    assert vt_emulator.count("ioc_stream") == 2


def test_non_premium_key_is_told_livehunt_needs_premium(vt_emulator: VirusTotalEmulator) -> None:
    now = datetime.now(UTC)
    with pytest.raises(VirusTotalError, match="premium") as caught:
        call(
            vt(vt_emulator, api_key=PUBLIC_KEY),
            lambda s: s.livehunt_notifications(now - timedelta(hours=1), now),
        )
    assert caught.value.code == "ForbiddenError"
    assert PUBLIC_KEY not in str(caught.value)
    assert vt_emulator.count("ioc_stream") == 1  # not retried: retrying cannot fix it


def test_wrong_key_is_a_clear_error(vt_emulator: VirusTotalEmulator) -> None:
    with pytest.raises(VirusTotalError, match="rejected the API key") as caught:
        call(vt(vt_emulator, api_key="not-a-key"), lambda s: s.hunting_ruleset("anything"))
    assert "not-a-key" not in str(caught.value)


@pytest.mark.parametrize("kind", ["429", "500", "503", "malformed", "truncated", "timeout"])
def test_transient_faults_are_retried(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, kind: str
) -> None:
    ruleset_id = next(iter(vt_corpus.hunting_rulesets))
    vt_emulator.set_faults(f"hunting_ruleset:{kind}:1.0:2")

    async def work(session: VirusTotalSession) -> dict[str, Any]:
        ruleset = await session.hunting_ruleset(ruleset_id)
        assert session.log.calls["hunting_ruleset"] == 3  # two faults, then the answer
        assert session.log.retries["hunting_ruleset"] == 2
        return ruleset

    ruleset = call(vt(vt_emulator), work)
    assert ruleset["id"] == ruleset_id and ruleset["attributes"]["rules"]


def test_persistent_faults_fail_loudly_with_the_endpoint_and_last_error(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    ruleset_id = next(iter(vt_corpus.hunting_rulesets))
    vt_emulator.set_faults("hunting_ruleset:503:1.0")
    resource = vt(vt_emulator, max_attempts=3)

    async def work(session: VirusTotalSession) -> None:
        try:
            await session.hunting_ruleset(ruleset_id)
        finally:
            assert session.log.calls["hunting_ruleset"] == 3
            assert session.log.retries["hunting_ruleset"] == 2

    with pytest.raises(VirusTotalError, match="hunting_ruleset failed after 3 attempts") as caught:
        call(resource, work)
    assert "ServerError" in str(caught.value) and PREMIUM_KEY not in str(caught.value)


def test_download_is_verified_and_survives_truncation(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    sha256 = next(s for s in vt_corpus.files if 1000 < (vt_corpus.sample_size(s) or 0) < 10**6)
    vt_emulator.set_faults("sample:truncated:1.0:2,file_download:malformed:1.0:1")
    store = ArtifactStore(tmp_path)
    result = call(vt(vt_emulator), lambda s: s.download_sample(sha256, store))
    assert result.status == "downloaded"
    assert hashlib.sha256(store.path_for(sha256).read_bytes()).hexdigest() == sha256
    again = call(vt(vt_emulator), lambda s: s.download_sample(sha256, store))
    assert again.status == "already_stored"
    assert vt_emulator.count("file_download") == 4  # 3 failed attempts + 1; none the 2nd time


def test_download_cap_and_unknown_sample(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    sha256 = next(s for s in vt_corpus.files if (vt_corpus.sample_size(s) or 0) > 5000)
    store = ArtifactStore(tmp_path)
    capped = call(vt(vt_emulator), lambda s: s.download_sample(sha256, store, max_bytes=4096))
    assert capped.status == "too_large" and not store.has(sha256)
    missing = call(vt(vt_emulator), lambda s: s.download_sample("0" * 64, store))
    assert missing.status == "not_available"


def test_unsafe_ruleset_ids_never_reach_the_network(vt_emulator: VirusTotalEmulator) -> None:
    with pytest.raises(VirusTotalError, match="unsafe id"):
        call(vt(vt_emulator), lambda s: s.hunting_ruleset("../../files/x"))
    assert (
        vt_emulator.stats() == {}
        or sum(sum(codes.values()) for codes in vt_emulator.stats().values()) == 0
    )


def test_a_sample_whose_bytes_never_match_is_not_available_after_its_retries(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    sha256 = next(s for s in vt_corpus.files if 1000 < (vt_corpus.sample_size(s) or 0) < 10**6)
    vt_emulator.set_faults("sample:malformed:1.0")  # every download's bytes are corrupted
    store = ArtifactStore(tmp_path)
    result = call(vt(vt_emulator, max_attempts=3), lambda s: s.download_sample(sha256, store))
    assert result.status == "not_available" and not store.has(sha256)
    assert result.reason is not None
    assert "never matched the SHA-256 in 3 attempts" in result.reason and sha256 in result.reason
    assert vt_emulator.count("file_download") == 3
    assert list(store.path_for(sha256).parent.iterdir()) == []  # no partial file left


def test_a_persistent_outage_of_downloads_still_fails(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    sha256 = next(s for s in vt_corpus.files if (vt_corpus.sample_size(s) or 0) > 1000)
    vt_emulator.set_faults("file_download:503:1.0")
    with pytest.raises(VirusTotalError, match="after 3 attempts"):
        call(
            vt(vt_emulator, max_attempts=3),
            lambda s: s.download_sample(sha256, ArtifactStore(tmp_path)),
        )
