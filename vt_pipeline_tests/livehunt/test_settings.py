"""Upstream environment variables configure the Livehunt chain unchanged."""

from datetime import timedelta

import pytest

from vt_pipeline.livehunt.schedules import interval_to_cron, livehunt_interval
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.resources import api_key_env_name


def test_defaults_are_upstream_defaults() -> None:
    options = LivehuntSettings.from_env({}).to_options()
    assert options.tlp_level == "clear"
    assert options.alert_prefix == "VT "
    assert (options.min_positives, options.min_file_size, options.max_file_size) == (
        1,
        1000,
        52_428_800,
    )
    assert options.max_age_days == 3
    assert options.create_alert and options.create_file and options.create_yara_rule
    assert not options.upload_artifact and not options.create_file_indicators


def test_upstream_variable_names_and_formats() -> None:
    env = {
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_EXTENSIONS": "exe, .DLL,",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_CREATE_ALERT": "False",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_UPLOAD_ARTIFACT": "TRUE",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_MIN_POSITIVES": "0",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_MAX_AGE_DAYS": "7",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_TLP_LEVEL": "AMBER_STRICT",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_AV_LIST": "Kaspersky,Symantec",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_FILTER_WITH_TAG": "apt",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_LIMIT": "50",
        "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_ALERT_PREFIX": "",
    }
    settings = LivehuntSettings.from_env(env)
    options = settings.to_options()
    assert options.normalized_extensions() == {"exe", "dll"}
    assert not options.create_alert and options.upload_artifact
    assert options.min_positives == 0 and options.max_age_days == 7
    assert options.tlp_level == "amber+strict"
    assert options.av_list == ("Kaspersky", "Symantec")
    assert options.filter_with_tag == "apt" and settings.limit == 50
    assert options.alert_prefix == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [("CREATE_FILE", "maybe"), ("MIN_FILE_SIZE", "1kb")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_{name}"):
        LivehuntSettings.from_env({f"VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_{name}": value})


def test_unknown_tlp_level_is_refused() -> None:
    with pytest.raises(ValueError, match="tlp_level"):
        LivehuntSettings(tlp_level="purple").to_options()


def test_api_key_variable_prefers_enrichment_name_then_livehunt_name() -> None:
    assert api_key_env_name({}) == "VIRUSTOTAL_TOKEN"
    assert (
        api_key_env_name({"VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY": "k"})
        == "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY"
    )
    assert api_key_env_name(
        {"VIRUSTOTAL_TOKEN": "a", "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_API_KEY": "b"}
    ) == ("VIRUSTOTAL_TOKEN")


@pytest.mark.parametrize(
    ("env", "interval", "cron"),
    [
        ({}, timedelta(minutes=5), "*/5 * * * *"),
        ({"CONNECTOR_DURATION_PERIOD": "PT10M"}, timedelta(minutes=10), "*/10 * * * *"),
        (
            {"VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC": "300"},
            timedelta(seconds=300),
            "*/5 * * * *",
        ),
        (
            {
                "CONNECTOR_DURATION_PERIOD": "PT2H",
                "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC": "60",
            },
            timedelta(hours=2),
            "0 */2 * * *",
        ),
        (
            {"VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_INTERVAL_SEC": "90"},
            timedelta(seconds=90),
            "*/2 * * * *",
        ),
    ],
)
def test_schedule_cadence_from_upstream_variables(
    env: dict[str, str], interval: timedelta, cron: str
) -> None:
    assert livehunt_interval(env) == interval
    assert interval_to_cron(interval) == cron


def test_bad_duration_period_is_refused() -> None:
    with pytest.raises(ValueError, match="CONNECTOR_DURATION_PERIOD"):
        livehunt_interval({"CONNECTOR_DURATION_PERIOD": "5 minutes"})
