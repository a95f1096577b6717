"""Livehunt notifications -> STIX bundle: data model, options, ids, determinism, robustness."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any

import pytest
import stix2
from pycti import Incident, Indicator, StixCoreRelationship
from pycti.utils.constants import CustomObservableHostname

from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.stix import build_livehunt_bundle, common, serialize_bundle, validate_bundle
from vt_pipeline.stix.livehunt import AUTHOR_NAME, STAT_KEYS, LivehuntBundle, rule_observable_type
from vt_pipeline.stix.yara import find_rule
from vt_pipeline_tests import factories
from vt_pipeline_tests.livehunt.hostile import hostile_notifications

DATE = factories.NOTIFICATION_DATE
CREATED = "2025-11-20T10:00:00.000Z"
RULESETS = {"ruleset-1": factories.hunting_ruleset()}
# Network rules as VT writes them: the condition names the entity hunted (`vt.net.<entity>`).
NET_CONDITIONS = {
    "Url_Rule": 'vt.net.url.path matches /login/ and vt.net.domain.raw contains "x"',
    "Domain_Rule": "vt.net.domain.new_domain and vt.net.ip.reputation < 0",
    "Ip_Rule": 'vt.net.ip.ip_as_owner icontains "ponynet" or vt.net.ip.reputation < -10',
}
NET_RULESET = factories.hunting_ruleset(
    "ruleset-net",
    "".join(factories.yara_rule(name, condition=cond) for name, cond in NET_CONDITIONS.items()),
    name="network_ruleset",
)


def build(
    items: list[dict[str, Any]],
    rulesets: dict[str, dict[str, Any]] | None = None,
    artifacts: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> LivehuntBundle:
    result = build_livehunt_bundle(
        items,
        RULESETS if rulesets is None else rulesets,
        artifacts or {},
        LivehuntOptions(**options),
    )
    assert validate_bundle(result.bundle) == []
    return result


def of_type(result: LivehuntBundle, stix_type: str) -> list[dict[str, Any]]:
    return [obj for obj in result.bundle["objects"] if obj["type"] == stix_type]


def one(result: LivehuntBundle, stix_type: str) -> dict[str, Any]:
    found = of_type(result, stix_type)
    assert len(found) == 1, found
    return found[0]


def types(result: LivehuntBundle) -> Counter[str]:
    return Counter(obj["type"] for obj in result.bundle["objects"])


def relations(result: LivehuntBundle) -> set[tuple[str, str, str]]:
    """(source type, relationship type, target type) of every relationship."""
    return {
        (r["source_ref"].split("--")[0], r["relationship_type"], r["target_ref"].split("--")[0])
        for r in of_type(result, "relationship")
    }


def yara_indicator(result: LivehuntBundle) -> dict[str, Any]:
    found = [i for i in of_type(result, "indicator") if i["pattern_type"] == "yara"]
    assert len(found) == 1
    return found[0]


def artifact_record(item: dict[str, Any], mime_type: str | None = "application/x-dosexec") -> dict:
    return {item["id"]: {"sha256": item["id"], "size": 4096, "mime_type": mime_type}}


# -- the default data model ------------------------------------------------------------------


def test_default_options_give_upstream_data_model() -> None:
    result = build([factories.file_notification()])
    assert types(result) == {
        "identity": 1,
        "marking-definition": 1,
        "incident": 1,
        "file": 1,
        "indicator": 1,
        "relationship": 3,
    }
    assert relations(result) == {
        ("incident", "related-to", "file"),
        ("incident", "related-to", "indicator"),
        ("indicator", "based-on", "file"),
    }
    assert result.stats["notifications_mapped"] == 1
    assert set(result.stats) == set(STAT_KEYS)


def test_author_and_marking_on_every_object() -> None:
    item = factories.file_notification(malware_config=factories.malware_config())
    result = build(
        [item, factories.url_notification()],
        {**RULESETS, "ruleset-net": NET_RULESET},
        artifact_record(item),
        tlp_level="amber+strict",
        get_malware_config=True,
        create_file_indicators=True,
        create_ip_indicators=True,
    )
    author = one(result, "identity")
    marking = one(result, "marking-definition")
    assert author["name"] == AUTHOR_NAME
    assert marking["x_opencti_definition"] == "TLP:AMBER+STRICT"
    scos = {"file", "artifact", "url", "domain-name", "ipv4-addr", "ipv6-addr", "hostname"}
    for obj in result.bundle["objects"]:
        if obj["type"] in {"identity", "marking-definition"}:
            continue
        assert obj["object_marking_refs"] == [marking["id"]], obj["id"]
        key = "x_opencti_created_by_ref" if obj["type"] in scos else "created_by_ref"
        assert obj[key] == author["id"], obj["id"]


def test_incident() -> None:
    item = factories.file_notification(
        notification_id="notif-42",
        tags=[
            "test_rule",
            "test_ruleset",
            "analyst-tag",
            "the-filter",
            factories.hashes_for("sample-1")["sha256"],
        ],
    )
    result = build([item], filter_with_tag="the-filter")
    incident = one(result, "incident")
    sha256 = item["id"]
    assert incident["name"] == f"VT Test_Rule file={sha256}"
    assert incident["created"] == incident["modified"] == CREATED
    assert incident["id"] == Incident.generate_id(incident["name"], CREATED)
    assert incident["incident_type"] == "alert"
    assert incident["source"] == "hunting_notification"
    assert incident["labels"] == ["analyst-tag", "vt:lh:test_rule", "vt:yara:test_ruleset"]
    assert incident["external_references"][0]["url"] == (
        f"https://www.virustotal.com/gui/file/{sha256}"
    )
    description = incident["description"]
    for expected in (
        "notif-42",
        "2025-11-20T10:00:00Z",
        "Test_Rule",
        "test_ruleset (ruleset-1)",
        "4d 5a 90 00  MZ..",
    ):
        assert expected in description


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", "Test_Rule file="), ("VT   ", "VT Test_Rule file="), ("[LH]", "[LH] Test_Rule file=")],
)
def test_alert_prefix(prefix: str, expected: str) -> None:
    incident = one(build([factories.file_notification()], alert_prefix=prefix), "incident")
    assert incident["name"].startswith(expected)


def test_label_enrichment_off_keeps_the_notification_tags_only() -> None:
    incident = one(
        build([factories.file_notification()], enable_label_enrichment=False), "incident"
    )
    assert incident["labels"] == ["test_rule", "test_ruleset"]


def test_label_prefixes() -> None:
    incident = one(
        build(
            [factories.file_notification(rule_name="My.Rule")],
            livehunt_label_prefix="lh/",
            yara_label_prefix="y/",
        ),
        "incident",
    )
    assert incident["labels"] == ["my.rule", "lh/my_rule", "y/test_ruleset"]


def test_file_observable() -> None:
    item = factories.file_notification(
        meaningful_name="invoice.exe", names=["a.bin", "invoice.exe", "a.bin", "b.dll"]
    )
    item["attributes"]["md5"] = "not-a-hash"
    file = one(build([item], livehunt_tag_prefix="vt:"), "file")
    hashes = factories.hashes_for("sample-1")
    assert file["hashes"] == {"SHA-1": hashes["sha1"], "SHA-256": hashes["sha256"]}
    assert file["name"] == "invoice.exe"
    assert file["x_opencti_additional_names"] == ["a.bin", "b.dll"]
    assert file["size"] == 4096
    assert file["x_opencti_score"] == 60  # 3 malicious of 5
    assert file["x_opencti_labels"] == [
        "vt:executable",
        "vt:windows",
        "vt:win32",
        "vt:pe",
        "vt:peexe",
        "vt:overlay",
    ]
    expected = stix2.File(hashes=file["hashes"], name="invoice.exe")
    assert file["id"] == expected.id
    assert "content_ref" not in file


def test_file_name_falls_back_to_first_name_then_to_none() -> None:
    first = one(
        build([factories.file_notification(meaningful_name=None, names=["x", "y"])]), "file"
    )
    assert (first["name"], first["x_opencti_additional_names"]) == ("x", ["y"])
    nameless = one(build([factories.file_notification(meaningful_name=None, names=[])]), "file")
    assert "name" not in nameless
    assert nameless["id"] == stix2.File(hashes=nameless["hashes"]).id


def test_av_list_description() -> None:
    file = one(
        build([factories.file_notification()], av_list=("Kaspersky", "Avast", "Absent")), "file"
    )
    assert file["x_opencti_description"] == (
        "- **Kaspersky**: Trojan.Generic.0\n- **Avast**: undetected\n- **Absent**: not analysed"
        "\n\nVirusTotal's score: 60%."
    )
    bare = one(build([factories.file_notification()]), "file")
    assert bare["x_opencti_description"] == "VirusTotal's score: 60%."


# -- options switch exactly their part --------------------------------------------------------


def test_create_alert_off_drops_only_the_incident_and_its_relations() -> None:
    on = build([factories.file_notification()])
    off = build([factories.file_notification()], create_alert=False)
    assert types(off) == types(on) - Counter({"incident": 1, "relationship": 2})
    assert relations(off) == {("indicator", "based-on", "file")}


def test_create_file_off_drops_only_the_observable_and_its_relations() -> None:
    off = build([factories.file_notification()], create_file=False)
    assert "file" not in types(off)
    assert relations(off) == {("incident", "related-to", "indicator")}


def test_create_yara_rule_off_drops_only_the_yara_indicator() -> None:
    off = build([factories.file_notification()], create_yara_rule=False)
    assert "indicator" not in types(off)
    assert relations(off) == {("incident", "related-to", "file")}


def test_file_indicator() -> None:
    item = factories.file_notification(first_submission_date=DATE - 86_400)
    result = build([item], create_file_indicators=True, create_yara_rule=False)
    indicator = one(result, "indicator")
    pattern = f"[file:hashes.'SHA-256' = '{item['id']}']"
    assert indicator["pattern"] == pattern
    assert indicator["pattern_type"] == "stix"
    assert indicator["id"] == Indicator.generate_id(pattern)
    # valid from VT's match (the notification), created when VT first saw the file
    assert indicator["valid_from"] == indicator["modified"] == CREATED
    assert indicator["created"] == "2025-11-19T10:00:00.000Z"
    assert "valid_until" not in indicator  # OpenCTI's lifecycle counts from valid_from
    assert indicator["x_opencti_main_observable_type"] == "StixFile"
    assert relations(result) == {
        ("incident", "related-to", "file"),
        ("incident", "related-to", "indicator"),
        ("indicator", "based-on", "file"),
    }


def test_file_indicator_without_first_submission_uses_the_notification_date() -> None:
    item = factories.file_notification()
    del item["attributes"]["first_submission_date"]
    result = build([item], create_file_indicators=True, create_yara_rule=False)
    indicator = one(result, "indicator")
    assert indicator["valid_from"] == indicator["created"] == indicator["modified"] == CREATED


YEARS_AGO = DATE - 3 * 365 * 86_400  # 2022-11-21T10:00:00Z


def detection_indicators(result: LivehuntBundle) -> list[dict[str, Any]]:
    return [i for i in of_type(result, "indicator") if i["pattern_type"] == "stix"]


def test_detection_indicators_of_an_old_file_are_valid_at_its_notification() -> None:
    """A file VT first saw three years ago, matched today: its hash Indicator and its malware
    config's Indicators are valid from today's notification, not born expired."""
    item = factories.file_notification(
        first_submission_date=YEARS_AGO, malware_config=factories.malware_config()
    )
    result = build(
        [item],
        create_file_indicators=True,
        get_malware_config=True,
        create_ip_indicators=True,
        create_domain_name_indicators=True,
        create_url_indicators=True,
    )
    indicators = detection_indicators(result)
    assert len(indicators) == 4  # the hash, an IP, a domain, a URL
    for indicator in indicators:
        assert indicator["valid_from"] == indicator["modified"] == CREATED, indicator["name"]
        assert indicator["created"] == "2022-11-21T10:00:00.000Z"
        assert "valid_until" not in indicator
    # what VT observed keeps VT's date: the config note, the relationships from the file
    assert one(result, "note")["created"] == "2022-11-21T10:00:00.000Z"
    for rel in of_type(result, "relationship"):
        if not rel["source_ref"].startswith("incident--"):
            assert rel["created"] in ("2022-11-21T10:00:00.000Z", "2025-01-15T00:00:00.000Z")


def test_a_file_notified_twice_is_valid_from_its_latest_notification() -> None:
    def notified(date: int, notification_id: str) -> dict[str, Any]:
        return factories.file_notification(
            notification_date=date,
            notification_id=notification_id,
            first_submission_date=YEARS_AGO,
        )

    early, late = notified(DATE, "n-1"), notified(DATE + 600, "n-2")
    for items in ([early, late], [late, early]):
        (indicator,) = detection_indicators(build(items, create_file_indicators=True))
        assert indicator["valid_from"] == common.stix_timestamp(DATE + 600)
        assert indicator["created"] == common.stix_timestamp(YEARS_AGO)  # first submission


def test_a_config_value_two_files_share_is_valid_from_the_later_match() -> None:
    config = factories.malware_config(hosts=("198.51.100.23",), urls=())
    first = factories.file_notification(
        "a", notification_date=DATE, first_submission_date=YEARS_AGO, malware_config=config
    )
    second = factories.file_notification(
        "b", notification_date=DATE + 900, first_submission_date=DATE, malware_config=config
    )
    options = {"get_malware_config": True, "create_ip_indicators": True}
    for items in ([first, second], [second, first]):
        (indicator,) = detection_indicators(build(items, **options))
        assert indicator["valid_from"] == indicator["modified"] == common.stix_timestamp(DATE + 900)
        assert indicator["created"] == common.stix_timestamp(YEARS_AGO)


def test_tlp_levels() -> None:
    for level, expected in (("clear", stix2.TLP_WHITE), ("red", stix2.TLP_RED)):
        result = build([factories.file_notification()], tlp_level=level)
        assert one(result, "marking-definition")["id"] == expected.id
        assert one(result, "file")["object_marking_refs"] == [expected.id]


# -- ids --------------------------------------------------------------------------------------


def test_relationship_ids_are_pycti_ids() -> None:
    result = build([factories.file_notification()])
    yara_valid_from = yara_indicator(result)["valid_from"]
    for rel in of_type(result, "relationship"):
        assert rel["id"] == StixCoreRelationship.generate_id(
            rel["relationship_type"], rel["source_ref"], rel["target_ref"]
        )
        # an Incident's relationships carry its notification's date; a shared one its source's
        from_incident = rel["source_ref"].startswith("incident--")
        assert rel["created"] == (CREATED if from_incident else yara_valid_from)


@pytest.mark.parametrize(
    ("item", "stix_type", "expected", "name_part"),
    [
        (
            factories.url_notification("http://x.example/p?q='1'"),
            "url",
            stix2.URL(value="http://x.example/p?q='1'"),
            "url=http://x.example/p?q='1'",
        ),
        (
            factories.domain_notification("Evil.Example.COM."),
            "domain-name",
            stix2.DomainName(value="evil.example.com"),
            "domain=evil.example.com",
        ),
        (
            factories.ip_notification("203.0.113.7"),
            "ipv4-addr",
            stix2.IPv4Address(value="203.0.113.7"),
            "ip=203.0.113.7",
        ),
        (
            factories.ip_notification("2001:DB8:0::1"),
            "ipv6-addr",
            stix2.IPv6Address(value="2001:db8::1"),
            "ip=2001:db8::1",
        ),
    ],
)
def test_network_subjects(
    item: dict[str, Any], stix_type: str, expected: stix2.base._STIXBase, name_part: str
) -> None:
    result = build([item], {"ruleset-net": NET_RULESET})
    observable = one(result, stix_type)
    assert observable["id"] == expected.id
    assert observable["value"] == expected.value
    assert observable["x_opencti_score"] == 60
    assert one(result, "incident")["name"].endswith(name_part)
    indicator = yara_indicator(result)
    # from the rule, not the subject: an IP rule is IPv4-Addr even when it matched an IPv6
    assert (
        indicator["x_opencti_main_observable_type"]
        == {
            "url": "Url",
            "domain-name": "Domain-Name",
            "ipv4-addr": "IPv4-Addr",
            "ipv6-addr": "IPv4-Addr",
        }[stix_type]
    )
    assert relations(result) == {
        ("incident", "related-to", stix_type),
        ("incident", "related-to", "indicator"),
        ("indicator", "based-on", stix_type),
    }
    assert "file" not in types(result)


def test_network_observable_labels_use_the_tag_prefix() -> None:
    url = one(
        build(
            [factories.url_notification()], {"ruleset-net": NET_RULESET}, livehunt_tag_prefix="vt:"
        ),
        "url",
    )
    assert url["x_opencti_labels"] == ["vt:phishing"]


# -- YARA -------------------------------------------------------------------------------------


def test_yara_indicator() -> None:
    result = build([factories.file_notification()])
    indicator = yara_indicator(result)
    rule = find_rule(RULESETS["ruleset-1"]["attributes"]["rules"], "Test_Rule")
    assert rule is not None
    assert indicator["pattern"] == rule.source
    assert "Other_Rule" not in indicator["pattern"]
    assert indicator["id"] == Indicator.generate_id(rule.source)
    assert indicator["name"] == "Test_Rule"
    assert indicator["description"] == "Detects the test sample"
    assert indicator["valid_from"] == indicator["created"] == "2025-01-15T00:00:00.000Z"
    # ruleset modified 10 days before the notification, after the rule's date
    assert indicator["modified"] == "2025-11-10T10:00:00.000Z"
    assert indicator["x_opencti_main_observable_type"] == "StixFile"


def test_yara_dates_fall_back_to_ruleset_then_notification() -> None:
    undated = factories.yara_rule("Test_Rule", date=None, description=None)
    with_ruleset_date = build(
        [factories.file_notification()], {"ruleset-1": factories.hunting_ruleset(rules=undated)}
    )
    indicator = yara_indicator(with_ruleset_date)
    assert indicator["valid_from"] == "2025-01-24T10:00:00.000Z"  # ruleset creation_date
    assert indicator["description"] == (
        "YARA rule Test_Rule of the VirusTotal Livehunt ruleset test_ruleset."
    )
    bare = factories.hunting_ruleset(rules=undated, creation_date=None, modification_date=None)
    indicator = yara_indicator(build([factories.file_notification()], {"ruleset-1": bare}))
    assert indicator["valid_from"] == indicator["modified"] == CREATED


def test_rule_is_looked_up_in_the_notification_rulesets_not_by_label() -> None:
    item = factories.file_notification(
        rule_name="Other_Rule", sources=[("empty", "Other_Rule"), ("ruleset-1", "misleading")]
    )
    empty = factories.hunting_ruleset("empty", factories.yara_rule("Unrelated"))
    indicator = yara_indicator(build([item], {**RULESETS, "empty": empty}))
    assert indicator["name"] == "Other_Rule"
    assert '"ELF"' in indicator["pattern"]


def test_same_rule_many_notifications_one_indicator() -> None:
    items = [factories.file_notification(f"s{i}", notification_date=DATE + i) for i in range(3)]
    result = build(items)
    assert types(result)["indicator"] == 1
    assert types(result)["incident"] == 3
    assert types(result)["relationship"] == 9


@pytest.mark.parametrize(
    ("rulesets", "stat"),
    [
        (
            {"ruleset-1": factories.hunting_ruleset(rules=factories.yara_rule("Nope"))},
            "yara_rule_missing",
        ),
        ({}, "yara_ruleset_missing"),
        ({"ruleset-1": factories.hunting_ruleset(rules="rule { broken")}, "yara_parse_error"),
        ({"ruleset-1": factories.hunting_ruleset(attributes={"rules": None})}, "yara_parse_error"),
    ],
)
def test_missing_or_broken_rules_are_counted_not_fatal(rulesets: dict, stat: str) -> None:
    items = [factories.file_notification("a"), factories.file_notification("b")]
    result = build(items, rulesets)
    assert result.stats[stat] == 2
    assert sum(result.stats[k] for k in STAT_KEYS if k.startswith("yara_")) == 2
    assert "indicator" not in types(result)
    assert types(result)["incident"] == 2
    assert types(result)["file"] == 2


def test_notification_without_rule_name_is_counted() -> None:
    result = build([factories.file_notification(rule_name=None)])
    assert result.stats["yara_rule_missing"] == 1
    assert one(result, "incident")["name"].startswith("VT unknown rule file=")


# -- artifact ---------------------------------------------------------------------------------


def test_artifact() -> None:
    item = factories.file_notification()
    result = build([item], artifacts=artifact_record(item))
    artifact = one(result, "artifact")
    hashes = factories.hashes_for("sample-1")
    assert artifact["hashes"] == {
        "MD5": hashes["md5"],
        "SHA-1": hashes["sha1"],
        "SHA-256": hashes["sha256"],
    }
    assert artifact["mime_type"] == "application/x-dosexec"
    assert artifact["x_opencti_additional_names"] == ["invoice.exe", "sample.bin"]
    assert artifact["x_opencti_score"] == 60
    expected = stix2.Artifact(hashes=artifact["hashes"], url=artifact["url"])
    assert artifact["id"] == expected.id
    assert one(result, "file")["content_ref"] == artifact["id"]
    assert ("incident", "related-to", "artifact") in relations(result)


def test_artifact_without_mime_type_or_record() -> None:
    item = factories.file_notification()
    assert "mime_type" not in one(build([item], artifacts=artifact_record(item, None)), "artifact")
    assert "artifact" not in types(build([item]))
    other = {item["id"]: {"sha256": "f" * 64, "size": 1, "mime_type": None}}
    mismatch = build([item], artifacts=other)
    assert "artifact" not in types(mismatch)
    assert "content_ref" not in one(mismatch, "file")
    assert mismatch.stats["artifact_hash_mismatch"] == 1


# -- malware config ---------------------------------------------------------------------------


def config_bundle(**options: Any) -> tuple[dict[str, Any], LivehuntBundle]:
    config = factories.malware_config(
        hosts=(
            "198.51.100.23",
            "C2.Evil-Domain.net",
            "2001:db8::5",
            "localhost_c2",
            "bad host!",
            "x|y",
        ),
        urls=("http://c2.evil-domain.net/gate.php?a='b'", "not a url"),
    )
    item = factories.file_notification(malware_config=config)
    return item, build([item], **{"get_malware_config": True, **options})


def test_malware_config_observables_and_note() -> None:
    item, result = config_bundle()
    assert one(result, "ipv4-addr")["value"] == "198.51.100.23"
    assert one(result, "ipv6-addr")["value"] == "2001:db8::5"
    assert one(result, "domain-name")["value"] == "c2.evil-domain.net"
    hostname = one(result, "hostname")
    assert hostname["value"] == "localhost_c2"
    assert hostname["id"] == CustomObservableHostname(value="localhost_c2").id
    url = one(result, "url")
    assert url["id"] == stix2.URL(value="http://c2.evil-domain.net/gate.php?a='b'").id
    assert result.stats["invalid_malware_config_hosts"] == 2
    assert result.stats["invalid_malware_config_urls"] == 1
    file = one(result, "file")
    extracted = {
        o["id"]
        for o in result.bundle["objects"]
        if o["type"] in {"ipv4-addr", "ipv6-addr", "domain-name", "hostname", "url"}
    }
    related = {
        r["target_ref"]
        for r in of_type(result, "relationship")
        if r["source_ref"] == file["id"] and r["relationship_type"] == "related-to"
    }
    assert related == extracted
    labels = ["AgentTesla", "agensla", "c2", "http"]
    assert file["x_opencti_labels"][-4:] == labels
    assert one(result, "hostname")["x_opencti_labels"] == labels
    note = one(result, "note")
    assert note["object_refs"][0] == file["id"]
    assert set(note["object_refs"][1:]) == extracted
    assert item["id"] in note["abstract"]
    assert note["content"].startswith("```json\n") and note["content"].endswith("\n```")
    assert json.loads(note["content"][8:-4]) == item["attributes"]["malware_config"]
    assert "indicator--" not in " ".join(note["object_refs"])


def test_malware_config_indicators_per_option() -> None:
    _, none = config_bundle(create_yara_rule=False)
    assert "indicator" not in types(none)
    _, ips = config_bundle(create_yara_rule=False, create_ip_indicators=True)
    assert sorted(i["x_opencti_main_observable_type"] for i in of_type(ips, "indicator")) == [
        "IPv4-Addr",
        "IPv6-Addr",
    ]
    _, every = config_bundle(
        create_yara_rule=False,
        create_ip_indicators=True,
        create_domain_name_indicators=True,
        create_url_indicators=True,
    )
    indicators = of_type(every, "indicator")
    assert sorted(i["x_opencti_main_observable_type"] for i in indicators) == [
        "Domain-Name",
        "IPv4-Addr",
        "IPv6-Addr",
        "Url",
    ]  # never Hostname
    url_indicator = next(i for i in indicators if i["x_opencti_main_observable_type"] == "Url")
    assert (
        url_indicator["pattern"] == "[url:value = 'http://c2.evil-domain.net/gate.php?a=\\'b\\'']"
    )
    based_on = {
        (r["source_ref"], r["target_ref"])
        for r in of_type(every, "relationship")
        if r["relationship_type"] == "based-on"
    }
    values = {o["value"]: o["id"] for o in every.bundle["objects"] if "value" in o}
    assert {(i["id"], values[i["name"]]) for i in indicators} == based_on
    assert set(one(every, "note")["object_refs"]) >= {i["id"] for i in indicators}


def test_malware_config_needs_its_option_and_the_file() -> None:
    item = factories.file_notification(malware_config=factories.malware_config())
    for options in ({}, {"get_malware_config": True, "create_file": False}):
        result = build([item], **options)
        assert not {"note", "ipv4-addr", "domain-name", "url"} & set(types(result))


def test_hostile_malware_config_structure_is_ignored() -> None:
    config = {
        "families": [
            None,
            "x",
            {"family": 5, "configs": [{"net_info": "nope"}, {"net_info": {"connections": 7}}]},
        ]
    }
    result = build([factories.file_notification(malware_config=config)], get_malware_config=True)
    assert one(result, "note")["object_refs"] == [one(result, "file")["id"]]


# -- determinism ------------------------------------------------------------------------------


def mixed_items() -> list[dict[str, Any]]:
    items = [
        factories.file_notification(
            f"s{i}", notification_date=DATE + (i % 3), malware_config=factories.malware_config()
        )
        for i in range(8)
    ]
    items += [
        factories.url_notification(),
        factories.domain_notification(),
        factories.ip_notification(),
        factories.ip_notification("2001:db8::1"),
    ]
    items.append(
        factories.file_notification(
            "s1", notification_date=DATE + 50, meaningful_name="renamed.exe"
        )
    )
    return items


def mixed_bundle(items: list[dict[str, Any]]) -> bytes:
    stored = [factories.hashes_for(f"s{i}")["sha256"] for i in range(3)]
    artifacts = {sha256: {"sha256": sha256, "size": 1, "mime_type": None} for sha256 in stored}
    result = build(
        items,
        {**RULESETS, "ruleset-net": NET_RULESET},
        artifacts,
        get_malware_config=True,
        create_file_indicators=True,
        create_ip_indicators=True,
        create_url_indicators=True,
        create_domain_name_indicators=True,
        av_list=("Kaspersky",),
    )
    return serialize_bundle(result.bundle)


def test_same_bytes_whatever_the_input_order() -> None:
    items = mixed_items()
    reference = mixed_bundle(items)
    for seed in range(5):
        shuffled = items[:]
        random.Random(seed).shuffle(shuffled)
        assert mixed_bundle(shuffled) == reference


def test_no_wall_clock() -> None:
    items = mixed_items()
    before = mixed_bundle(items)
    time.sleep(1.1)
    assert mixed_bundle(items) == before
    allowed = (
        {common.stix_timestamp(DATE + offset) for offset in (0, 1, 2, 50)}
        | {
            common.stix_timestamp(DATE - 3600 + offset)
            for offset in (0, 1, 2, 50)  # 1st submission
        }
        | {
            common.FIXED_TIMESTAMP,
            common.TLP_TIMESTAMP,
            "2025-01-15T00:00:00.000Z",
            "2025-11-10T10:00:00.000Z",
        }
    )
    for obj in json.loads(before)["objects"]:
        for key in ("created", "modified", "valid_from"):
            if key in obj:
                assert obj[key] in allowed, (obj["id"], key, obj[key])


def test_a_file_seen_twice_is_one_observable_from_its_latest_data() -> None:
    first = factories.file_notification(notification_date=DATE)
    later = factories.file_notification(notification_date=DATE + 60, meaningful_name="new.exe")
    result = build([later, first])
    file = one(result, "file")
    assert file["name"] == "new.exe"
    assert types(result)["incident"] == 2
    incidents = {i["id"] for i in of_type(result, "incident")}
    assert {
        r["source_ref"]
        for r in of_type(result, "relationship")
        if r["target_ref"] == file["id"] and r["relationship_type"] == "related-to"
    } == incidents


def test_duplicate_notification_ids_map_once() -> None:
    item = factories.file_notification()
    variant = factories.file_notification(meaningful_name="other.exe")
    forward = build([item, variant, item])
    backward = build([variant, item])
    assert forward.stats["duplicate_notifications"] == 2
    assert types(forward)["incident"] == 1
    assert serialize_bundle(forward.bundle) == serialize_bundle(backward.bundle)


# -- robustness -------------------------------------------------------------------------------


def test_invalid_notifications_are_skipped_and_counted() -> None:
    bad_hash = factories.file_notification("x")
    bad_hash["id"] = "../../etc/passwd"
    del bad_hash["attributes"]["sha256"]
    no_date = factories.file_notification("y", notification_date=None)
    far_future = factories.file_notification("z", notification_date=10**13)
    bad_url = factories.url_notification("javascript alert(1)")
    items = [bad_hash, no_date, far_future, bad_url, "junk", factories.file_notification()]
    result = build(items)  # type: ignore[arg-type]
    assert result.stats["invalid_notifications"] == 5
    assert result.stats["notifications_mapped"] == 1
    assert types(result)["incident"] == 1


def test_nothing_to_map_gives_an_empty_bundle() -> None:
    assert build([]).bundle["objects"] == []
    assert build(["junk"]).bundle["objects"] == []  # type: ignore[list-item]


HOSTILE = [
    "../../etc/passwd",
    "a|b;rm -rf /",
    "line1\nline2\r\n\x00",
    "evil\u202eexe.txt",
    "q'uote\"dq\\bs",
    "x" * 5000,
]


def test_hostile_values_survive_and_the_bundle_stays_valid() -> None:
    item = factories.file_notification(
        meaningful_name=HOSTILE[0],
        names=HOSTILE,
        tags=HOSTILE,
        snippet=HOSTILE[2] + "```",
        rule_name="Test_Rule",
        vt_tags=HOSTILE,
        sources=[("ruleset-1", HOSTILE[3])],
        context={"notification_id": HOSTILE[4]},
    )
    result = build([item], av_list=tuple(HOSTILE), create_file_indicators=True)
    data = serialize_bundle(result.bundle)
    decoded = json.loads(data.decode("utf-8"))
    assert decoded == json.loads(json.dumps(result.bundle))
    file = one(result, "file")
    assert file["name"] == HOSTILE[0]
    # names are VT-supplied: controls and bidi overrides out, line breaks as spaces, capped
    assert file["x_opencti_additional_names"] == [
        "a|b;rm -rf /",
        "line1 line2",
        "evilexe.txt",
        "q'uote\"dq\\bs",
        "x" * 255,
    ]
    incident = one(result, "incident")
    assert set(HOSTILE) <= set(incident["labels"])
    assert HOSTILE[4] in incident["description"]
    assert HOSTILE[3] in incident["description"]
    assert validate_bundle(decoded) == []


@pytest.mark.parametrize("label", list(hostile_notifications()))
def test_the_mapping_survives_items_the_filters_call_malformed(label: str) -> None:
    """Defence in depth: the filters drop these, but the pure mapping must not raise on them."""
    item = hostile_notifications()[label]
    result = build(
        [item, factories.file_notification()], create_file_indicators=True, get_malware_config=True
    )
    data = serialize_bundle(result.bundle)  # UTF-8 encodable: no lone surrogate got through
    assert validate_bundle(json.loads(data)) == []
    names = [o.get("name", "") for o in result.bundle["objects"] if o["type"] == "file"]
    assert all("\udc80" not in name for name in names)


def test_a_file_name_of_100000_characters_with_nul_is_capped_and_cleaned() -> None:
    item = factories.file_notification(meaningful_name="\x00" + "a" * 100_000, names=["b\nc"])
    file = one(build([item]), "file")
    assert file["name"] == "a" * common.NAME_MAX_LENGTH
    assert file["x_opencti_additional_names"] == ["b c"]


# -- one id, one content: in any window, in any order (but a detection Indicator's validity) --


def by_id(result: LivehuntBundle) -> dict[str, dict[str, Any]]:
    return {obj["id"]: obj for obj in result.bundle["objects"]}


VALIDITY = ("valid_from", "modified")


def settled(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what each window re-confirms: a detection Indicator's validity."""
    if obj["type"] == "indicator" and obj["pattern_type"] == "stix":
        return {key: value for key, value in obj.items() if key not in VALIDITY}
    return obj


