"""The enrichment lookups of VirusTotalSession against the emulator: lookups, uploads, analyses."""

import asyncio
import os
import time
from typing import Any

import pytest
from vt import url_id

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.virustotal.resource import (
    MAX_DIRECT_UPLOAD,
    VirusTotalError,
    VirusTotalSession,
)
from vt_pipeline_tests.virustotal.test_virustotal_resource import call, vt

pytestmark = pytest.mark.integration
FAST_POLLS = {"analysis_poll_seconds": 0.01, "analysis_poll_max_seconds": 0.02}


def test_lookups_return_raw_objects_and_none_for_unknown(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    sha256 = next(iter(vt_corpus.files))
    md5 = vt_corpus.files[sha256]["attributes"]["md5"]
    domain = next(iter(vt_corpus.domains))
    ip = next(iter(vt_corpus.ip_addresses))
    url = vt_corpus.urls[next(iter(vt_corpus.urls))]["attributes"]["url"]

    async def work(s: VirusTotalSession) -> list[Any]:
        return [
            await s.lookup("file", md5),
            await s.lookup("file", "0" * 64),
            await s.lookup("domain", domain),
            await s.lookup("ip_address", ip),
            await s.lookup("url", url_id(url)),
        ]

    by_md5, unknown, by_domain, by_ip, by_url = call(vt(vt_emulator), work)
    assert by_md5["data"]["id"] == sha256
    assert unknown is None
    assert by_domain["data"]["id"] == domain
    assert by_ip["data"]["id"] == ip
    assert by_url["data"]["attributes"]["url"] == url
    assert vt_emulator.count("file") == 2 and vt_emulator.count("url") == 1


def test_lookup_retries_a_429_burst_and_never_reports_nothing(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    domain = next(iter(vt_corpus.domains))
    vt_emulator.set_faults("domain:429:1.0:3")
    found = call(vt(vt_emulator), lambda s: s.lookup("domain", domain))
    assert found is not None and found["data"]["id"] == domain
    assert vt_emulator.count("domain", 429) == 3 and vt_emulator.count("domain", 200) == 1

    vt_emulator.set_faults("domain:503:1.0")
    with pytest.raises(VirusTotalError, match="failed after 3 attempts"):
        call(vt(vt_emulator, max_attempts=3), lambda s: s.lookup("domain", domain))


def test_an_uploaded_file_is_analysed_then_known(vt_emulator: VirusTotalEmulator) -> None:
    data = b"MZ" + os.urandom(4096)

    async def work(s: VirusTotalSession) -> tuple[Any, Any, Any]:
        import hashlib

        sha256 = hashlib.sha256(data).hexdigest()
        before = await s.lookup("file", sha256)
        analysis_id = await s.upload_file(data, 'odd "name"\r\n.exe')
        analysis = await s.wait_for_analysis(analysis_id)
        return before, analysis, await s.lookup("file", sha256)

    before, analysis, after = call(vt(vt_emulator, **FAST_POLLS), work)
    assert before is None
    assert analysis["data"]["attributes"]["status"] == "completed"
    assert after is not None and after["data"]["attributes"]["size"] == len(data)
    assert vt_emulator.count("file_upload") == 1 and vt_emulator.count("file_upload_url") == 0
    assert vt_emulator.count("analysis") >= 2  # polled until completed


def test_a_large_file_goes_through_the_upload_url(vt_emulator: VirusTotalEmulator) -> None:
    data = b"\0" * (MAX_DIRECT_UPLOAD + 1)
    analysis_id = call(vt(vt_emulator, timeout_seconds=30), lambda s: s.upload_file(data, "big"))
    assert analysis_id
    assert vt_emulator.count("file_upload_url") == 1  # the direct POST /files refuses > 32 MiB


def test_an_oversize_upload_is_refused_without_a_call(vt_emulator: VirusTotalEmulator) -> None:
    with pytest.raises(VirusTotalError, match="above VirusTotal's upload limit of 1000 bytes"):
        call(vt(vt_emulator, max_upload_bytes=1000), lambda s: s.upload_file(b"x" * 1001, "f"))
    assert (
        vt_emulator.stats() == {} or sum(sum(v.values()) for v in vt_emulator.stats().values()) == 0
    )


def test_a_submitted_url_is_analysed_then_known(vt_emulator: VirusTotalEmulator) -> None:
    url = "http://never-seen.example/path?q='1'"

    async def work(s: VirusTotalSession) -> Any:
        assert await s.lookup("url", url_id(url)) is None
        await s.wait_for_analysis(await s.submit_url(url))
        return await s.lookup("url", url_id(url))

    found = call(vt(vt_emulator, **FAST_POLLS), work)
    assert found is not None and found["data"]["attributes"]["url"] == url
    assert vt_emulator.count("url_submit") == 1


def test_an_analysis_that_never_completes_times_out_clearly(
    vt_emulator: VirusTotalEmulator,
) -> None:
    resource = vt(vt_emulator, analysis_timeout_seconds=0.0, **FAST_POLLS)

    async def work(s: VirusTotalSession) -> None:
        await s.wait_for_analysis(await s.submit_url("http://slow.example/"))

    with pytest.raises(VirusTotalError, match="not completed after 0 s") as caught:
        call(resource, work)
    assert caught.value.code == "AnalysisTimeout"


def test_awaiting_an_analysis_does_not_hold_up_other_lookups(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    """With one concurrency slot, lookups still go on while an analysis is awaited."""
    domains = list(vt_corpus.domains)[:5]
    resource = vt(
        vt_emulator, max_concurrency=1, analysis_poll_seconds=0.3, analysis_poll_max_seconds=0.3
    )
    finished: dict[str, float] = {}

    async def analysis(s: VirusTotalSession) -> None:
        await s.wait_for_analysis(await s.submit_url("http://waiting.example/"))
        finished["analysis"] = time.monotonic()

    async def lookups(s: VirusTotalSession) -> None:
        for domain in domains:
            assert await s.lookup("domain", domain) is not None
        finished["lookups"] = time.monotonic()

    async def work(s: VirusTotalSession) -> None:
        await asyncio.gather(analysis(s), lookups(s))

    call(resource, work)
    assert finished["lookups"] < finished["analysis"]
