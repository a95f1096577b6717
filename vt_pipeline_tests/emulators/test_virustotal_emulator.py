"""The VirusTotal emulator driven by the real vt-py client, as the pipeline drives VirusTotal."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import plyara
import pytest
import vt

from vt_pipeline.emulators.virustotal.corpus import Corpus, generate_corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator

END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(hours=24)
KEYS = {"demo": True, "public": False}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate_corpus(21, 400, START, END)


@pytest.fixture(scope="module")
def url(corpus: Corpus) -> Iterator[str]:
    """A shared emulator for tests that change nothing."""
    with VirusTotalEmulator(corpus, api_keys=KEYS).serve() as served:
        yield served


@pytest.fixture
def emulator() -> Iterator[VirusTotalEmulator]:
    """A fresh emulator on a small corpus, for tests that delete, fault or count."""
    emulator = VirusTotalEmulator(generate_corpus(3, 60, START, END), api_keys=KEYS)
    with emulator.serve():
        yield emulator


def page_all(client: vt.Client, params: dict[str, Any]) -> list[dict]:
    """Every item of /ioc_stream for ``params``, following meta.cursor."""
    items: list[dict] = []
    query = dict(params)
    while True:
        page = client.get_json("/ioc_stream", params=query)
        items += page["data"]
        cursor = page["meta"].get("cursor")
        if not cursor:
            assert "next" not in page["links"]
            return items
        assert page["data"] and cursor in page["links"]["next"]
        query["cursor"] = cursor


def ids(items: list[dict]) -> list[str]:
    return [item["context_attributes"]["notification_id"] for item in items]


def http(method: str, url: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    """A raw request (no vt-py): status and decoded JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("x-apikey", key)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def api_error(call: Any, *args: Any, **kwargs: Any) -> vt.APIError:
    with pytest.raises(vt.APIError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- Livehunt stream -----------------------------------------------------------------------------


def test_paging_returns_every_notification_exactly_once(corpus: Corpus, url: str) -> None:
    with vt.Client("demo", host=url) as client:
        items = page_all(client, {"limit": 40})
    assert ids(items) == [entry.notification_id for entry in corpus.stream]
    assert items[:5] == corpus.notifications[:5]
    assert items[-1] == corpus.notifications[-1]


def test_default_page_size_and_vt_iterator(corpus: Corpus, url: str) -> None:
    with vt.Client("demo", host=url) as client:
        assert len(client.get_json("/ioc_stream")["data"]) == 10
        objects = list(client.iterator("/ioc_stream", batch_size=40))
    assert [obj.context_attributes["notification_id"] for obj in objects] == [
        entry.notification_id for entry in corpus.stream
    ]


def test_date_range_filters_in_iso_and_unix_seconds(corpus: Corpus, url: str) -> None:
    since = START + timedelta(hours=6)
    until = START + timedelta(hours=9)
    expected = [
        entry.notification_id
        for entry in corpus.stream
        if since.timestamp() <= entry.date <= until.timestamp()
    ]
    iso = f"date:{since:%Y-%m-%dT%H:%M:%S}+ date:{until:%Y-%m-%dT%H:%M:%S}Z-"
    unix = f"date:{int(since.timestamp())}+ date:{int(until.timestamp())}-"
    with vt.Client("demo", host=url) as client:
        assert ids(page_all(client, {"filter": iso, "limit": 40})) == expected
        assert ids(page_all(client, {"filter": unix, "limit": 7})) == expected
    assert 0 < len(expected) < len(corpus.stream)


def test_tag_and_source_type_filters(corpus: Corpus, url: str) -> None:
    tag = "windows_loaders"
    expected = [entry.notification_id for entry in corpus.stream if tag in entry.tags]
    with vt.Client("demo", host=url) as client:
        tagged = page_all(client, {"filter": f"notification_tag:{tag}", "limit": 40})
        hunting = page_all(client, {"filter": "source_type:hunting_ruleset", "limit": 40})
        both = page_all(client, {"filter": f"source_type:hunting_ruleset notification_tag:{tag}"})
        assert page_all(client, {"filter": "notification_tag:no-such-tag"}) == []
    assert ids(tagged) == expected == ids(both)
    assert 0 < len(expected) < len(corpus.stream)
    assert len(hunting) == len(corpus.stream)


def test_descriptors_only(corpus: Corpus, url: str) -> None:
    with vt.Client("demo", host=url) as client:
        for flag in ("true", "True"):
            page = client.get_json("/ioc_stream", params={"descriptors_only": flag, "limit": 3})
            for item in page["data"]:
                assert set(item) == {"type", "id", "context_attributes"}
        full = client.get_json("/ioc_stream", params={"descriptors_only": "false", "limit": 1})
    assert "attributes" in full["data"][0]
    assert page["data"][0]["id"] == corpus.stream[0].object_id


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 41},
        {"limit": 0},
        {"limit": "ten"},
        {"cursor": "garbage!"},
        {"cursor": "Zm9v"},
        {"filter": "entity_type:file"},
        {"filter": "date:yesterday+"},
        {"filter": "date:2026-11-19T00:00:00"},
        {"descriptors_only": "maybe"},
    ],
)
def test_invalid_stream_arguments(url: str, params: dict[str, Any]) -> None:
    with vt.Client("demo", host=url) as client:
        error = api_error(client.get_json, "/ioc_stream", params=params)
    assert error.code == "InvalidArgumentError"


