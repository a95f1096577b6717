"""The VirusTotal side of the expansions against the emulator: the fewest calls (a Sigma rule
fetched once per run however many files match it, stored answers reused), failures kept as
reasons, and nothing asked of GTI without a sign of threat objects."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.virustotal.expansion_fetch import ExpansionFetcher
from vt_pipeline.virustotal.expansions import ExpansionOptions, Expansions
from vt_pipeline.virustotal.resource import VirusTotalResource
from vt_pipeline_tests.conftest import PREMIUM_KEY

pytestmark = pytest.mark.integration

ALL = ExpansionOptions(attack_patterns=True, sigma_rules=True, comments_limit=5, gti_limit=40)


def expand_all(
    emulator: VirusTotalEmulator, files: list[str], base: Path, cache_hours: int = 0
) -> list[Expansions]:
    resource = VirusTotalResource(  # no budget: a shared one (DAGSTER_HOME) is not the point
        api_key=PREMIUM_KEY,
        api_url=emulator.url,
        max_attempts=2,
        backoff_base_seconds=0.01,
        quota_budget=False,
    )

    async def run() -> list[Expansions]:
        async with resource.session() as session:
            fetcher = ExpansionFetcher(session, ResponseStore(base), timedelta(hours=cache_hours))

            async def one(sha256: str) -> Expansions:
                body: Any = await session.lookup("file", sha256)
                return await fetcher.expand("file", sha256, body["data"], ALL)

            return list(await asyncio.gather(*(one(f) for f in files)))

    return asyncio.run(run())


def sigma_files(corpus: Corpus) -> list[str]:
    return [
        k for k, o in sorted(corpus.files.items()) if o["attributes"].get("sigma_analysis_results")
    ]


def test_a_sigma_rule_is_fetched_once_for_concurrent_requests_and_stored_answers_reused(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    files = sigma_files(vt_corpus)[:30]
    rules = {
        r["rule_id"]
        for f in files
        for r in vt_corpus.files[f]["attributes"]["sigma_analysis_results"]
    }
    vt_emulator.reset_stats()
    found = expand_all(vt_emulator, files, tmp_path, cache_hours=1)
    assert vt_emulator.count("sigma_rule") == len(rules) < len(files)
    assert all(set(e.sigma_rules) == {m.rule_id for m in e.sigma} for e in found)
    assert all(e.techniques and e.comments is not None and not e.errors for e in found)
    calls = {k: v for k, v in vt_emulator.stats().items() if k != "file"}
    again = expand_all(vt_emulator, files, tmp_path, cache_hours=1)
    after = {k: v for k, v in vt_emulator.stats().items() if k != "file"}
    assert after == calls  # the expansions all from the stored answers (the lookups: the job's)
    assert [e.techniques for e in again] == [e.techniques for e in found]
    assert all(e.cache_hits >= 2 for e in again)


def test_failures_are_reasons_and_gti_is_asked_only_with_a_sign_of_threats(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    files = sigma_files(vt_corpus)[:10]
    vt_emulator.api.set_faults("file_behaviour_mitre_trees:malformed:1,sigma_rule:500:1")
    vt_emulator.reset_stats()
    found = expand_all(vt_emulator, files, tmp_path)
    for expansions in found:
        reasons = dict(expansions.errors)
        assert expansions.techniques is None and "JSONDecodeError" in reasons["attack_patterns"]
        assert expansions.sigma_rules == {} and "sigma_rules" in reasons
        assert expansions.comments is not None  # the others are unaffected
    associated = sum(e.gti_associated for e in found)
    assert vt_emulator.count("file_associations") == associated
    assert Counter(e.gti_licensed for e in found)[True] >= associated
