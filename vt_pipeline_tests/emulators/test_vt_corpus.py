"""The synthetic VirusTotal corpus: determinism, realism, rulesets, samples and fixtures."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import plyara
import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus, generate_corpus
from vt_pipeline.emulators.virustotal.fixtures import dump_fixtures, load_fixtures
from vt_pipeline.emulators.virustotal.objects import (
    FILE_STATS,
    HOSTILE_NAMES,
    NETWORK_STATS,
    is_analysed,
)

END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(hours=24)
MIB = 1 << 20


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate_corpus(11, 1000, START, END)


def corpus_json(corpus: Corpus, sort_keys: bool = False) -> str:
    """Everything a corpus serves except sample bytes, as one JSON document."""
    return json.dumps(
        {
            "notifications": list(corpus.notifications),
            "files": dict(corpus.files),
            "urls": dict(corpus.urls),
            "domains": dict(corpus.domains),
            "ip_addresses": dict(corpus.ip_addresses),
            "resolutions": dict(corpus.resolutions),
            "hunting_rulesets": dict(corpus.hunting_rulesets),
            "yara_rulesets": dict(corpus.yara_rulesets),
            "sample_sizes": {sha: corpus.sample_size(sha) for sha in corpus.files},
        },
        sort_keys=sort_keys,
    )


def sample_digest(corpus: Corpus, sha256: str, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    for chunk in corpus.sample_chunks(sha256):
        digest.update(chunk)
    return digest.hexdigest()


def test_same_seed_gives_identical_json_and_another_seed_differs() -> None:
    first = corpus_json(generate_corpus(5, 150, START, END))
    assert first == corpus_json(generate_corpus(5, 150, START, END))
    assert first != corpus_json(generate_corpus(6, 150, START, END))
    assert first != corpus_json(generate_corpus(5, 150, START, END + timedelta(hours=1)))


def test_ten_thousand_notifications_generate_quickly() -> None:
    began = time.perf_counter()
    large = generate_corpus(2, 10_000, START, END)
    elapsed = time.perf_counter() - began
    assert len(large.stream) == 10_000
    assert elapsed < 15, f"generation took {elapsed:.1f}s"


def test_notifications_are_unique_in_range_and_newest_first(corpus: Corpus) -> None:
    ids = [entry.notification_id for entry in corpus.stream]
    dates = [entry.date for entry in corpus.stream]
    assert len(set(ids)) == len(ids) == 1000
    assert all(START.timestamp() <= date < END.timestamp() for date in dates)
    assert dates == sorted(dates, reverse=True)


def test_notification_mix_and_repeated_files(corpus: Corpus) -> None:
    kinds = Counter(entry.object_type for entry in corpus.stream)
    assert 0.80 <= kinds["file"] / 1000 <= 0.90
    assert kinds["url"] and kinds["domain"] and kinds["ip_address"]
    ips = [entry.object_id for entry in corpus.stream if entry.object_type == "ip_address"]
    assert any(":" in ip for ip in ips) and any("." in ip for ip in ips)
    per_file = Counter(entry.object_id for entry in corpus.stream if entry.object_type == "file")
    repeated = [sha for sha, count in per_file.items() if count > 1]
    assert repeated
    for sha in repeated:
        rules = [
            entry.context["hunting_info"]["rule_name"]
            for entry in corpus.stream
            if entry.object_id == sha
        ]
        assert len(set(rules)) == len(rules)


def test_notification_items_have_the_api_shape(corpus: Corpus) -> None:
    for item in corpus.notifications[:50]:
        assert set(item) >= {"type", "id", "links", "attributes", "context_attributes"}
        context = item["context_attributes"]
        assert context["origin"] == "hunting"
        assert isinstance(context["notification_date"], int)
        assert context["sources"][0]["type"] == "hunting_ruleset"
        assert context["sources"][0]["id"] in corpus.hunting_rulesets
        hunting_info = set(context["hunting_info"])
        assert hunting_info == {"rule_name", "snippet", "source_country", "source_key"}


def test_file_sizes_types_and_dates_vary(corpus: Corpus) -> None:
    sizes = [corpus.sample_size(sha) for sha in corpus.files]
    assert all(size is not None for size in sizes)
    tiny = sum(size < 1000 for size in sizes) / len(sizes)
    assert 0.05 <= tiny <= 0.15
    assert any(size > 50 * MIB for size in sizes)
    assert any(MIB <= size < 50 * MIB for size in sizes)
    files = [corpus.files[sha]["attributes"] for sha in corpus.files]
    assert {attrs.get("type_extension") for attrs in files} >= {"exe", "dll", "doc", "pdf", None}
    assert any("type_extension" not in attrs for attrs in files)
    assert any(attrs["last_analysis_stats"]["malicious"] == 0 for attrs in files)
    assert any(attrs.get("first_submission_date", 0) is None for attrs in files)
    assert any("first_submission_date" not in attrs for attrs in files)
    assert any("malware_config" in attrs for attrs in files)
    assert any("crowdsourced_yara_results" in attrs for attrs in files)
    for attrs in files:
        assert attrs["size"] == corpus.sample_size(attrs["sha256"])
        stats = attrs["last_analysis_stats"]
        assert sum(stats.values()) == len(attrs["last_analysis_results"])
        assert len(attrs["last_analysis_results"]) >= 20 or not any(stats.values())


def test_submission_ages_span_minutes_to_years(corpus: Corpus) -> None:
    ages = []
    for entry in corpus.stream:
        if entry.object_type == "file":
            first = corpus.files[entry.object_id]["attributes"].get("first_submission_date")
            if first is not None:
                ages.append(entry.date - first)
    assert min(ages) < 3600
    assert any(86400 <= age <= 3 * 86400 for age in ages)
    assert any(7 * 86400 <= age < 60 * 86400 for age in ages)
    assert max(ages) > 365 * 86400


def days_before_end(timestamp: int) -> float:
    return (END.timestamp() - timestamp) / 86400


def test_most_reports_are_old_and_their_dates_agree(corpus: Corpus) -> None:
    """A report is what VirusTotal last did with an object, often years ago; only the
    notifications (when VT matched) are in the corpus's range."""
    analysed = [o["attributes"] for o in corpus.files.values() if is_analysed(o)]
    ages = [days_before_end(attrs["last_analysis_date"]) for attrs in analysed]
    assert 0.25 < sum(age < 3 for age in ages) / len(ages) < 0.6
    assert sum(age > 30 for age in ages) / len(ages) > 0.4
    assert sum(age > 365 for age in ages) / len(ages) > 0.1 and max(ages) > 5 * 365
    first_seen = {}
    for entry in corpus.stream:
        first_seen.setdefault(entry.object_id, entry.date)  # newest first: ends on the oldest
        first_seen[entry.object_id] = min(first_seen[entry.object_id], entry.date)
    for sha256, obj in corpus.files.items():
        attrs = obj["attributes"]
        first = attrs.get("first_submission_date") or attrs["last_submission_date"]
        last = attrs.get("last_analysis_date", attrs["last_submission_date"])
        assert first <= attrs["last_submission_date"] <= attrs["last_modification_date"]
        assert last <= attrs["last_modification_date"] <= first_seen[sha256]
        assert attrs.get("creation_date", first) <= first
    for collection in (corpus.urls, corpus.domains, corpus.ip_addresses):
        dates = [o["attributes"].get("last_analysis_date") for o in collection.values()]
        assert max(days_before_end(d) for d in dates if d) > 365
        for obj in collection.values():
            attrs = obj["attributes"]
            report = attrs.get("last_analysis_date", attrs["last_modification_date"])
            assert report <= attrs["last_modification_date"] <= END.timestamp()
    # as in VirusTotal's own IPv4 and domain reports, some have no analysis date at all
    for collection in (corpus.domains, corpus.ip_addresses):
        assert any("last_analysis_date" not in o["attributes"] for o in collection.values())


