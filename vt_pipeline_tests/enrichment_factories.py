"""Builders of what the enrichment mapping reads, shaped like the real sources return them.

- VirusTotal `data` objects of the lookups: `vt_file`, `vt_ip`, `vt_domain`, `vt_url` (GET
  /files, /ip_addresses, /domains, /urls), `vt_yara_ruleset` (GET /yara_rulesets/{id}).
- OpenCTI entities as pycti exports them for a connector (`prepare_export(generate_export(...))`):
  `opencti_file`, `opencti_value_observable`, `opencti_indicator`, plus the objects exported
  with them (`context_objects`: the marking and the author), and playbook bundles.

Dates are fixed constants; keyword arguments override defaults, `attributes=` merges raw keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import stix2
from pycti import STIX_EXT_OCTI, STIX_EXT_OCTI_SCO, Identity, Indicator

from vt_pipeline.stix import common
from vt_pipeline_tests import factories

# 2025-11-20T10:00:00Z
ANALYSIS_DATE = factories.NOTIFICATION_DATE
ANALYSIS_STAMP = "2025-11-20T10:00:00.000Z"
DAY = factories.DAY
API = "https://www.virustotal.com/api/v3"
TLP_AMBER = stix2.TLP_AMBER.id
ORG_NAME = "ACME CERT"
ORG_ID = Identity.generate_id(ORG_NAME, "organization")


def stats_and_results(
    malicious: int, harmless: int = 0, undetected: int = 0, *, network: bool = False
) -> dict[str, Any]:
    """`last_analysis_stats`/`last_analysis_results` that agree; network objects have no engine
    versions and no file-only categories."""
    built = factories.analysis(malicious, harmless, undetected)
    if network:
        for key in ("confirmed-timeout", "failure", "type-unsupported"):
            del built["last_analysis_stats"][key]
        for result in built["last_analysis_results"].values():
            del result["engine_version"]
            del result["engine_update"]
            if result["category"] != "malicious":
                result["result"] = "clean" if result["category"] == "harmless" else "unrated"
            else:
                result["result"] = "malware"
    return built


def _envelope(obj_type: str, obj_id: str, collection: str, attrs: dict) -> dict[str, Any]:
    return {
        "type": obj_type,
        "id": obj_id,
        "links": {"self": f"{API}/{collection}/{obj_id}"},
        "attributes": attrs,
    }


def gti(score: int | None, verdict: str = "VERDICT_MALICIOUS") -> dict[str, Any]:
    """`gti_assessment` as VT returns it to a request carrying `x-tool`."""
    return {
        "threat_score": {"value": score},
        "verdict": {"value": verdict},
        "severity": {"value": "SEVERITY_HIGH"},
        "description": "This indicator is malicious.",
    }


def vt_file(
    seed: str = "sample",
    *,
    malicious: int = 12,
    harmless: int = 0,
    undetected: int = 8,
    gti_score: int | None = None,
    analysis_date: int = ANALYSIS_DATE,
    names: Sequence[str] = ("invoice.exe", "payload.bin"),
    tags: Sequence[str] = ("peexe", "long-sleeps"),
    yara: Sequence[tuple[str, str]] = (),
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """GET /files/{hash} `data`; `yara` = (ruleset id, rule name) crowdsourced results."""
    hashes = factories.hashes_for(seed)
    attrs: dict[str, Any] = {
        **hashes,
        "size": 24_576,
        "type_description": "Win32 EXE",
        "type_tags": ["executable", "windows", "win32", "pe", "peexe"],
        "magic": "PE32 executable (GUI) Intel 80386, for MS Windows",
        "names": list(names),
        "meaningful_name": names[0] if names else None,
        "tags": list(tags),
        "first_submission_date": analysis_date - 30 * DAY,
        "last_submission_date": analysis_date - 60,
        "last_analysis_date": analysis_date,
        "last_modification_date": analysis_date + 60,
        "reputation": -12,
        "popular_threat_classification": {"suggested_threat_label": "trojan.agenttesla/msil"},
        **stats_and_results(malicious, harmless, undetected),
    }
    if gti_score is not None:
        attrs["gti_assessment"] = gti(gti_score)
    if yara:
        attrs["crowdsourced_yara_results"] = [
            {
                "ruleset_id": ruleset_id,
                "rule_name": rule_name,
                "ruleset_name": f"ruleset {ruleset_id}",
                "author": "Florian Roth",
                "source": "https://github.com/Neo23x0/signature-base",
                "description": "Detects the test sample",
            }
            for ruleset_id, rule_name in yara
        ]
    attrs.update(attributes or {})
    return _envelope("file", hashes["sha256"], "files", attrs)


def _network(malicious: int, harmless: int, undetected: int, analysis_date: int) -> dict:
    return {
        "last_analysis_date": analysis_date,
        "categories": {"Forcepoint ThreatSeeker": "malicious web sites", "Sophos": "phishing"},
        "reputation": -5,
        "tags": [],
        **stats_and_results(malicious, harmless, undetected, network=True),
    }


def vt_ip(
    address: str = "203.0.113.7",
    *,
    malicious: int = 11,
    harmless: int = 40,
    undetected: int = 20,
    gti_score: int | None = None,
    asn: Any = 64500,
    country: Any = "NL",
    analysis_date: int = ANALYSIS_DATE,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "as_owner": "Example Hosting B.V.",
        "asn": asn,
        "country": country,
        "continent": "EU",
        "network": "203.0.113.0/24",
        "regional_internet_registry": "RIPE NCC",
        **_network(malicious, harmless, undetected, analysis_date),
    }
    if gti_score is not None:
        attrs["gti_assessment"] = gti(gti_score)
    attrs.update(attributes or {})
    return _envelope("ip_address", address, "ip_addresses", attrs)


def vt_domain(
    domain: str = "evil.example.com",
    *,
    malicious: int = 10,
    harmless: int = 30,
    undetected: int = 30,
    gti_score: int | None = None,
    a_records: Sequence[str] = ("198.51.100.1", "198.51.100.2"),
    analysis_date: int = ANALYSIS_DATE,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "last_dns_records": [
            *({"type": "A", "value": address, "ttl": 300} for address in a_records),
            {"type": "NS", "value": "ns1.example.net", "ttl": 86400},
            {"type": "AAAA", "value": "2001:db8::1", "ttl": 300},
        ],
        "last_dns_records_date": analysis_date,
        "registrar": "NameCheap, Inc.",
        "creation_date": analysis_date - 20 * DAY,
        "tld": domain.rsplit(".", 1)[-1],
        **_network(malicious, harmless, undetected, analysis_date),
    }
    if gti_score is not None:
        attrs["gti_assessment"] = gti(gti_score)
    attrs.update(attributes or {})
    return _envelope("domain", domain, "domains", attrs)


def vt_url(
    url: str = "http://evil.example.com/login.php?next=a'b",
    *,
    malicious: int = 14,
    harmless: int = 40,
    undetected: int = 16,
    gti_score: int | None = None,
    analysis_date: int = ANALYSIS_DATE,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "url": url,
        "last_final_url": url,
        "title": "Sign in to your account",
        "last_http_response_code": 200,
        "first_submission_date": analysis_date - 2 * DAY,
        "last_submission_date": analysis_date - 60,
        **_network(malicious, harmless, undetected, analysis_date),
    }
    if gti_score is not None:
        attrs["gti_assessment"] = gti(gti_score)
    attrs.update(attributes or {})
    return _envelope("url", hashlib.sha256(url.encode()).hexdigest(), "urls", attrs)


def vt_yara_ruleset(
    ruleset_id: str = "0001a2b3c4",
    rules: str | None = None,
    *,
    name: str = "crowdsourced_test",
    creation_date: int | None = ANALYSIS_DATE - 100 * DAY,
) -> dict[str, Any]:
    """GET /yara_rulesets/{id} `data`: rules default to `Test_Rule` and `Other_Rule`."""
    if rules is None:
        rules = factories.yara_rule("Test_Rule") + "\n" + factories.yara_rule("Other_Rule")
    attrs: dict[str, Any] = {
        "name": name,
        "rules": rules,
        "author": "Florian Roth",
        "source": "https://github.com/Neo23x0/signature-base",
        "rule_names": ["Test_Rule", "Other_Rule"],
    }
    if creation_date is not None:
        attrs["creation_date"] = creation_date
    return _envelope("yara_ruleset", ruleset_id, "yara_rulesets", attrs)


# -- OpenCTI side ---------------------------------------------------------------------------------


def organization() -> dict[str, Any]:
    """The identity OpenCTI exports as the entity's author."""
    identity = common.author_identity(ORG_NAME)
    identity["x_opencti_id"] = "d1b5bd2a-0000-4000-8000-000000000001"
    return identity


