"""The hunting rules sensor run by a real `dagster-daemon` over the repository's dagster.yaml:
configured from the upstream variables only, its cursor kept by the instance, the
`hunting_rulesets` asset recorded there (what the UI shows), and a daemon killed between two
ticks creating nothing twice."""

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.stix.hunting_rules import marked_indicator
from vt_pipeline_tests.conftest import PREMIUM_KEY
from vt_pipeline_tests.deploy.topology import environ_without
from vt_pipeline_tests.enrichment.test_reliability_daemon import REPO_ROOT, Deployment

pytestmark = pytest.mark.integration

RULE = 'rule daemon_rule { strings: $a = "daemon" condition: $a }'
SENSOR = "hunting_rules_sensor"


@pytest.fixture
def deployment(
    tmp_path: Path, vt_emulator: VirusTotalEmulator, opencti: OpenCTIEmulator
) -> Iterator[Deployment]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **environ_without(("DAGSTER_", "VIRUSTOTAL_", "OPENCTI_", "CONNECTOR_", "VT_PIPELINE_")),
        "PYTHONPATH": str(REPO_ROOT),
        "VIRUSTOTAL_API_URL": vt_emulator.url,
        "VIRUSTOTAL_LIVEHUNT_TOKEN": PREMIUM_KEY,  # upstream's name for the key
        "OPENCTI_URL": opencti.url,
        "OPENCTI_TOKEN": opencti.token,
        "CONNECTOR_ID": str(uuid.uuid4()),
        "CONNECTOR_LIVE_STREAM_ID": opencti.live_stream.create_stream("YARA"),
        "VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS": '["alice"]',
        "VT_PIPELINE_STORAGE_DIR": str(tmp_path / "storage"),
        "VT_PIPELINE_ENRICHMENT_MODE": "batch",  # no permanent drain run: not what is tested
        "VT_PIPELINE_HUNTING_RULES_INTERVAL_SECONDS": "5",
    }
    running = Deployment(home, env)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def managed(vt: VirusTotalEmulator) -> list[dict]:
    return [r for r in vt.api.hunting.all() if marked_indicator(r["attributes"]["name"])]


def recorded(instance: dg.DagsterInstance) -> list[dict]:
    """The rows of the last `hunting_rulesets` materialization the instance holds."""
    event = instance.get_latest_materialization_event(dg.AssetKey("hunting_rulesets"))
    if event is None or event.asset_materialization is None:
        return []
    return [dict(r.data) for r in event.asset_materialization.metadata["rulesets"].value.records]


def cursor(instance: dg.DagsterInstance) -> dict:
    states = [s for s in instance.all_instigator_state() if s.name == SENSOR]
    assert len(states) == 1
    data = states[0].instigator_data
    return json.loads(data.cursor) if data is not None and data.cursor else {}


def test_the_daemon_keeps_a_ruleset_per_yara_indicator(
    deployment: Deployment, opencti: OpenCTIEmulator, vt_emulator: VirusTotalEmulator
) -> None:
    indicator = opencti.create_indicator(RULE, pattern_type="yara", name="Daemon", detection=True)
    (ruleset,) = deployment.wait_for(lambda: managed(vt_emulator), "the ruleset on VT", 180)
    assert ruleset["attributes"]["rules"] == RULE
    assert vt_emulator.api.hunting.editors(ruleset["id"]) == [{"type": "user", "id": "alice"}]
    with deployment.instance() as instance:
        rows = deployment.wait_for(
            lambda: [r for r in recorded(instance) if r["indicator_id"] == indicator],
            "hunting_rulesets recorded in the instance",
            60,
        )
        assert rows[0]["ruleset_id"] == ruleset["id"] and rows[0]["state"] == "active"
        assert cursor(instance)["rulesets"]
    # killed between two ticks, started again: the cursor is the instance's, nothing twice
    deployment.crash()
    opencti.edit_entity(indicator, x_opencti_detection=False)
    deployment.start()
    deployment.wait_for(
        lambda: not vt_emulator.api.hunting.get(ruleset["id"])["attributes"]["enabled"],
        "the ruleset disabled",
        180,
    )
    assert len(managed(vt_emulator)) == 1 and vt_emulator.count("hunting_ruleset_create") == 1