def test_some_reports_have_no_analysis_yet(corpus: Corpus) -> None:
    """Just submitted: no analysis date, no engine results, every count 0 (a queued analysis)."""
    files = [o for o in corpus.files.values() if not is_analysed(o)]
    urls = [o for o in corpus.urls.values() if not is_analysed(o)]
    assert len(files) == round(0.03 * len(corpus.files))
    assert len(urls) == max(1, round(0.05 * len(corpus.urls)))
    for obj, stats in [*((f, FILE_STATS) for f in files), *((u, NETWORK_STATS) for u in urls)]:
        attrs = obj["attributes"]
        assert "last_analysis_date" not in attrs and attrs["last_analysis_results"] == {}
        assert attrs["last_analysis_stats"] == dict.fromkeys(stats, 0)
        assert attrs["first_submission_date"] == attrs["last_submission_date"]
        assert attrs["times_submitted"] == 1 and "popular_threat_classification" not in attrs
    notified = {e.object_id: e.date for e in corpus.stream}
    for obj in files:
        assert 0 < notified[obj["id"]] - obj["attributes"]["last_submission_date"] <= 3600
    small = generate_corpus(8, 20, START, END)  # every corpus has one of each to test with
    assert [o for o in small.files.values() if not is_analysed(o)]
    assert [o for o in small.urls.values() if not is_analysed(o)]