def assert_shared_objects_identical(*results: LivehuntBundle) -> set[str]:
    """Every id found in several bundles has the same content in each, a detection Indicator's
    validity aside; the shared ids."""
    seen: dict[str, dict[str, Any]] = {}
    shared: set[str] = set()
    for result in results:
        for object_id, obj in by_id(result).items():
            obj = settled(obj)
            if object_id in seen:
                shared.add(object_id)
                assert obj == seen[object_id], object_id
            seen[object_id] = obj
    return shared


def test_an_ip_rule_indicator_is_the_same_for_ipv4_and_ipv6_subjects() -> None:
    """VT's vt.net.ip matches both families: the Indicator's content comes from the rule."""
    rulesets = {"ruleset-net": NET_RULESET}
    v4 = factories.ip_notification("203.0.113.7", notification_date=DATE)
    v6 = factories.ip_notification("2001:db8::1", notification_date=DATE + 60)
    v6_first = factories.ip_notification("2001:db8::1", notification_date=DATE - 60)
    windows = [
        build([v4], rulesets),
        build([v6], rulesets),
        build([v4, v6], rulesets),
        build([v6_first, v4], rulesets),
    ]
    indicators = [yara_indicator(result) for result in windows]
    assert len({indicator["id"] for indicator in indicators}) == 1
    assert all(indicator == indicators[0] for indicator in indicators)
    assert indicators[0]["x_opencti_main_observable_type"] == "IPv4-Addr"
    # the based-on relationships still point at the observable each notification is about
    assert ("indicator", "based-on", "ipv6-addr") in relations(windows[1])
    assert indicators[0]["id"] in assert_shared_objects_identical(*windows)


