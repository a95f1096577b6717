"""Generic STIX helpers: ids agree with stix2 / pycti, timestamps, markings, canonical bytes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import stix2
from pycti import Identity, MarkingDefinition, Note, StixCoreRelationship
from pycti.utils.constants import CustomObservableHostname
from stix2patterns.exceptions import ParseException
from stix2patterns.v21.pattern import Pattern

from vt_pipeline.stix import common

SHA256 = "a" * 64
MD5 = "b" * 32
SHA1 = "c" * 40


def test_stix_timestamp_is_utc_with_milliseconds() -> None:
    assert common.stix_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert common.stix_timestamp(1_763_632_800) == "2025-11-20T10:00:00.000Z"
    assert common.stix_timestamp(1_763_632_800.9) == "2025-11-20T10:00:00.000Z"
    assert common.human_timestamp(1_763_632_800) == "2025-11-20T10:00:00Z"


def test_stix_timestamp_pads_early_years_and_rejects_unspellable_ones() -> None:
    seconds = int(datetime(999, 3, 4, tzinfo=UTC).timestamp())
    assert common.stix_timestamp(seconds) == "0999-03-04T00:00:00.000Z"
    for bad in (10**12, -(10**12), True):
        with pytest.raises(ValueError):
            common.stix_timestamp(bad)


def test_moment_timestamp_keeps_milliseconds_in_utc_and_refuses_naive_times() -> None:
    moment = datetime(2025, 11, 20, 11, 30, 15, 250_999, tzinfo=timezone(timedelta(hours=1)))
    assert common.moment_timestamp(moment) == "2025-11-20T10:30:15.250Z"
    assert common.moment_timestamp(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00.000Z"
    with pytest.raises(ValueError, match="time zone"):
        common.moment_timestamp(datetime(2025, 11, 20, 10, 30))
    with pytest.raises(ValueError, match="years 1-9999"):
        common.moment_timestamp(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2))))


def test_normalize_label_matches_upstream() -> None:
    assert common.normalize_label("Foo Bar-1.x") == "foo_bar_1_x"
    assert common.normalize_label("ÉTÉ/2") == "_t__2"


def test_escaped_pattern_parses_and_round_trips() -> None:
    value = "http://x.example/a'b\\c\"d"
    pattern = common.value_pattern("url", value)
    comparisons = Pattern(pattern).inspect().comparisons["url"]
    literal = comparisons[0][2]
    assert re.sub(r"\\(.)", r"\1", literal[1:-1]) == value
    naive = f"[url:value = '{value}']"
    with pytest.raises(ParseException):
        Pattern(naive)


@pytest.mark.parametrize(
    ("stix_object", "contributing"),
    [
        (stix2.URL(value="http://x.example/ü"), {"value": "http://x.example/ü"}),
        (stix2.DomainName(value="x.example"), {"value": "x.example"}),
        (stix2.IPv4Address(value="203.0.113.7"), {"value": "203.0.113.7"}),
        (stix2.IPv6Address(value="2001:db8::1"), {"value": "2001:db8::1"}),
        (
            stix2.File(hashes={"SHA-256": SHA256, "MD5": MD5}, name="a.exe"),
            {"hashes": {"SHA-256": SHA256, "MD5": MD5}, "name": "a.exe"},
        ),
        (
            stix2.File(hashes={"SHA-256": SHA256, "SHA-1": SHA1}),
            {"hashes": {"SHA-256": SHA256, "SHA-1": SHA1}, "name": None},
        ),
        (
            stix2.Artifact(hashes={"SHA-256": SHA256}, url="https://x.example/a"),
            {"hashes": {"SHA-256": SHA256}},
        ),
    ],
)
def test_sco_id_equals_stix2(stix_object: stix2.base._STIXBase, contributing: dict) -> None:
    assert common.sco_id(stix_object["type"], contributing) == stix_object["id"]


def test_hostname_id_equals_pycti_custom_observable() -> None:
    observable = common.value_observable(
        "hostname", "c2host", created_by_ref="identity--x", object_marking_refs=[]
    )
    assert observable["id"] == CustomObservableHostname(value="c2host").id


def test_value_observable_uses_the_keys_pycti_reads_and_omits_empty_ones() -> None:
    ref = common.external_reference("VirusTotal", "https://vt.example/x")
    full = common.value_observable(
        "domain-name",
        "x.example",
        created_by_ref="identity--a",
        object_marking_refs=["marking-definition--m"],
        score=42,
        description="d",
        labels=["l"],
        external_references=[ref],
    )
    assert full["x_opencti_created_by_ref"] == "identity--a"
    assert full["x_opencti_score"] == 42
    assert full["x_opencti_description"] == "d"
    assert full["x_opencti_labels"] == ["l"]
    assert full["x_opencti_external_references"] == [ref]
    bare = common.value_observable(
        "domain-name", "x.example", created_by_ref="identity--a", object_marking_refs=[]
    )
    for key in ("x_opencti_score", "x_opencti_description", "x_opencti_labels"):
        assert key not in bare


def test_author_identity_has_pycti_id_and_fixed_dates() -> None:
    author = common.author_identity("VirusTotal Livehunt Notifications")
    assert author["id"] == Identity.generate_id("VirusTotal Livehunt Notifications", "organization")
    assert author["created"] == author["modified"] == common.FIXED_TIMESTAMP
    stix2.parse(author, allow_custom=True)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("clear", stix2.TLP_WHITE),
        ("white", stix2.TLP_WHITE),
        ("green", stix2.TLP_GREEN),
        ("AMBER", stix2.TLP_AMBER),
        ("TLP:RED", stix2.TLP_RED),
    ],
)
def test_tlp_marking_is_stix2_object(level: str, expected: stix2.MarkingDefinition) -> None:
    assert common.tlp_marking(level) == json.loads(expected.serialize())


@pytest.mark.parametrize("level", ["amber+strict", "AMBER_STRICT", "TLP:AMBER+STRICT"])
def test_tlp_amber_strict_is_opencti_statement(level: str) -> None:
    marking = common.tlp_marking(level)
    assert marking["id"] == MarkingDefinition.generate_id("TLP", "TLP:AMBER+STRICT")
    assert marking["definition_type"] == "statement"
    assert marking["x_opencti_definition_type"] == "TLP"
    assert marking["x_opencti_definition"] == "TLP:AMBER+STRICT"
    stix2.parse(marking, allow_custom=True)


def test_unknown_tlp_is_an_error_not_green() -> None:
    with pytest.raises(ValueError):
        common.tlp_marking("purple")


def test_relationship_has_pycti_id_and_given_dates() -> None:
    rel = common.relationship(
        "based-on",
        "indicator--1",
        "file--2",
        created="2025-01-01T00:00:00.000Z",
        created_by_ref="identity--a",
        object_marking_refs=["marking-definition--m"],
    )
    assert rel["id"] == StixCoreRelationship.generate_id("based-on", "indicator--1", "file--2")
    assert rel["created"] == rel["modified"] == "2025-01-01T00:00:00.000Z"


def test_note_id_depends_on_content_only() -> None:
    kwargs = {"abstract": "a", "object_refs": ["file--1"], "created_by_ref": "identity--a"}
    first = common.note(
        "body", created="2025-01-01T00:00:00.000Z", object_marking_refs=[], **kwargs
    )
    later = common.note(
        "body", created="2026-01-01T00:00:00.000Z", object_marking_refs=[], **kwargs
    )
    assert first["id"] == later["id"] == Note.generate_id(None, "body")


def test_serialize_bundle_is_canonical() -> None:
    objects = [
        {"type": "x-b", "id": "x-b--2", "name": "é ü \u202e"},
        {"type": "x-a", "id": "x-a--1", "z": 1, "a": 2},
    ]
    bundle = common.make_bundle(objects)
    data = common.serialize_bundle(bundle)
    text = data.decode("utf-8")
    assert text.index("x-a--1") < text.index("x-b--2")
    assert "é ü \u202e" in text  # not \u-escaped
    assert ", " not in text and ": " not in text
    assert text.index('"a":2') < text.index('"z":1')
    assert json.loads(data) == {**bundle, "objects": sorted(objects, key=lambda o: o["id"])}


def test_duplicates_are_resolved_whatever_the_order() -> None:
    one = {"type": "x-a", "id": "x-a--1", "name": "one"}
    two = {"type": "x-a", "id": "x-a--1", "name": "two"}
    forward = common.serialize_bundle({"type": "bundle", "id": "bundle--1", "objects": [one, two]})
    backward = common.serialize_bundle({"type": "bundle", "id": "bundle--1", "objects": [two, one]})
    assert forward == backward
    assert len(json.loads(forward)["objects"]) == 1


def test_serialize_bundle_accepts_stix2_objects() -> None:
    data = common.serialize_bundle(
        {"type": "bundle", "id": "bundle--1", "objects": [stix2.TLP_RED]}
    )
    assert json.loads(data)["objects"] == [json.loads(stix2.TLP_RED.serialize())]


def test_bundle_id_depends_on_the_set_of_ids_only() -> None:
    assert common.bundle_id(["a--1", "b--2"]) == common.bundle_id(["b--2", "a--1", "a--1"])
    assert common.bundle_id(["a--1"]) != common.bundle_id(["a--1", "b--2"])
    assert common.make_bundle([]) == {
        "type": "bundle",
        "id": common.bundle_id([]),
        "objects": [],
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("invoice.exe", "invoice.exe"),
        ("a\x00b", "ab"),
        ("line1\r\nline2\tend", "line1 line2 end"),
        ("evil\u202eexe.pdf", "evilexe.pdf"),
        ("\u2066iso\u2069 \u200fmark", "iso mark"),
        ("esc\x1b[31m\x9bred", "esc[31mred"),
        ("lone\udc80surrogate", "lonesurrogate"),
        ("  padded  ", "padded"),
        ("\x00\n", ""),
        (None, ""),
        (42, ""),
        ("x" * 100_000, "x" * 255),
        ("日本語のファイル.exe", "日本語のファイル.exe"),
    ],
)
def test_clean_name(value: object, expected: str) -> None:
    assert common.clean_name(value) == expected


def test_clean_name_caps_at_the_given_length() -> None:
    assert common.clean_name("abcdef", max_length=3) == "abc"


def test_canonical_json_equals_stix2_canonicalize_on_hostile_text() -> None:
    """The fast encoder behind every id writes what RFC 8785 (stix2) writes: quotes,
    backslashes, every control character, DEL, non-ASCII, emoji, nested hash objects."""
    import random
    import string

    from stix2.canonicalization.Canonicalize import canonicalize

    rng = random.Random(2026)
    alphabet = [chr(code) for code in range(128)] + ["é", "\u2028", "😀", "Ω"]
    checked = 0
    for _ in range(3000):
        data: dict = {
            "".join(
                rng.choice(string.ascii_letters + "_-") for _ in range(rng.randint(1, 6))
            ): "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(1, 4))
        }
        if rng.random() < 0.3:
            data["hashes"] = {rng.choice(["MD5", "SHA-256"]): "".join(rng.choices(alphabet, k=8))}
        assert common.canonical_json(data) == canonicalize(data, utf8=False), data
        checked += 1
    assert checked == 3000


def test_relationship_id_equals_pycti() -> None:
    pairs = [
        ("related-to", "incident--1", "file--2"),
        ("based-on", 'indicator--"q"', "url--\\x"),
        ("related-to", "a\x7fb", "c\nd"),
    ]
    for rel_type, source, target in pairs:
        assert common.relationship_id(rel_type, source, target) == (
            StixCoreRelationship.generate_id(rel_type, source, target)
        )
