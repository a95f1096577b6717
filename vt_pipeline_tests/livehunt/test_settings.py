"""Upstream environment variables configure the Livehunt chain unchanged."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.livehunt import schedules
from vt_pipeline.livehunt.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    START_ENV,
    WINDOWS_PER_RUN_ENV,
    livehunt_start,
    windows_per_run,
)
from vt_pipeline.livehunt.schedules import interval_to_cron, livehunt_interval, tick_period
from vt_pipeline.livehunt.settings import ENV_PREFIX as PREFIX
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
    ("name", "value", "accepted"),
    [
        ("CREATE_FILE", "maybe", "true or false"),
        ("MIN_FILE_SIZE", "1kb", "an integer >= 0"),
        # negative numbers were silently taken as "disabled", the sample-size cap included
        ("MIN_FILE_SIZE", "-1", "an integer >= 0"),
        ("MAX_FILE_SIZE", "-1", "an integer >= 0"),
        ("ARTIFACT_MAX_BYTES", "-1", "an integer >= 0"),
        ("LIMIT", "-5", "an integer >= 0"),
        ("MAX_AGE_DAYS", "-3", "an integer >= 0"),
        ("MIN_POSITIVES", "-1", "an integer >= 0"),
        ("MIN_POSITIVES", "five", "an integer >= 0"),
        # an unknown TLP passed loading and failed in the run, after the VT fetch
        ("TLP_LEVEL", "purple", "clear, white, green, amber, amber+strict, red"),
        ("TLP_LEVEL", "TLP:AMBER-STRICT", "clear, white, green, amber, amber+strict, red"),
    ],
)
def test_bad_values_name_the_variable_the_value_and_what_is_accepted(
    name: str, value: str, accepted: str
) -> None:
    variable = f"{PREFIX}{name}"
    with pytest.raises(ConfigError) as caught:
        LivehuntSettings.from_env({variable: value})
    assert f"{variable}={value!r} is not accepted: expected {accepted}" in str(caught.value)


def test_a_minimum_size_above_the_maximum_is_refused() -> None:
    """It would drop every file, silently."""
    env = {f"{PREFIX}MIN_FILE_SIZE": "2000", f"{PREFIX}MAX_FILE_SIZE": "1000"}
    with pytest.raises(ConfigError, match=f"{PREFIX}MIN_FILE_SIZE='2000' is not accepted") as e:
        LivehuntSettings.from_env(env)
    assert f"at most {PREFIX}MAX_FILE_SIZE=1000" in str(e.value)
    # 0 disables either bound, so it never conflicts
    LivehuntSettings.from_env({**env, f"{PREFIX}MAX_FILE_SIZE": "0"})


@pytest.mark.parametrize("spelling", ["TLP:AMBER+STRICT", "amber_strict", " Amber+Strict "])
def test_tlp_spellings_upstream_accepts_are_made_canonical(spelling: str) -> None:
    settings = LivehuntSettings.from_env({f"{PREFIX}TLP_LEVEL": spelling})
    assert settings.tlp_level == "amber+strict"
    assert LivehuntSettings(tlp_level=spelling).to_options().tlp_level == "amber+strict"


def test_unknown_tlp_level_is_refused_when_the_resource_is_built() -> None:
    with pytest.raises(ValueError, match=f"{PREFIX}TLP_LEVEL='purple' is not accepted"):
        LivehuntSettings(tlp_level="purple")


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


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("CONNECTOR_DURATION_PERIOD", "5 minutes", "a positive ISO 8601 duration"),
        ("CONNECTOR_DURATION_PERIOD", "PT0S", "a positive ISO 8601 duration"),
        ("CONNECTOR_DURATION_PERIOD", "P", "a positive ISO 8601 duration"),
        ("CONNECTOR_DURATION_PERIOD", "PT", "a positive ISO 8601 duration"),
        (f"{PREFIX}INTERVAL_SEC", "5m", "an integer >= 1"),
        (f"{PREFIX}INTERVAL_SEC", "0", "an integer >= 1"),
        (f"{PREFIX}INTERVAL_SEC", "-300", "an integer >= 1"),
    ],
)
def test_bad_cadence_names_the_variable(variable: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        livehunt_interval({variable: value})
    assert f"{variable}={value!r} is not accepted: expected {accepted}" in str(caught.value)


@pytest.mark.parametrize(
    ("interval", "period", "cron"),
    [
        (timedelta(minutes=90), timedelta(hours=2), "0 */2 * * *"),  # rounded up, not down
        (timedelta(hours=6), timedelta(hours=6), "0 */6 * * *"),
        (timedelta(days=2), timedelta(days=1), "0 0 * * *"),
        (timedelta(weeks=1), timedelta(days=1), "0 0 * * *"),
    ],
)
def test_long_cadences_round_up_to_whole_hours_and_at_most_a_day(
    interval: timedelta, period: timedelta, cron: str
) -> None:
    assert tick_period(interval) == period
    assert interval_to_cron(interval) == cron


def test_a_tick_reads_back_over_its_whole_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PT6H, reading only [previous hour, open hour] would never read 4 of every 6 hours."""
    monkeypatch.setattr(schedules, "LIVEHUNT_INTERVAL", timedelta(hours=6))
    tick = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    request = schedules.livehunt_fresh_windows(
        dg.build_schedule_context(scheduled_execution_time=tick)
    )
    assert request.tags[RANGE_START_TAG] == "2026-11-20-06:00"
    assert request.tags[RANGE_END_TAG] == "2026-11-20-12:00"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("2026-01-01", "a UTC hour as YYYY-MM-DD-HH:00"),
        ("2026-01-01T00:00:00Z", "a UTC hour as YYYY-MM-DD-HH:00"),
        ("2026-13-01-00:00", "a UTC hour as YYYY-MM-DD-HH:00"),
        ("2026-01-01-10:30", "on the hour"),
    ],
)
def test_bad_partition_start_names_the_variable(value: str, accepted: str) -> None:
    """Dagster's own error is a bare strptime message that names no variable."""
    with pytest.raises(ConfigError) as caught:
        livehunt_start({START_ENV: value})
    assert f"{START_ENV}={value!r} is not accepted: expected" in str(caught.value)
    assert accepted in str(caught.value)


