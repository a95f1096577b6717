"""What the Dagster UI says about Livehunt: owners, the connector replaced, descriptions."""

from datetime import timedelta

import dagster as dg

from vt_pipeline.definitions import defs
from vt_pipeline.livehunt.schedules import spelled

LIVEHUNT_ASSETS = (
    "livehunt_notifications",
    "livehunt_files",
    "livehunt_rulesets",
    "livehunt_artifacts",
    "livehunt_stix_bundles",
    "livehunt_opencti_delivery",
)


def test_every_livehunt_asset_has_an_owner_and_names_the_connector_it_replaces() -> None:
    graph = defs.resolve_asset_graph()
    for name in LIVEHUNT_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.owners == ["team:threat-intel"], name
        assert node.tags.get("replaces") == "virustotal-livehunt-notifications", name
        assert node.description, name


def test_the_job_and_the_schedule_say_what_they_do() -> None:
    job = defs.resolve_job_def("livehunt_job")
    assert job.description is not None
    assert "OpenCTI" in job.description and "deleted on VirusTotal" in job.description
    assert dg.AssetKey("livehunt_opencti_delivery") in job.asset_layer.executable_asset_keys
    schedule = defs.resolve_schedule_def("livehunt_fresh_windows")
    assert schedule.description is not None
    assert "livehunt_job" in schedule.description and "previous" in schedule.description


def test_tick_periods_in_words() -> None:
    assert spelled(timedelta(minutes=5)) == "5 minutes"
    assert spelled(timedelta(minutes=1)) == "1 minute"
    assert spelled(timedelta(hours=1)) == "1 hour"
    assert spelled(timedelta(hours=24)) == "24 hours"
