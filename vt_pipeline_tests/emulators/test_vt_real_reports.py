"""Captured VirusTotal reports through the fixtures path, read back with the real vt-py: served
exactly as captured, and `gti_assessment` only as VirusTotal hands it out (a GTI-licensed key
asking with `x-tool`), never made up."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import vt

from vt_pipeline.emulators.virustotal import server
from vt_pipeline.emulators.virustotal.keys import ApiKey
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline_tests.fixtures.vt_reports import (
    CAPTURED,
    GTI_FILE,
    GTI_REPORTS,
    REAL_DOMAIN,
    REAL_FILE,
    REAL_IPV4,
    REAL_REPORTS,
    REAL_URL,
    REAL_URL_ID,
    captured,
    serve_reports,
)

GTI = {"x-tool": "vt_pipeline"}
KEYS = {"gti": True, "vt-only": ApiKey(premium=True, gti=False), "public": False}
PATHS = {
    ("files", REAL_FILE): f"/files/{REAL_FILE}",
    ("ip_addresses", REAL_IPV4): f"/ip_addresses/{REAL_IPV4}",
    ("domains", REAL_DOMAIN): f"/domains/{REAL_DOMAIN}",
    ("urls", REAL_URL_ID): f"/urls/{REAL_URL_ID}",
    ("files", GTI_FILE): f"/files/{GTI_FILE}",
}
REAL = [key for key in CAPTURED if CAPTURED[key].is_relative_to(REAL_REPORTS)]


@pytest.fixture(scope="module")
def real() -> Iterator[VirusTotalEmulator]:
    with serve_reports(REAL_REPORTS, api_keys=KEYS) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def gti_reports() -> Iterator[VirusTotalEmulator]:
    with serve_reports(GTI_REPORTS, api_keys=KEYS) as emulator:
        yield emulator


def body(client: vt.Client, path: str) -> bytes:
    response = client.get(path)
    assert response.status == 200
    return response.read()


@pytest.mark.parametrize("key", REAL, ids=[collection for collection, _ in REAL])
def test_each_real_report_is_served_byte_for_byte_to_every_key(
    real: VirusTotalEmulator, key: tuple[str, str]
) -> None:
    expected = captured(*key)
    exact = json.dumps({"data": expected}, ensure_ascii=False).encode()
    for api_key in KEYS:
        with vt.Client(api_key, host=real.url, headers=GTI) as client:
            assert body(client, PATHS[key]) == exact
            assert client.get_object(PATHS[key]).to_dict() == {
                k: v for k, v in expected.items() if k != "links"
            }


def test_old_reports_keep_their_dates_and_get_no_made_up_gti(real: VirusTotalEmulator) -> None:
    """The 47/65 file once came back with a GTI score of 100 the emulator had made up."""
    with vt.Client("gti", host=real.url, headers=GTI) as client:
        file = client.get_object(f"/files/{REAL_FILE}")
        assert file.last_analysis_stats["malicious"] == 47
        assert file.last_analysis_stats["undetected"] == 18
        assert file.last_analysis_date == datetime(2021, 11, 9, 6, 48, 26, tzinfo=UTC)
        assert file.last_submission_date.year == 2020 and file.first_submission_date.year == 2018
        url_b64 = base64.urlsafe_b64encode(REAL_URL.encode()).decode().rstrip("=")
        url = client.get_object(f"/urls/{url_b64}")
        assert url.id == REAL_URL_ID and url.url == REAL_URL
        assert url.last_analysis_date.year == 2022
        ip = client.get_object(f"/ip_addresses/{REAL_IPV4}")
        domain = client.get_object(f"/domains/{REAL_DOMAIN}")
        for report in (ip, domain):  # VirusTotal sent neither an analysis date
            assert "last_analysis_date" not in report.to_dict()["attributes"]
            assert report.last_modification_date < datetime(2023, 1, 1, tzinfo=UTC)
        for report in (file, url, ip, domain):
            assert "gti_assessment" not in report.to_dict()["attributes"]


def test_a_captured_gti_assessment_goes_only_to_a_gti_key_asking(
    gti_reports: VirusTotalEmulator,
) -> None:
    expected = captured("files", GTI_FILE)
    assert expected["attributes"]["gti_assessment"]["threat_score"] == {"value": 100}
    assert expected["attributes"]["last_analysis_stats"]["malicious"] == 0
    without = {**expected, "attributes": dict(expected["attributes"])}
    del without["attributes"]["gti_assessment"]
    path = PATHS["files", GTI_FILE]
    served = {}
    for api_key in KEYS:
        for headers in ({}, GTI):
            with vt.Client(api_key, host=gti_reports.url, headers=headers) as client:
                served[api_key, bool(headers)] = json.loads(body(client, path))["data"]
    assert served.pop(("gti", True)) == expected  # as captured, score 100 and all
    assert all(data == without for data in served.values())


def test_the_command_line_serves_fixtures_with_or_without_gti() -> None:
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    for flags, licensed in (([], True), (["--no-gti"], False)):
        args = parser.parse_args(["--fixtures", str(GTI_REPORTS), "--api-key", "k", *flags])
        emulator = server.build_emulator(args)
        with emulator.serve(), vt.Client("k", host=emulator.url, headers=GTI) as client:
            attributes = client.get_json(f"/files/{GTI_FILE}")["data"]["attributes"]
            assert ("gti_assessment" in attributes) == licensed
            assert client.get_json("/ioc_stream")["data"] == []  # still premium


def test_the_default_folder_and_key_serve_every_report_under_its_own_id() -> None:
    """What the end-to-end tests start: `serve_reports()`, the key `demo`."""
    with serve_reports() as emulator, vt.Client("demo", host=emulator.url) as client:
        for key in REAL:
            assert client.get_object(PATHS[key]).id == key[1]
    assert sum(emulator.count(endpoint) for endpoint in emulator.stats()) == len(REAL) == 4