def test_partition_start_default_and_a_good_value() -> None:
    assert livehunt_start({START_ENV: " 2025-06-01-13:00 "}) == "2025-06-01-13:00"
    # Unset: Monday 00:00 UTC of the week holding "now - 7 days" (VT's retention), whatever the
    # hour of the day or of the week, so the start only moves at Monday midnight.
    thursday = datetime(2026, 12, 3, 6, 38, tzinfo=UTC)  # 7 days back: Thursday 2026-11-26
    assert livehunt_start({}, now=thursday) == "2026-11-23-00:00"
    for moment in (
        datetime(2026, 11, 30, 0, 0, tzinfo=UTC),
        datetime(2026, 12, 6, 23, 59, tzinfo=UTC),
    ):
        assert livehunt_start({}, now=moment) == "2026-11-23-00:00"
    assert livehunt_start({}, now=datetime(2026, 12, 7, 0, 0, tzinfo=UTC)) == "2026-11-30-00:00"


def test_default_start_keeps_every_window_vt_still_serves() -> None:
    """Every hour of the last 7 days is a partition, and at most 14 days of windows exist."""
    for hours in range(0, 24 * 7, 5):
        now = datetime(2026, 12, 3, tzinfo=UTC) + timedelta(hours=hours)
        start = datetime.strptime(livehunt_start({}, now=now), "%Y-%m-%d-%H:%M")
        age = now - start.replace(tzinfo=UTC)
        assert timedelta(days=7) <= age < timedelta(days=14)


@pytest.mark.parametrize(
    ("period", "warn", "fail"),
    [("PT5M", 20, 30), ("PT1H", 130, 250), ("PT90S", 14, 18)],
)
def test_freshness_follows_the_schedule(period: str, warn: int, fail: int) -> None:
    """Two missed ticks (plus a run's time) warn, four fail: a stuck schedule shows stale."""
    policy = schedules.livehunt_freshness(livehunt_interval({"CONNECTOR_DURATION_PERIOD": period}))
    assert policy.warn_window.to_timedelta() == timedelta(minutes=warn)
    assert policy.fail_window.to_timedelta() == timedelta(minutes=fail)


def test_every_livehunt_asset_declares_the_schedules_freshness() -> None:
    from vt_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    livehunt = [k for k in graph.get_all_asset_keys() if graph.get(k).group_name == "livehunt"]
    assert len(livehunt) == 7
    for key in livehunt:
        assert graph.get(key).freshness_policy == schedules.LIVEHUNT_FRESHNESS, key


def test_windows_per_run_default_a_good_value_and_bad_ones() -> None:
    assert windows_per_run({}) == 24  # a day
    assert windows_per_run({WINDOWS_PER_RUN_ENV: " 6 "}) == 6
    for value in ("0", "169", "a day", "2.5"):
        with pytest.raises(ConfigError) as caught:
            windows_per_run({WINDOWS_PER_RUN_ENV: value})
        message = str(caught.value)
        assert f"{WINDOWS_PER_RUN_ENV}={value!r} is not accepted: expected" in message
        assert "168" in message