def test_delete_notification_removes_it_from_the_stream(emulator: VirusTotalEmulator) -> None:
    first, second = (entry.notification_id for entry in emulator.corpus.stream[:2])
    with vt.Client("demo", host=emulator.url) as client:
        response = client.delete(f"/ioc_stream_notifications/{first}")
        assert response.status == 200 and response.json() == {}
        remaining = ids(page_all(client, {"limit": 40}))
        assert first not in remaining and second in remaining
        assert len(remaining) == len(emulator.corpus.stream) - 1
        assert client.delete(f"/ioc_stream_notifications/{first}").status == 404
        missing = client.delete("/ioc_stream_notifications/123")
        assert missing.status == 404 and missing.json()["error"]["code"] == "NotFoundError"
    assert emulator.deleted_notifications == {first}


def test_deleting_between_pages_neither_skips_nor_repeats(emulator: VirusTotalEmulator) -> None:
    seen: list[str] = []
    with vt.Client("demo", host=emulator.url) as client:
        params: dict[str, Any] = {"limit": 7}
        while True:
            page = client.get_json("/ioc_stream", params=params)
            for notification_id in ids(page["data"]):
                seen.append(notification_id)
                client.delete(f"/ioc_stream_notifications/{notification_id}")
            if "cursor" not in page["meta"]:
                break
            params["cursor"] = page["meta"]["cursor"]
        assert client.get_json("/ioc_stream")["data"] == []
    assert seen == [entry.notification_id for entry in emulator.corpus.stream]


# -- authentication and privileges ---------------------------------------------------------------


def test_missing_and_wrong_api_keys(url: str) -> None:
    status, body = http("GET", f"{url}/api/v3/ioc_stream")
    assert status == 401 and body["error"]["code"] == "AuthenticationRequiredError"
    with vt.Client("not-a-key", host=url) as client:
        assert api_error(client.get_json, "/ioc_stream").code == "WrongCredentialsError"
        assert api_error(client.get_object, "/files/" + "0" * 64).code == "WrongCredentialsError"


def test_public_key_is_refused_premium_endpoints(corpus: Corpus, url: str) -> None:
    sha256 = next(iter(corpus.files))
    ruleset = next(iter(corpus.hunting_rulesets))
    with vt.Client("public", host=url) as client:
        errors = [
            api_error(client.get_json, "/ioc_stream"),
            api_error(client.download_file, sha256, io.BytesIO()),
            api_error(client.get_object, f"/intelligence/hunting_rulesets/{ruleset}"),
        ]
        assert client.delete("/ioc_stream_notifications/1").status == 403
        assert client.get_object(f"/files/{sha256}").id == sha256  # lookups are not premium
    for error in errors:
        assert error.code == "ForbiddenError" and "premium" in error.message