def test_fields_take_the_shapes_of_virustotal_s_own_reports(corpus: Corpus) -> None:
    """Shapes seen in the captured reports of vt_pipeline_tests/fixtures/vt_real_reports."""
    engines = [
        result
        for obj in corpus.files.values()
        for result in obj["attributes"]["last_analysis_results"].values()
    ]
    timeouts = [e for e in engines if e["category"] == "confirmed-timeout"]
    assert timeouts and all(e["engine_version"] is None for e in timeouts)
    assert all(e["engine_version"] for e in engines if e["category"] != "confirmed-timeout")
    urls = [o["attributes"] for o in corpus.urls.values() if is_analysed(o)]
    assert all(len(a["last_http_response_content_sha256"]) == 64 for a in urls)
    assert any(a["threat_names"] for a in urls) and any(not a["has_content"] for a in urls)
    records = [r for o in corpus.domains.values() for r in o["attributes"]["last_dns_records"]]
    assert {"A", "NS", "SOA"} == {r["type"] for r in records}
    network = [*corpus.domains.values(), *corpus.ip_addresses.values()]
    counted = [
        sum(o["attributes"]["last_analysis_stats"].values())
        - len(o["attributes"]["last_analysis_results"])
        for o in network
    ]
    assert set(counted) == {0, 1} and 0.02 < counted.count(1) / len(counted) < 0.25
    assert all(
        o["attributes"]["whois_date"] <= o["attributes"]["last_modification_date"] for o in network
    )


def test_hostile_values_are_sprinkled(corpus: Corpus) -> None:
    files = [corpus.files[sha]["attributes"] for sha in corpus.files]
    hostile = [attrs for attrs in files if set(attrs["names"]) & set(HOSTILE_NAMES)]
    assert 0 < len(hostile) <= 0.06 * len(files)
    names = {name for attrs in hostile for name in attrs["names"]}
    assert any(len(name) >= 5000 for name in names)
    assert any("\u202e" in name for name in names)
    assert not any("\x00" in name for name in names)
    subjects = [
        corpus.notification(entry)["attributes"].get("url", entry.object_id)
        for entry in corpus.stream
        if entry.object_type in ("url", "domain")
    ]
    assert any(any(c.isspace() for c in subject) for subject in subjects)