def test_shared_objects_do_not_depend_on_the_window_or_the_first_notification() -> None:
    """A file, its rule, its config and their relationships, notified in two windows, each
    time first reached by a different notification: every shared id, identical content."""
    first_seen = DATE - 10 * 86_400
    config = factories.malware_config()

    def sample(date: int, notification_id: str) -> dict[str, Any]:
        return factories.file_notification(
            notification_date=date,
            notification_id=notification_id,
            first_submission_date=first_seen,
            malware_config=config,
        )

    other = factories.file_notification("other", notification_date=DATE - 600)
    item = sample(DATE, "n-early")
    artifacts = artifact_record(item)
    options: dict[str, Any] = {
        "get_malware_config": True,
        "create_file_indicators": True,
        "create_ip_indicators": True,
        "create_domain_name_indicators": True,
        "create_url_indicators": True,
    }
    early = build([item], RULESETS, artifacts, **options)
    # five hours later, after another file matched the same rule first
    late = build([sample(DATE + 5 * 3600, "n-late"), other], RULESETS, artifacts, **options)
    shared = assert_shared_objects_identical(early, late)
    shared_types = {object_id.split("--")[0] for object_id in shared}
    assert {"indicator", "file", "artifact", "relationship", "note", "domain-name"} <= shared_types
    based_on = [
        r
        for r in of_type(early, "relationship")
        if r["relationship_type"] == "based-on" and r["id"] in shared
    ]
    assert len(based_on) >= 2  # YARA -> File, File Indicator -> File (and config indicators)
    # each window's detection Indicators are valid from its own notification, created at the
    # file's first submission
    moved = [i["id"] for i in detection_indicators(early)]
    assert len(moved) == 4 and set(moved) <= shared
    for window, matched in ((early, DATE), (late, DATE + 5 * 3600)):
        for indicator_id in moved:
            indicator = by_id(window)[indicator_id]
            assert (
                indicator["valid_from"] == indicator["modified"] == common.stix_timestamp(matched)
            )
            assert indicator["created"] == common.stix_timestamp(first_seen)