def amber() -> dict[str, Any]:
    return common.tlp_marking("amber")


def context_objects(entity: dict[str, Any]) -> list[dict[str, Any]]:
    """What `prepare_export` returns with an entity: its author, its markings, the entity."""
    return [organization(), amber(), entity]


def _opencti_extras(entity: dict[str, Any], opencti_type: str, score: int | None) -> None:
    entity["object_marking_refs"] = [TLP_AMBER]
    entity["x_opencti_created_by_ref"] = ORG_ID
    entity["x_opencti_id"] = "0b6e0c0a-1111-4000-8000-000000000001"
    entity["x_opencti_type"] = opencti_type
    if score is not None:
        entity["x_opencti_score"] = score


def opencti_file(
    seed: str = "sample",
    *,
    hashes: Sequence[str] = ("SHA-256",),
    score: int | None = 50,
    artifact: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A StixFile (or Artifact) known by some of its hashes, as pycti exports it."""
    known = factories.hashes_for(seed)
    names = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256"}
    chosen = {algorithm: known[names[algorithm]] for algorithm in hashes}
    stix_type = "artifact" if artifact else "file"
    entity: dict[str, Any] = {
        "type": stix_type,
        "spec_version": "2.1",
        "id": (
            common.sco_id(stix_type, {"hashes": chosen})
            if chosen
            else f"{stix_type}--5f4e3b2a-0000-4000-8000-0000000000aa"
        ),
    }
    if chosen:
        entity["hashes"] = chosen
    if artifact:
        entity["url"] = "https://opencti.example/storage/get/import/Artifact/sample"
    _opencti_extras(entity, "Artifact" if artifact else "StixFile", score)
    entity.update(extra)
    return entity


def opencti_value_observable(
    opencti_type: str, value: str, *, score: int | None = 50, **extra: Any
) -> dict[str, Any]:
    """An IPv4-Addr / Domain-Name / Hostname / Url as pycti exports it."""
    stix_type = {
        "IPv4-Addr": "ipv4-addr",
        "Domain-Name": "domain-name",
        "Hostname": "hostname",
        "Url": "url",
    }[opencti_type]
    entity: dict[str, Any] = {
        "type": stix_type,
        "spec_version": "2.1",
        "id": common.sco_id(stix_type, {"value": value}),
        "value": value,
    }
    _opencti_extras(entity, opencti_type, score)
    entity.update(extra)
    return entity


def opencti_indicator(
    pattern: str = "[ipv4-addr:value = '203.0.113.7'] OR [domain-name:value = 'evil.example.com']",
    *,
    score: int | None = 40,
    **extra: Any,
) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": Indicator.generate_id(pattern),
        "created": "2025-10-01T08:00:00.000Z",
        "modified": "2025-10-02T08:00:00.000Z",
        "name": "Suspicious infrastructure",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2025-10-01T08:00:00.000Z",
        "created_by_ref": ORG_ID,
        "object_marking_refs": [TLP_AMBER],
        "x_opencti_main_observable_type": "IPv4-Addr",
        "x_opencti_id": "0b6e0c0a-2222-4000-8000-000000000002",
        "x_opencti_type": "Indicator",
        "x_opencti_observable_values": [
            {"type": "IPv4-Addr", "value": "203.0.113.7"},
            {"type": "Domain-Name", "value": "evil.example.com"},
        ],
    }
    if score is not None:
        entity["x_opencti_score"] = score
    entity.update(extra)
    return entity


def playbook_incoming(entity: dict[str, Any]) -> dict[str, Any]:
    """`event.bundle` of a playbook request: the entity with its context objects."""
    return {
        "type": "bundle",
        "id": "bundle--7a9d2c6e-0000-4000-8000-000000000042",
        "objects": context_objects(entity),
    }


__all__ = [
    "ANALYSIS_STAMP",
    "STIX_EXT_OCTI",
    "STIX_EXT_OCTI_SCO",
    "TLP_AMBER",
]
