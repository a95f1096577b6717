"""What the enrichment job relies on in the VirusTotal emulator, through the real vt-py: GTI
assessments behind the `x-tool` header, crowdsourced YARA rulesets that exist, the corpus's
enrichment targets, and the upload / URL submission lifecycle with a configurable analysis."""

from __future__ import annotations

import base64
import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import requests
import vt

from vt_pipeline.emulators.virustotal.corpus import Corpus, generate_corpus
from vt_pipeline.emulators.virustotal.gti import gti_kind
from vt_pipeline.emulators.virustotal.keys import ApiKey
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.emulators.virustotal.targets import known_values

END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(hours=24)
KEY = "demo"
GTI = {"x-tool": "vt_pipeline"}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate_corpus(7, 300, START, END)


@pytest.fixture(scope="module")
def url(corpus: Corpus) -> Iterator[str]:
    with VirusTotalEmulator(corpus, api_keys={KEY: True}).serve() as served:
        yield served


class Clock:
    """A clock the test moves (the emulator's analyses and dates follow it)."""

    def __init__(self) -> None:
        self.now = END.timestamp()

    def __call__(self) -> float:
        return self.now


def url_id(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def api_error(call: object, *args: object) -> vt.APIError:
    with pytest.raises(vt.APIError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def upload(client: vt.Client, path: str, content: bytes, name: str = "sample.bin") -> str:
    """A multipart `file` upload as VirusTotal takes it; the analysis id."""
    form = aiohttp.FormData()
    form.add_field("file", content, filename=name)
    response = client.post(path, data=form)
    body = response.json()
    assert response.status == 200, body
    return str(body["data"]["id"])


def test_gti_assessment_only_with_the_x_tool_header(corpus: Corpus, url: str) -> None:
    targets = corpus.targets()
    paths = {
        f"/files/{targets.file_gti}": corpus.files[targets.file_gti],
        f"/domains/{targets.domain}": corpus.domains[targets.domain],
        f"/ip_addresses/{targets.ip}": corpus.ip_addresses[targets.ip],
        f"/urls/{url_id(targets.url)}": None,
    }
    with vt.Client(KEY, host=url) as plain, vt.Client(KEY, host=url, headers=GTI) as gti:
        for path, expected in paths.items():
            without = plain.get_json(path)["data"]
            assert "gti_assessment" not in without["attributes"]
            if expected is not None:
                assert without == expected
            with_header = gti.get_json(path)["data"]
            kind = gti_kind(without)
            if kind == "none":
                assert "gti_assessment" not in with_header["attributes"]
            else:
                assessment = with_header["attributes"]["gti_assessment"]
                assert (assessment == {}) == (kind == "empty")
        scored = gti.get_object(f"/files/{targets.file_gti}").gti_assessment
        assert 0 <= scored["threat_score"]["value"] <= 100
        assert scored["verdict"]["value"].startswith("VERDICT_")
        assert scored["severity"]["value"].startswith("SEVERITY_")
        assert gti.get_object(f"/files/{targets.file_no_gti}").gti_assessment == {}
    kinds = Counter(gti_kind(o) for o in corpus.files.values())
    assert kinds["full"] > kinds["empty"] > 0 and kinds["none"] > 0


def test_gti_goes_only_to_keys_licensed_for_it(corpus: Corpus) -> None:
    """VirusTotal decides per key: a premium key without the GTI licence, or a public one, gets
    no assessment even when it sends `x-tool`; the licensed key gets it only when it does."""
    targets = corpus.targets()
    keys = {"gti": True, "vt-only": ApiKey(premium=True, gti=False), "public": False}
    paths = [f"/files/{targets.file_gti}", f"/ip_addresses/{targets.ip}"]
    paths += [f"/domains/{targets.domain}", f"/urls/{url_id(targets.url)}"]
    scored = [p for p in paths if gti_kind(corpus_object(corpus, p)) == "full"]
    assert f"/files/{targets.file_gti}" in scored
    with VirusTotalEmulator(corpus, api_keys=keys).serve() as served:
        for key, headers, licensed in (
            ("gti", GTI, True),
            ("gti", {}, False),
            ("vt-only", GTI, False),
            ("public", GTI, False),
        ):
            with vt.Client(key, host=served, headers=headers) as client:
                for path in scored:
                    attributes = client.get_json(path)["data"]["attributes"]
                    assert ("gti_assessment" in attributes) == licensed, (key, path)


def corpus_object(corpus: Corpus, path: str) -> dict:
    """The corpus object a lookup path names."""
    _, collection, key = path.split("/")
    if collection == "urls":
        key = hashlib.sha256(base64.urlsafe_b64decode(key + "==")).hexdigest()
    return getattr(corpus, collection)[key]


def test_gti_score_differs_from_the_detection_ratio(corpus: Corpus, url: str) -> None:
    """A consumer using the ratio instead of GTI must be caught by a test."""
    with vt.Client(KEY, host=url, headers=GTI) as client:
        differing = 0
        for sha256 in sorted(corpus.files)[:40]:
            obj = client.get_object(f"/files/{sha256}")
            gti = getattr(obj, "gti_assessment", None) or {}
            if "threat_score" not in gti:
                continue
            stats = obj.last_analysis_stats
            total = stats["malicious"] + stats["harmless"] + stats["undetected"]
            ratio = round(100 * stats["malicious"] / total) if total else 0
            differing += gti["threat_score"]["value"] != ratio
    assert differing >= 5


def test_targets_are_what_they_say_and_deterministic(corpus: Corpus, url: str) -> None:
    targets = corpus.targets()
    assert generate_corpus(7, 300, START, END).targets() == targets
    with vt.Client(KEY, host=url) as client:
        assert (
            client.get_object(f"/files/{targets.malicious_file}").last_analysis_stats["malicious"]
            >= 10
        )
        clean = client.get_object(f"/files/{targets.clean_file}").last_analysis_stats
        assert clean["malicious"] == clean["suspicious"] == 0
        ip = client.get_object(f"/ip_addresses/{targets.ip}")
        assert ip.asn and ip.as_owner and ip.country and "." in targets.ip
        for name in (targets.domain, targets.hostname):
            records = client.get_object(f"/domains/{name}").last_dns_records
            assert [r for r in records if r["type"] == "A"]
        assert targets.hostname.count(".") >= 2 and targets.domain.count(".") == 1
        by_b64 = client.get_object(f"/urls/{url_id(targets.url)}")
        by_sha = client.get_object(f"/urls/{hashlib.sha256(targets.url.encode()).hexdigest()}")
        assert by_b64.url == by_sha.url == targets.url
        assert hashlib.sha256(targets.unknown_file_content).hexdigest() == targets.unknown_file
        for path in (f"/files/{targets.unknown_file}", f"/urls/{url_id(targets.unknown_url)}"):
            assert api_error(client.get_object, path).code == "NotFoundError"
    known = set(known_values(corpus))
    assert targets.unknown_file not in known and targets.unknown_url not in known


def test_every_crowdsourced_yara_result_points_at_a_served_ruleset(
    corpus: Corpus, url: str
) -> None:
    quoted = {
        result["ruleset_id"]
        for obj in corpus.files.values()
        for result in obj["attributes"].get("crowdsourced_yara_results") or ()
    }
    assert quoted
    targets = corpus.targets()
    assert corpus.files[targets.yara_file]["attributes"]["crowdsourced_yara_results"]
    with vt.Client(KEY, host=url) as client:
        for ruleset_id in sorted(quoted):
            ruleset = client.get_object(f"/yara_rulesets/{ruleset_id}")
            assert ruleset.rules and ruleset.name and ruleset.source
            for result in (
                r
                for o in corpus.files.values()
                for r in o["attributes"].get("crowdsourced_yara_results") or ()
                if r["ruleset_id"] == ruleset_id
            ):
                assert f"rule {result['rule_name']}" in ruleset.rules


def test_an_upload_is_queued_then_analysed_after_the_configured_polls(corpus: Corpus) -> None:
    content = b"vt_pipeline upload lifecycle\n" * 10
    sha256 = hashlib.sha256(content).hexdigest()
    emulator = VirusTotalEmulator(corpus, api_keys={KEY: True}, analysis_polls=3)
    with emulator.serve() as served, vt.Client(KEY, host=served) as client:
        assert api_error(client.get_object, f"/files/{sha256}").code == "NotFoundError"
        analysis_id = upload(client, "/files", content)
        statuses = [client.get_object(f"/analyses/{analysis_id}").status for _ in range(5)]
        assert statuses == ["queued", "in-progress", "in-progress", "completed", "completed"]
        completed = client.get_object(f"/analyses/{analysis_id}")
        known = client.get_object(f"/files/{sha256}")
        assert completed.stats == known.last_analysis_stats
        assert sum(known.last_analysis_stats.values()) > 0
        assert client.get_json(f"/analyses/{analysis_id}")["meta"]["file_info"]["sha256"] == sha256


def test_a_report_with_no_analysis_yet_is_analysed_once_submitted(corpus: Corpus) -> None:
    targets = corpus.targets()
    content = b"".join(corpus.sample_chunks(targets.unanalysed_file))
    clock = Clock()
    emulator = VirusTotalEmulator(corpus, api_keys={KEY: True}, analysis_polls=0, clock=clock)
    with emulator.serve() as served, vt.Client(KEY, host=served) as client:
        for path in (
            f"/files/{targets.unanalysed_file}",
            f"/urls/{url_id(targets.unanalysed_url)}",
        ):
            before = client.get_json(path)["data"]["attributes"]
            assert before["last_analysis_results"] == {} and "last_analysis_date" not in before
            assert not any(before["last_analysis_stats"].values())
        analyses = [upload(client, "/files", content), client.scan_url(targets.unanalysed_url).id]
        for analysis_id in analyses:
            completed = client.get_object(f"/analyses/{analysis_id}")
            assert completed.status == "completed" and sum(completed.stats.values()) > 0
        for path in (
            f"/files/{targets.unanalysed_file}",
            f"/urls/{url_id(targets.unanalysed_url)}",
        ):
            after = client.get_json(path)["data"]["attributes"]
            assert after["last_analysis_results"] and after["last_analysis_date"] == clock.now
            assert after["first_submission_date"] < clock.now  # submitted before, minutes ago


def test_an_old_report_keeps_its_old_analysis_date(corpus: Corpus, url: str) -> None:
    """What a lookup says about when VirusTotal analysed a file, a year and more before."""
    targets = corpus.targets()
    with vt.Client(KEY, host=url) as client:
        analysed = client.get_object(f"/files/{targets.old_file}").last_analysis_date
    assert analysed < END - timedelta(days=365)
    assert corpus.files[targets.old_file]["attributes"]["last_analysis_results"]


def test_analysis_seconds_follow_the_emulator_clock(corpus: Corpus) -> None:
    clock = Clock()
    emulator = VirusTotalEmulator(
        corpus, api_keys={KEY: True}, clock=clock, analysis_polls=0, analysis_seconds=60
    )
    with emulator.serve() as served, vt.Client(KEY, host=served) as client:
        analysis = client.scan_url("http://fresh.vt-pipeline.invalid/")
        assert client.get_object(f"/analyses/{analysis.id}").status == "queued"
        clock.now += 59
        assert client.get_object(f"/analyses/{analysis.id}").status == "in-progress"
        unseen = f"/urls/{url_id('http://fresh.vt-pipeline.invalid/')}"
        assert api_error(client.get_object, unseen).code == "NotFoundError"
        clock.now += 1
        assert client.get_object(f"/analyses/{analysis.id}").status == "completed"
        assert client.get_object(unseen).url == "http://fresh.vt-pipeline.invalid/"
        emulator.set_analysis_time(polls=0, seconds=0)
        instant = client.scan_url("http://instant.vt-pipeline.invalid/")
        assert client.get_object(f"/analyses/{instant.id}").status == "completed"
        with pytest.raises(ValueError):
            emulator.set_analysis_time(polls=-1)


def test_upload_urls_are_single_use_and_direct_uploads_capped(corpus: Corpus) -> None:
    emulator = VirusTotalEmulator(corpus, api_keys={KEY: True}, analysis_polls=0)
    content = b"bigger files go through an upload URL\n"
    with emulator.serve() as served, vt.Client(KEY, host=served) as client:
        upload_url = client.get_data("/files/upload_url")
        assert upload_url.startswith(served + "/")
        analysis_id = upload(client, upload_url, content)
        assert client.get_object(f"/analyses/{analysis_id}").status == "completed"
        again = aiohttp.FormData()
        again.add_field("file", content, filename="again.bin")
        assert client.post(upload_url, data=again).status == 404
        huge = io.BytesIO(b"\0" * (32 * 1024 * 1024 + 1))
        over = aiohttp.FormData()
        over.add_field("file", huge, filename="huge.bin")
        response = client.post("/files", data=over)
        assert response.status == 413
        assert response.json()["error"]["code"] == "RequestEntityTooLargeError"


def test_http_controls_for_analysis_time_and_targets(corpus: Corpus) -> None:
    emulator = VirusTotalEmulator(corpus, api_keys={KEY: True})
    with emulator.serve() as served, vt.Client(KEY, host=served) as client:
        targets = requests.get(f"{served}/_emulator/targets", timeout=10).json()
        expected = corpus.targets()
        assert targets["malicious_file"] == expected.malicious_file
        assert base64.b64decode(targets["unknown_file_content"]) == expected.unknown_file_content
        answer = requests.post(f"{served}/_emulator/analysis", json={"polls": 0}, timeout=10)
        assert answer.json() == {"polls": 0, "seconds": 0.0}
        analysis = client.scan_url("http://controlled.vt-pipeline.invalid/")
        assert client.get_object(f"/analyses/{analysis.id}").status == "completed"
        bad = requests.post(f"{served}/_emulator/analysis", json={"polls": -3}, timeout=10)
        assert bad.status_code == 400