def test_a_subject_is_its_own_observable_even_when_a_config_names_it_first() -> None:
    host = "c2.evil-domain.net"
    config_file = factories.file_notification(
        notification_date=DATE - 60, malware_config=factories.malware_config()
    )
    subject = factories.domain_notification(host, notification_date=DATE)
    rulesets = {**RULESETS, "ruleset-net": NET_RULESET}
    alone = build([subject], rulesets, livehunt_tag_prefix="vt:")
    with_config = build(
        [config_file, subject], rulesets, get_malware_config=True, livehunt_tag_prefix="vt:"
    )
    (mine,) = [d for d in of_type(alone, "domain-name") if d["value"] == host]
    (theirs,) = [d for d in of_type(with_config, "domain-name") if d["value"] == host]
    labels = theirs.pop("x_opencti_labels")
    assert set(mine.pop("x_opencti_labels", [])) <= set(labels)
    mine.pop("x_opencti_labels", None)
    assert theirs == mine  # the subject's score, description and VT link, not the config's


@pytest.mark.parametrize(
    ("condition", "attributes", "expected"),
    [
        ("vt.net.url.path matches /a/ and vt.net.ip.reputation < 0", {}, "Url"),
        ("vt.net.domain.new_domain and vt.net.ip.reputation < 0", {}, "Domain-Name"),
        ("vt.net.ip.reputation < -10", {}, "IPv4-Addr"),
        ("$a", {}, "StixFile"),
        # a literal that spells an entity says nothing about what the rule hunts
        ('$a and vt.metadata.file_name contains "vt.net.url"', {}, "StixFile"),
        ("$a and vt.metadata.file_name matches /vt.net.domain/", {}, "StixFile"),
        ('filesize \\ 2 > 10 and vt.net.domain.raw == "x"', {}, "Domain-Name"),
        # VT's ruleset type when the condition names no entity
        ("$a", {"match_object_type": "ip_address"}, "IPv4-Addr"),
        ("$a", {"match_object_type": "url"}, "Url"),
        ("$a", {"match_object_type": "file"}, "StixFile"),
        ("vt.net.ip.reputation < 0", {"match_object_type": "domain"}, "IPv4-Addr"),
    ],
)
def test_rule_observable_type(condition: str, attributes: dict[str, Any], expected: str) -> None:
    rule = find_rule(factories.yara_rule("R", condition=condition), "R")
    assert rule is not None
    assert rule_observable_type(rule, attributes) == expected