# -- files, samples and rulesets -----------------------------------------------------------------


def test_downloads_hash_to_the_advertised_hashes(corpus: Corpus, url: str) -> None:
    by_size = sorted(corpus.files, key=lambda sha: corpus.sample_size(sha) or 0)
    chosen = [by_size[0], by_size[len(by_size) // 2], by_size[-8], by_size[-1]]
    assert corpus.sample_size(by_size[-1]) > 50 << 20
    with vt.Client("demo", host=url) as client:
        for position, sha256 in enumerate(chosen):
            attrs = client.get_object(f"/files/{sha256}").to_dict()["attributes"]
            key = (attrs["sha256"], attrs["md5"], attrs["sha1"].upper())[position % 3]
            buffer = io.BytesIO()
            client.download_file(key, buffer)
            data = buffer.getvalue()
            assert len(data) == attrs["size"]
            assert hashlib.sha256(data).hexdigest() == attrs["sha256"]
            assert hashlib.md5(data).hexdigest() == attrs["md5"]
            assert hashlib.sha1(data).hexdigest() == attrs["sha1"]


def test_file_lookups_by_any_hash_and_errors(corpus: Corpus, url: str) -> None:
    sha256 = next(iter(corpus.files))
    attrs = corpus.files[sha256]["attributes"]
    with vt.Client("demo", host=url) as client:
        for key in (sha256, attrs["md5"], attrs["sha1"]):
            assert client.get_json(f"/files/{key}")["data"] == corpus.files[sha256]
        assert api_error(client.get_object, "/files/" + "f" * 64).code == "NotFoundError"
        assert api_error(client.get_object, "/files/not-a-hash").code == "InvalidArgumentError"
        assert api_error(client.get_json, "/no/such/endpoint").code == "NotFoundError"


def test_rulesets_parse_and_contain_each_notification_rule(corpus: Corpus, url: str) -> None:
    rules_of: dict[str, set[str]] = {}
    with vt.Client("demo", host=url) as client:
        for ruleset_id in {entry.context["sources"][0]["id"] for entry in corpus.stream}:
            ruleset = client.get_object(f"/intelligence/hunting_rulesets/{ruleset_id}")
            parsed = plyara.Plyara().parse_string(ruleset.rules)
            rules_of[ruleset_id] = {rule["rule_name"] for rule in parsed}
            assert ruleset.number_of_rules == len(parsed) and ruleset.enabled
        for yara_id in corpus.yara_rulesets:
            yara = client.get_object(f"/yara_rulesets/{yara_id}")
            assert plyara.Plyara().parse_string(yara.rules) and yara.source.startswith("https://")
        assert api_error(client.get_object, "/yara_rulesets/nope").code == "NotFoundError"
    stale = [
        entry
        for entry in corpus.stream
        if entry.context["hunting_info"]["rule_name"]
        not in rules_of[entry.context["sources"][0]["id"]]
    ]
    assert len(stale) == 4  # the deliberate 1%: rules since edited out of their ruleset


# -- enrichment lookups, submissions, quotas report ---------------------------------------------


def test_network_lookups(corpus: Corpus, url: str) -> None:
    domain = next(iter(corpus.domains))
    address = next(iter(corpus.ip_addresses))
    url_object = next(iter(corpus.urls.values()))
    with vt.Client("demo", host=url) as client:
        assert client.get_json(f"/domains/{domain}")["data"] == corpus.domains[domain]
        assert client.get_json(f"/ip_addresses/{address}")["data"] == corpus.ip_addresses[address]
        by_base64 = client.get_object(f"/urls/{vt.url_id(url_object['attributes']['url'])}")
        by_sha256 = client.get_object(f"/urls/{url_object['id']}")
        assert by_base64.id == by_sha256.id == url_object["id"]
        resolutions = list(client.iterator(f"/domains/{domain}/resolutions", batch_size=1))
        expected = [(r["id"], r["attributes"]) for r in corpus.resolutions[domain]]
        assert [(r.id, r.to_dict()["attributes"]) for r in resolutions] == expected
        invalid_ip = api_error(client.get_object, "/ip_addresses/999.1.1.1")
        assert invalid_ip.code == "InvalidArgumentError"
        assert api_error(client.get_object, "/domains/unknown.example").code == "NotFoundError"
        assert api_error(client.get_object, "/urls/aHR0cDovL25vcGUv").code == "NotFoundError"


def test_file_and_url_submissions_complete_after_polls(emulator: VirusTotalEmulator) -> None:
    content = b"MZ" + b"synthetic upload " * 100
    sha256 = hashlib.sha256(content).hexdigest()
    submitted = "http://new-phish.example/login.php"
    with vt.Client("demo", host=emulator.url) as client:
        assert api_error(client.get_object, f"/files/{sha256}").code == "NotFoundError"
        analysis = client.scan_file(io.BytesIO(content))
        statuses = [client.get_object(f"/analyses/{analysis.id}").status for _ in range(4)]
        assert statuses == ["queued", "in-progress", "completed", "completed"]
        meta = client.get_json(f"/analyses/{analysis.id}")["meta"]["file_info"]
        assert meta["sha256"] == sha256 and meta["size"] == len(content)
        uploaded = client.get_object(f"/files/{hashlib.md5(content).hexdigest()}")
        assert uploaded.id == sha256 and uploaded.type_description == "Win32 EXE"
        url_analysis = client.scan_url(submitted)
        assert api_error(client.get_object, f"/urls/{vt.url_id(submitted)}").code == "NotFoundError"
        for _ in range(3):
            client.get_object(f"/analyses/{url_analysis.id}")
        assert client.get_object(f"/urls/{vt.url_id(submitted)}").url == submitted


def test_direct_upload_is_limited_to_32_mib(emulator: VirusTotalEmulator) -> None:
    async def post(size: int) -> tuple[int, dict]:
        form = aiohttp.FormData()
        form.add_field("file", b"\0" * size, filename="big.bin")
        async with (
            aiohttp.ClientSession(headers={"x-apikey": "demo"}) as session,
            session.post(f"{emulator.url}/api/v3/files", data=form) as response,
        ):
            return response.status, await response.json()

    assert asyncio.run(post(1024))[0] == 200
    status, body = asyncio.run(post((32 << 20) + 1))
    assert status == 413 and body["error"]["code"] == "RequestEntityTooLargeError"


def test_overall_quotas(emulator: VirusTotalEmulator) -> None:
    with vt.Client("demo", host=emulator.url) as client:
        client.get_json("/ioc_stream")
        quotas = client.get_data("/users/demo/overall_quotas")
        assert quotas["api_requests_daily"]["user"]["used"] == 1
        assert api_error(client.get_json, "/users/public/overall_quotas").code == "ForbiddenError"
        assert api_error(client.get_json, "/users/nobody/overall_quotas").code == "NotFoundError"


# -- faults, latency, quotas, statistics --------------------------------------------------------


STATUS_FAULTS = [("429", "QuotaExceededError"), ("500", "ServerError"), ("503", "ServerError")]


@pytest.mark.parametrize(("kind", "code"), STATUS_FAULTS)
def test_status_faults_reach_the_client(emulator: VirusTotalEmulator, kind: str, code: str) -> None:
    emulator.set_faults(f"ioc_stream:{kind}:1")
    with vt.Client("demo", host=emulator.url) as client:
        assert api_error(client.get_json, "/ioc_stream").code == code
        assert client.get_object(f"/files/{emulator.corpus.stream[0].object_id}")
    assert emulator.count("ioc_stream", int(kind)) == 1


def test_truncated_and_malformed_bodies(emulator: VirusTotalEmulator) -> None:
    sha256 = next(iter(emulator.corpus.files))
    with vt.Client("demo", host=emulator.url) as client:
        emulator.set_faults("file:truncated:1")
        with pytest.raises(aiohttp.ClientPayloadError):
            client.get_object(f"/files/{sha256}")
        emulator.set_faults("file_download:truncated:1")
        with pytest.raises(aiohttp.ClientPayloadError):
            client.download_file(sha256, io.BytesIO())
        emulator.set_faults("ioc_stream:malformed:1")
        with pytest.raises(json.JSONDecodeError):
            client.get_json("/ioc_stream")
        emulator.set_faults("sample:malformed:1")
        buffer = io.BytesIO()
        client.download_file(sha256, buffer)
        assert len(buffer.getvalue()) == emulator.corpus.sample_size(sha256)
        assert hashlib.sha256(buffer.getvalue()).hexdigest() != sha256


def test_timeout_fault_answers_504_after_holding(emulator: VirusTotalEmulator) -> None:
    emulator.api.fault_timeout_seconds = 0.3
    emulator.set_faults("file:timeout:1")
    with vt.Client("demo", host=emulator.url) as client:
        began = time.perf_counter()
        error = api_error(client.get_object, f"/files/{'0' * 64}")
        assert time.perf_counter() - began >= 0.25
    assert error.code == "ServerError" and "DeadlineExceededError" in error.message


def test_client_timeout_on_held_request_and_fast_stop() -> None:
    emulator = VirusTotalEmulator(generate_corpus(3, 20, START, END), faults="*:timeout:1")
    url = emulator.start()

    async def call() -> None:
        async with vt.Client("demo", host=url, timeout=0.3) as client:
            await client.get_json_async("/ioc_stream")

    with pytest.raises(TimeoutError):
        asyncio.run(call())
    began = time.perf_counter()
    emulator.stop()
    assert time.perf_counter() - began < 3


def test_fault_counts_wildcards_and_reproducibility(emulator: VirusTotalEmulator) -> None:
    sha256 = next(iter(emulator.corpus.files))

    def outcomes(spec: str, calls: int) -> list[str]:
        emulator.set_faults(spec, seed=4)
        results = []
        with vt.Client("demo", host=emulator.url) as client:
            for _ in range(calls):
                try:
                    client.get_object(f"/files/{sha256}")
                    results.append("ok")
                except vt.APIError as err:
                    results.append(err.code)
        return results

    assert outcomes("file:503:1:2", 4) == ["ServerError", "ServerError", "ok", "ok"]
    assert outcomes("*:429:1:1", 2) == ["QuotaExceededError", "ok"]
    assert outcomes("domain:503:1", 2) == ["ok", "ok"]
    mixed = outcomes("file:503:0.5", 20)
    assert mixed == outcomes("file:503:0.5", 20)
    assert 0 < mixed.count("ok") < 20


def test_http_controls(emulator: VirusTotalEmulator) -> None:
    base = emulator.url
    assert http("POST", f"{base}/_emulator/faults", {"spec": "ioc_stream:503:1"})[0] == 200
    assert http("POST", f"{base}/_emulator/faults", {"spec": "bogus:503:1"})[0] == 400
    assert http("POST", f"{base}/_emulator/latency", {"ms": 5})[0] == 200
    assert http("GET", f"{base}/api/v3/ioc_stream", key="demo")[0] == 503
    status, stats = http("GET", f"{base}/_emulator/stats")
    assert status == 200 and stats == {"requests": emulator.stats()}
    assert stats["requests"]["ioc_stream"] == {"503": 1}
    assert http("DELETE", f"{base}/_emulator/stats")[0] == 200
    assert emulator.stats() == {}


def test_stats_count_requests_by_endpoint_and_status(emulator: VirusTotalEmulator) -> None:
    sha256 = next(iter(emulator.corpus.files))
    with vt.Client("demo", host=emulator.url) as client:
        client.get_json("/ioc_stream")
        client.get_object(f"/files/{sha256}")
        client.download_file(sha256, io.BytesIO())
        api_error(client.get_object, "/files/" + "e" * 64)
    with vt.Client("public", host=emulator.url) as client:
        api_error(client.get_json, "/ioc_stream")
    assert emulator.stats() == {
        "ioc_stream": {"200": 1, "403": 1},
        "file": {"200": 1, "404": 1},
        "file_download": {"302": 1},
        "sample": {"200": 1},
    }
    assert emulator.count("file") == 2 and emulator.count("file", 404) == 1
    emulator.reset_stats()
    assert emulator.stats() == {}


def test_endpoints_it_does_not_implement_are_counted_and_cost_quota() -> None:
    """A client calling what the emulator lacks must not look cheaper than on VirusTotal."""
    emulator = VirusTotalEmulator(generate_corpus(3, 60, START, END), quota_per_minute=3)
    sha256 = next(iter(emulator.corpus.files))
    with emulator.serve(), vt.Client("demo", host=emulator.url) as client:
        for path in ("/intelligence/search", "/monitor/items/x"):
            error = api_error(client.get_json, path)
            assert error.code == "NotFoundError" and "not implemented" in error.message
        assert client.post("/graphs").status == 404
        # Those three were spent: VirusTotal would have counted them against the key too.
        assert api_error(client.get_object, f"/files/{sha256}").code == "QuotaExceededError"
        status, _ = http("GET", f"{emulator.url}/api/v2/file/report")  # no key: 401, counted
        assert status == 401
        assert emulator.stats() == {"not_implemented": {"404": 3, "401": 1}, "file": {"429": 1}}
        assert http("GET", f"{emulator.url}/_emulator/stats")[1] == {"requests": emulator.stats()}
    paths = [entry.get("path") for entry in emulator.requests()]
    assert paths == [
        "/api/v3/intelligence/search",
        "/api/v3/monitor/items/x",
        "/api/v3/graphs",
        None,  # refused before the handler: no detail, but counted
        None,
    ]


def test_latency_applies_per_request_and_overlaps() -> None:
    corpus = generate_corpus(3, 20, START, END)
    sha256 = next(iter(corpus.files))

    async def five_concurrent(url: str) -> float:
        async with vt.Client("demo", host=url) as client:
            began = time.perf_counter()
            await asyncio.gather(*(client.get_object_async(f"/files/{sha256}") for _ in range(5)))
            return time.perf_counter() - began

    with VirusTotalEmulator(corpus, latency_ms=200).serve() as url:
        elapsed = asyncio.run(five_concurrent(url))
    assert 0.2 <= elapsed < 0.8


def test_quotas_per_minute_and_per_day_with_an_injected_clock() -> None:
    now = [datetime(2026, 11, 20, 23, 58, 10, tzinfo=UTC).timestamp()]
    emulator = VirusTotalEmulator(
        generate_corpus(3, 20, START, END),
        api_keys=KEYS,
        quota_per_minute=3,
        quota_per_day=5,
        clock=lambda: now[0],
    )
    sha256 = next(iter(emulator.corpus.files))

    def attempt(key: str = "demo") -> str:
        with vt.Client(key, host=emulator.url) as client:
            try:
                client.get_object(f"/files/{sha256}")
            except vt.APIError as err:
                return err.code
        return "ok"

    with emulator.serve():
        assert [attempt() for _ in range(4)] == ["ok", "ok", "ok", "QuotaExceededError"]
        assert attempt("public") == "ok"  # quotas are per key
        now[0] += 60
        assert [attempt() for _ in range(3)] == ["ok", "ok", "QuotaExceededError"]  # 5 a day
        now[0] += 120  # 00:01 UTC the next day
        assert attempt() == "ok"
        with vt.Client("demo", host=emulator.url) as client:
            quotas = client.get_data("/users/demo/overall_quotas")
    assert quotas["api_requests_daily"]["user"] == {"allowed": 5, "used": 1}
    assert quotas["api_requests_hourly"]["user"]["allowed"] == 5
    assert emulator.count("file", 429) == 2


def test_several_emulators_start_and_stop_quickly() -> None:
    corpus = generate_corpus(3, 20, START, END)
    began = time.perf_counter()
    emulators = [VirusTotalEmulator(corpus) for _ in range(4)]
    urls = [emulator.start() for emulator in emulators]
    assert len(set(urls)) == 4
    for emulator in emulators:
        emulator.stop()
    assert time.perf_counter() - began < 3
    with pytest.raises(RuntimeError):
        _ = emulators[0].url
