"""End to end: an analyst's YARA Indicator in OpenCTI -> a VT Livehunt ruleset -> its
notifications back through Livehunt onto that same Indicator (emulators, real pycti, real
RabbitMQ, real Dagster instance)."""

import json
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.hunting_rules import definitions as hunting_definitions
from vt_pipeline.hunting_rules.definitions import hunting_rules_sensor, hunting_rulesets
from vt_pipeline.hunting_rules.settings import HuntingRulesSettings
from vt_pipeline.stix.hunting_rules import marked_indicator
from vt_pipeline_tests.conftest import ResourcesFactory, materialize_hours, window
from vt_pipeline_tests.livehunt.test_delivery import cti

pytestmark = pytest.mark.integration

HOUR = 2
RULE = """rule analyst_dropper : dropper
{
    meta:
        description = "Written in OpenCTI by an analyst"
    strings:
        $a = "NtUnmapViewOfSection" ascii
    condition:
        uint16(0) == 0x5A4D and $a
}"""


class Deployment:
    """The sensor's resources against the emulators, and its ticks with their cursor."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        opencti: OpenCTIEmulator,
        resources: dict[str, Any],
        **settings: Any,
    ) -> None:
        self.instance = instance
        self.opencti = opencti
        self.stream_id = opencti.live_stream.create_stream("YARA indicators")
        self.resources = {
            "opencti": cti(opencti),
            "virustotal": resources["virustotal"],
            "hunting_rules_settings": HuntingRulesSettings(
                live_stream_id=self.stream_id, **settings
            ),
        }
        self.cursor: str | None = None

    def tick(self, cursor: str | None = "saved") -> dg.SensorResult:
        """One sensor tick from the saved cursor (or the one given); the cursor is saved."""
        start = self.cursor if cursor == "saved" else cursor
        with dg.build_sensor_context(
            instance=self.instance, cursor=start, resources=self.resources
        ) as context:
            result = hunting_rules_sensor(context)
        assert isinstance(result, dg.SensorResult), result
        self.cursor = result.cursor
        return result


def managed(vt: VirusTotalEmulator) -> list[dict[str, Any]]:
    """The rulesets VT holds that were made from OpenCTI Indicators."""
    return [r for r in vt.api.hunting.all() if marked_indicator(r["attributes"]["name"])]


def table(result: dg.SensorResult) -> list[dict[str, Any]]:
    (event,) = [e for e in result.asset_events if e.asset_key == hunting_rulesets.key]
    return [dict(r.data) for r in event.metadata["rulesets"].value.records]


def window_files(vt: VirusTotalEmulator, hour: int = HOUR) -> list[str]:
    lo, hi = window(hour)
    seen: dict[str, None] = {}
    for entry in vt.corpus.stream:
        if lo <= entry.date < hi and entry.object_type == "file":
            seen.setdefault(entry.object_id, None)
    return list(seen)


def test_the_hunting_loop_closes_on_the_analysts_indicator(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    resources = livehunt_resources(opencti=cti(opencti))
    deployment = Deployment(
        dagster_instance,
        opencti,
        resources,
        notification_emails='["hunt@example.com"]',
        shared_owners='["alice"]',
    )
    first = deployment.tick()
    assert first.asset_events  # the first tick records the (empty) asset

    # An analyst writes a YARA Indicator with detection on.
    indicator_id = opencti.create_indicator(
        RULE, pattern_type="yara", name="Analyst dropper", detection=True
    )
    result = deployment.tick()
    (ruleset,) = managed(vt_emulator)
    attrs = ruleset["attributes"]
    assert attrs["rules"] == RULE and attrs["enabled"] is True
    assert attrs["name"] == f"Analyst dropper [OpenCTI {indicator_id}]"
    assert attrs["notification_emails"] == ["hunt@example.com"] and attrs["limit"] == 100
    assert vt_emulator.api.hunting.editors(ruleset["id"]) == [{"type": "user", "id": "alice"}]
    (row,) = table(result)
    assert row["indicator_id"] == indicator_id and row["ruleset_id"] == ruleset["id"]
    assert row["state"] == "active" and row["changed"]
    # the ruleset's link is on the Indicator (once OpenCTI's worker has ingested it)
    assert opencti.wait_until(lambda: bool(opencti.external_references_of(indicator_id)))
    refs = opencti.external_references_of(indicator_id)
    assert [r["external_id"] for r in refs if r["source_name"] == "VirusTotal Livehunt"] == [
        ruleset["id"]
    ]
    # the link's update event comes back on the stream: nothing changes, no VT call
    calls = sum(vt_emulator.stats().get("ruleset_update", {}).values())
    quiet = deployment.tick()
    assert not quiet.asset_events and len(managed(vt_emulator)) == 1
    assert sum(vt_emulator.stats().get("ruleset_update", {}).values()) == calls

    # VT's Livehunt matches files with it; the Livehunt chain delivers the window.
    files = window_files(vt_emulator)[:4]
    lo, _ = window(HOUR)
    for offset, sha256 in enumerate(files):
        vt_emulator.api.hunting.notify(ruleset["id"], sha256, lo + 60 + offset)
    indicators_before = len(opencti.objects("indicator"))
    delivered = materialize_hours(dagster_instance, resources, HOUR, deliver=True)
    assert delivered.success
    # the notifications are linked to the analyst's own Indicator: same id, no copy
    yara = [i for i in opencti.objects("indicator") if i.get("pattern_type") == "yara"]
    assert sum(RULE.strip() in i["pattern"] for i in yara) == 1
    assert not [
        i for i in yara if "rule analyst_dropper" in i["pattern"] and i["id"] != indicator_id
    ]
    based_on = opencti.relationships_of(indicator_id, "based-on", direction="from")
    matched = {opencti.get(r["target_ref"])["hashes"]["SHA-256"] for r in based_on}
    assert matched and matched <= set(files)
    assert opencti.get(indicator_id)["name"] == "Analyst dropper"
    assert len(opencti.objects("indicator")) >= indicators_before

    # Detection off: the ruleset is disabled, same id (VT_PIPELINE_HUNTING_RULES_ON_DETECTION_OFF)
    opencti.edit_entity(indicator_id, x_opencti_detection=False)
    off = deployment.tick()
    (ruleset_after,) = managed(vt_emulator)
    assert ruleset_after["id"] == ruleset["id"] and ruleset_after["attributes"]["enabled"] is False
    assert table(off)[0]["state"] == "disabled"
    assert table(off)[0]["reason"] == "detection turned off"
    # back on, then edited: the same ruleset, edited in place (upstream deleted and re-created)
    opencti.edit_entity(indicator_id, x_opencti_detection=True)
    edited_rule = RULE.replace("NtUnmapViewOfSection", "ZwUnmapViewOfSection")
    new_id = opencti.edit_entity(indicator_id, pattern=edited_rule)
    deployment.tick()
    (edited,) = managed(vt_emulator)
    assert edited["id"] == ruleset["id"] and edited["attributes"]["enabled"] is True
    assert edited["attributes"]["rules"] == edited_rule
    assert edited["attributes"]["name"] == f"Analyst dropper [OpenCTI {new_id}]"
    # deleted in OpenCTI (CONNECTOR_LIVE_STREAM_LISTEN_DELETE=true): the ruleset goes
    opencti.delete_entity(new_id)
    gone = deployment.tick()
    assert managed(vt_emulator) == [] and table(gone)[0]["state"] == "deleted"


def test_a_rule_that_does_not_compile_is_reported_and_never_sent(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    deployment = Deployment(dagster_instance, opencti, livehunt_resources())
    broken = opencti.create_indicator(
        "rule 9broken { condition: true }", pattern_type="yara", name="Broken", detection=True
    )
    cut = opencti.create_indicator(
        'rule cut { strings: $a = "x" condition: $a and ',
        pattern_type="yara",
        name="Cut",
        detection=True,
    )
    good = opencti.create_indicator(RULE, pattern_type="yara", name="Good", detection=True)
    opencti.create_indicator(
        RULE.replace("analyst_dropper", "no_detection"), pattern_type="yara", name="Quiet"
    )
    result = deployment.tick()
    assert vt_emulator.count("hunting_ruleset_create") == 1  # the good one only
    (only,) = managed(vt_emulator)
    assert marked_indicator(only["attributes"]["name"]) == good
    rows = {r["indicator_id"]: r for r in table(result)}
    assert rows[broken]["state"] == "rejected" and "cannot parse" in rows[broken]["reason"]
    assert rows[cut]["state"] == "rejected" and "no YARA rule" in rows[cut]["reason"]
    assert opencti.wait_until(lambda: bool(opencti.notes_about(broken)))
    notes = opencti.notes_about(broken)
    assert len(notes) == 1 and "does not compile" in notes[0]["content"]
    # the note's own update event and a re-read add nothing
    deployment.tick()
    deployment.tick(cursor=None)
    assert vt_emulator.count("hunting_ruleset_create") == 1
    assert len(opencti.notes_about(broken)) == 1
    # fixed by the analyst: sent
    fixed = opencti.edit_entity(broken, pattern=RULE.replace("analyst_dropper", "fixed"))
    assert vt_emulator.count("hunting_ruleset_create") == 1
    deployment.tick()
    assert {marked_indicator(r["attributes"]["name"]) for r in managed(vt_emulator)} == {
        good,
        fixed,
    }
    # a rule never sent, its detection turned off: VT is not asked (the cursor knows)
    opencti.edit_entity(cut, x_opencti_detection=False)
    listings = vt_emulator.count("hunting_rulesets")
    off = deployment.tick()
    assert vt_emulator.count("hunting_rulesets") == listings
    row = next(r for r in table(off) if r["indicator_id"] == cut)
    assert (row["state"], row["reason"]) == ("deleted", "detection turned off")


def test_a_crash_between_the_vt_call_and_the_cursor_save_creates_nothing_twice(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    deployment = Deployment(dagster_instance, opencti, livehunt_resources())
    deployment.tick()
    before_crash = deployment.cursor
    indicator_id = opencti.create_indicator(RULE, pattern_type="yara", name="A", detection=True)
    crashed = deployment.tick()  # VT created the ruleset ... and the cursor is never saved
    assert len(managed(vt_emulator)) == 1
    replayed = deployment.tick(cursor=before_crash)
    (ruleset,) = managed(vt_emulator)
    assert vt_emulator.count("hunting_ruleset_create") == 1
    assert json.loads(replayed.cursor)["rulesets"] == json.loads(crashed.cursor)["rulesets"]
    # the replay read on past the crashed tick's end: the link's own update event
    replayed_at = json.loads(replayed.cursor)["stream"]["start_from"]
    assert replayed_at >= json.loads(crashed.cursor)["stream"]["start_from"]
    assert marked_indicator(ruleset["attributes"]["name"]) == indicator_id
    # with no cursor at all (a reset): still one ruleset
    deployment.tick(cursor=None)
    assert len(managed(vt_emulator)) == 1 and vt_emulator.count("hunting_ruleset_create") == 1
    # deleted on VT behind the deployment's back, then renamed in OpenCTI: made again
    vt_emulator.api.hunting.delete(ruleset["id"])
    opencti.edit_entity(indicator_id, name="A renamed")
    deployment.tick()
    (again,) = managed(vt_emulator)
    assert again["id"] != ruleset["id"]
    assert again["attributes"]["name"] == f"A renamed [OpenCTI {indicator_id}]"


def test_upstream_made_rulesets_are_adopted_and_found_past_the_first_page(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    hunting = vt_emulator.api.hunting
    for number in range(90):  # a team's rulesets: the one to adopt is on the third page
        hunting.create(
            {
                "data": {
                    "type": "hunting_ruleset",
                    "attributes": {
                        "name": f"team ruleset {number}",
                        "rules": RULE.replace("analyst", f"t{number}"),
                    },
                }
            }
        )
    upstream = hunting.create(
        {
            "data": {
                "type": "hunting_ruleset",
                "attributes": {"name": "Upstream made", "rules": RULE},
            }
        }
    )
    deployment = Deployment(dagster_instance, opencti, livehunt_resources())
    indicator_id = opencti.create_indicator(
        RULE, pattern_type="yara", name="Upstream made", detection=True
    )
    # two copies for another Indicator (a create retried after its answer was lost)
    other_rule = RULE.replace("analyst", "twice")
    other = opencti.create_indicator(other_rule, pattern_type="yara", name="Twice", detection=True)
    copies = [
        hunting.create(
            {
                "data": {
                    "type": "hunting_ruleset",
                    "attributes": {"name": f"Twice [OpenCTI {other}]", "rules": other_rule},
                }
            }
        )
        for _ in range(2)
    ]
    vt_emulator.reset_stats()
    result = deployment.tick()
    assert vt_emulator.count("hunting_ruleset_create") == 0
    assert vt_emulator.count("hunting_rulesets") == 3  # 98 rulesets, 40 a page, listed once
    adopted = hunting.get(upstream["id"])
    assert adopted["attributes"]["name"] == f"Upstream made [OpenCTI {indicator_id}]"
    assert adopted["attributes"]["rules"] == RULE
    assert hunting.get(copies[0]["id"]) is not None and hunting.get(copies[1]["id"]) is None
    assert len(managed(vt_emulator)) == 2
    rows = {r["indicator_id"]: r for r in table(result)}
    assert rows[indicator_id]["ruleset_id"] == upstream["id"]
    assert rows[other]["ruleset_id"] == copies[0]["id"]


def test_a_tick_cut_short_by_slow_vt_calls_goes_on_next_tick_and_creates_nothing_twice(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hunting_definitions, "APPLY_SECONDS", 1.0)
    deployment = Deployment(dagster_instance, opencti, livehunt_resources())
    for number in range(3):
        opencti.create_indicator(
            RULE.replace("analyst", f"slow{number}"),
            pattern_type="yara",
            name=f"Slow {number}",
            detection=True,
        )
    vt_emulator.set_latency(600)  # a listing and a create: more than the tick's VT time
    slow = deployment.tick()
    assert "took the tick's 1 s" in slow.skip_reason.skip_message
    vt_emulator.set_latency(0)
    deployment.tick()
    names = sorted(r["attributes"]["name"].split(" [")[0] for r in managed(vt_emulator))
    assert names == ["Slow 0", "Slow 1", "Slow 2"]  # each once, whatever was cut short