def test_samples_hash_to_their_attributes(corpus: Corpus) -> None:
    by_size = sorted(corpus.files, key=lambda sha: corpus.sample_size(sha) or 0)
    for sha in [*by_size[:3], *by_size[len(by_size) // 2 : len(by_size) // 2 + 3], by_size[-1]]:
        attrs = corpus.files[sha]["attributes"]
        assert sample_digest(corpus, sha) == sha
        assert sample_digest(corpus, sha, "md5") == attrs["md5"]
        assert sample_digest(corpus, sha, "sha1") == attrs["sha1"]
        assert corpus.find_file(attrs["md5"]) == corpus.find_file(attrs["sha1"].upper())


def test_rulesets_parse_and_name_each_notification_rule(corpus: Corpus) -> None:
    rules_of = {}
    for ruleset_id, ruleset in corpus.hunting_rulesets.items():
        parsed = plyara.Plyara().parse_string(ruleset["attributes"]["rules"])
        rules_of[ruleset_id] = {rule["rule_name"] for rule in parsed}
        assert 2 <= len(parsed) <= 4
        assert rules_of[ruleset_id] == set(ruleset["attributes"]["rule_names"])
    assert 4 <= len(rules_of) <= 6
    sources = [ruleset["attributes"]["rules"] for ruleset in corpus.hunting_rulesets.values()]
    assert sum('import "vt"' in source for source in sources) == 1
    missing = [
        entry
        for entry in corpus.stream
        if entry.context["hunting_info"]["rule_name"]
        not in rules_of[entry.context["sources"][0]["id"]]
    ]
    assert len(missing) == 10  # 1% of 1,000: quoted rules edited out of their ruleset
    for ruleset in corpus.yara_rulesets.values():
        assert plyara.Plyara().parse_string(ruleset["attributes"]["rules"])


def test_crowdsourced_results_reference_served_rulesets(corpus: Corpus) -> None:
    for sha in list(corpus.files)[:200]:
        for result in corpus.files[sha]["attributes"].get("crowdsourced_yara_results", []):
            ruleset = corpus.yara_rulesets[result["ruleset_id"]]
            assert result["rule_name"] in ruleset["attributes"]["rule_names"]


def test_enrichment_objects_cover_network_subjects_and_c2(corpus: Corpus) -> None:
    for entry in corpus.stream:
        if entry.object_type != "file":
            assert entry.object_id in corpus.objects(entry.object_type)
    hosts = {
        connection["host"]
        for sha in corpus.files
        for family in corpus.files[sha]["attributes"].get("malware_config", {}).get("families", [])
        for config in family["configs"]
        for connection in config["net_info"]["connections"]
    }
    assert hosts
    assert all(host in corpus.domains or host in corpus.ip_addresses for host in hosts)
    domain = next(iter(corpus.domains))
    resolved = {r["attributes"]["ip_address"] for r in corpus.resolutions[domain]}
    records = corpus.domains[domain]["attributes"]["last_dns_records"]
    assert resolved == {record["value"] for record in records if record["type"] == "A"}


def test_fixtures_round_trip(tmp_path: Path) -> None:
    small = generate_corpus(8, 60, START, END)
    dump_fixtures(small, tmp_path)
    assert (tmp_path / "notifications.json").exists()
    loaded = load_fixtures(tmp_path)
    assert corpus_json(loaded, sort_keys=True) == corpus_json(small, sort_keys=True)
    sha = next(iter(small.files))
    assert b"".join(loaded.sample_chunks(sha, 4096)) == b"".join(small.sample_chunks(sha))


def test_fixtures_leave_out_large_samples_and_accept_partial_folders(tmp_path: Path) -> None:
    small = generate_corpus(8, 60, START, END)
    dump_fixtures(small, tmp_path, max_sample_size=2000)
    loaded = load_fixtures(tmp_path)
    for sha in small.files:
        expected = small.sample_size(sha) if (small.sample_size(sha) or 0) <= 2000 else None
        assert loaded.sample_size(sha) == expected
    only_stream = tmp_path / "only"
    only_stream.mkdir()
    (only_stream / "notifications.json").write_text(json.dumps(small.notifications[:3]))
    partial = load_fixtures(only_stream)
    assert list(partial.notifications) == small.notifications[:3]
    assert small.notifications[0]["id"] in partial.objects(small.notifications[0]["type"])
