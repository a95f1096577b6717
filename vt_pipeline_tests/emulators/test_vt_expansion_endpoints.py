"""The VT emulator's endpoints for the enrichment expansions, driven by vt-py: ATT&CK trees,
Sigma rules, comments, re-analysis, GTI associations, and the Sigma/IDS attributes of files."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import vt

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.keys import ApiKey
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline_tests.fixtures.vt_reports import REAL_FILE, REAL_REPORTS, serve_reports

pytestmark = pytest.mark.integration

GTI_KEY, VT_KEY = "gti-key", "vt-only-key"


@pytest.fixture
def emulator(vt_corpus: Corpus) -> Iterator[VirusTotalEmulator]:
    emulator = VirusTotalEmulator(
        vt_corpus, api_keys={GTI_KEY: True, VT_KEY: ApiKey(premium=True, gti=False)}
    )
    with emulator.serve():
        yield emulator


@pytest.fixture
def client(emulator: VirusTotalEmulator) -> Iterator[vt.Client]:
    with vt.Client(GTI_KEY, host=emulator.url) as client:
        yield client


def _files_with(corpus: Corpus, attribute: str) -> list[str]:
    return [k for k, o in sorted(corpus.files.items()) if o["attributes"].get(attribute)]


def test_sigma_and_ids_results_have_vt_s_shapes_and_their_rules_are_served(
    vt_corpus: Corpus, client: vt.Client
) -> None:
    sigma_files = _files_with(vt_corpus, "sigma_analysis_results")
    ids_files = _files_with(vt_corpus, "crowdsourced_ids_results")
    assert len(sigma_files) > 10 and len(ids_files) > 10
    attrs = vt_corpus.files[sigma_files[0]]["attributes"]
    result = attrs["sigma_analysis_results"][0]
    assert set(result) == {
        "rule_id",
        "rule_title",
        "rule_level",
        "rule_source",
        "rule_author",
        "rule_description",
        "match_context",
    }
    assert sum(attrs["sigma_analysis_stats"].values()) == len(attrs["sigma_analysis_results"])
    rule = client.get_json(f"/sigma_rules/{result['rule_id']}")["data"]
    assert rule["type"] == "sigma_rule" and rule["attributes"]["title"] == result["rule_title"]
    assert rule["attributes"]["detection"]["condition"] == "selection"
    ids = vt_corpus.files[ids_files[0]]["attributes"]["crowdsourced_ids_results"][0]
    assert ids["rule_raw"].startswith("alert ") and f"sid:{ids['rule_id'][2:]};" in ids["rule_raw"]
    with pytest.raises(vt.APIError) as missing:
        client.get_json(f"/sigma_rules/{'0' * 64}")
    assert missing.value.code == "NotFoundError"


def test_mitre_trees_list_techniques_per_sandbox_and_an_unknown_file_is_a_404(
    vt_corpus: Corpus, client: vt.Client
) -> None:
    detected = [
        k
        for k, o in sorted(vt_corpus.files.items())
        if o["attributes"]["last_analysis_stats"]["malicious"] > 0
    ]
    body = client.get_json(f"/files/{detected[0]}/behaviour_mitre_trees")
    assert body["links"]["self"].endswith(f"/files/{detected[0]}/behaviour_mitre_trees")
    sandboxes = [tree for tree in body["data"].values() if tree["tactics"]]
    technique = sandboxes[0]["tactics"][0]["techniques"][0]
    assert technique["id"].startswith("T") and technique["link"].startswith("https://attack")
    assert technique["signatures"][0]["severity"] in {"HIGH", "MEDIUM", "LOW", "INFO"}
    clean = next(
        k
        for k, o in sorted(vt_corpus.files.items())
        if o["attributes"]["last_analysis_stats"]["malicious"] == 0
    )
    assert client.get_json(f"/files/{clean}/behaviour_mitre_trees")["data"] == {}
    with pytest.raises(vt.APIError) as unknown:
        client.get_json(f"/files/{'a' * 64}/behaviour_mitre_trees")
    assert unknown.value.code == "NotFoundError"


def test_comments_are_newest_first_and_paged(vt_corpus: Corpus, client: vt.Client) -> None:
    commented = next(
        k
        for k in sorted(vt_corpus.files)
        if client.get_json(f"/files/{k}/comments", params={"limit": 40})["meta"]["count"] > 3
    )
    first = client.get_json(f"/files/{commented}/comments", params={"limit": 2})
    assert len(first["data"]) == 2 and "cursor" in first["meta"]
    second = client.get_json(
        f"/files/{commented}/comments", params={"limit": 2, "cursor": first["meta"]["cursor"]}
    )
    dates = [c["attributes"]["date"] for c in first["data"] + second["data"]]
    assert dates == sorted(dates, reverse=True)
    assert first["data"][0]["id"].startswith(f"f-{commented}-")
    domain = sorted(vt_corpus.domains)[0]
    assert "data" in client.get_json(f"/domains/{domain}/comments")


def test_a_file_re_analysed_is_served_with_the_new_analysis_date(
    vt_corpus: Corpus, emulator: VirusTotalEmulator, client: vt.Client
) -> None:
    emulator.api.set_analysis_time(polls=1)
    target = vt_corpus.targets().old_file
    before = client.get_json(f"/files/{target}")["data"]["attributes"]
    answer = client.post(f"/files/{target}/analyse").json()["data"]
    assert answer["type"] == "analysis"
    md5, when = base64.urlsafe_b64decode(answer["id"]).decode().split(":")
    assert md5 == before["md5"]
    statuses = [
        client.get_json(f"/analyses/{answer['id']}")["data"]["attributes"]["status"]
        for _ in range(2)
    ]
    assert statuses == ["queued", "completed"]
    after = client.get_json(f"/files/{target}")["data"]["attributes"]
    assert after["last_analysis_date"] == int(when) > before["last_analysis_date"]
    assert after["first_submission_date"] == before["first_submission_date"]
    assert after["times_submitted"] == before["times_submitted"] + 1


def test_gti_associations_need_the_licence(
    vt_corpus: Corpus, emulator: VirusTotalEmulator, client: vt.Client
) -> None:
    associated = next(
        k for k in sorted(vt_corpus.files) if client.get_json(f"/files/{k}/associations")["data"]
    )
    objects = client.get_json(f"/files/{associated}/associations")["data"]
    kinds = {o["attributes"]["collection_type"] for o in objects}
    assert {"threat-actor", "malware-family"} <= kinds
    actor = next(o for o in objects if o["attributes"]["collection_type"] == "threat-actor")
    assert actor["id"].startswith("threat-actor--")
    assert client.get_json(f"/collections/{actor['id']}")["data"] == actor
    with (
        vt.Client(VT_KEY, host=emulator.url) as unlicensed,
        pytest.raises(vt.APIError) as refused,
    ):
        unlicensed.get_json(f"/files/{associated}/associations")
    assert refused.value.code == "ForbiddenError"


def test_a_captured_corpus_gets_no_invented_expansions() -> None:
    with serve_reports(REAL_REPORTS) as emulator, vt.Client("demo", host=emulator.url) as client:
        assert client.get_json(f"/files/{REAL_FILE}/behaviour_mitre_trees")["data"] == {}
        assert client.get_json(f"/files/{REAL_FILE}/comments")["data"] == []
        assert client.get_json(f"/files/{REAL_FILE}/associations")["data"] == []


def test_a_second_re_analysis_replaces_the_first(vt_corpus: Corpus) -> None:
    now = [2_000_000_000.0]
    emulator = VirusTotalEmulator(vt_corpus, api_keys={GTI_KEY: True}, clock=lambda: now[0])
    emulator.api.set_analysis_time(polls=0)
    target = vt_corpus.targets().old_file
    with emulator.serve(), vt.Client(GTI_KEY, host=emulator.url) as client:
        dates = []
        for _ in range(2):
            analysis = client.post(f"/files/{target}/analyse").json()["data"]["id"]
            assert client.get_json(f"/analyses/{analysis}")["data"]["attributes"]["status"] == (
                "completed"
            )
            dates.append(client.get_json(f"/files/{target}")["data"]["attributes"])
            now[0] += 86400
        assert dates[1]["last_analysis_date"] == dates[0]["last_analysis_date"] + 86400
        assert dates[1]["times_submitted"] == dates[0]["times_submitted"] + 1
