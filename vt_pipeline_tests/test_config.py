"""Bad configuration fails when the code location loads (or the run starts), naming the variable.

Each bad variable's message must say which variable, which value and what is accepted; a value no
retry can fix is never retried; and the secrets never appear in any of these messages.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.resources import build_resources
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalResource
from vt_pipeline_tests.conftest import PREMIUM_KEY, ResourcesFactory, partition_key

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-token-value-never-shown"
LIVEHUNT = "VIRUSTOTAL_LIVEHUNT_NOTIFICATIONS_"


def a_file(tmp_path: Path) -> str:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return str(path)


# (environment, variable named, value shown, what is accepted)
BAD: list[tuple[dict[str, str], str, str, str]] = [
    ({"VIRUSTOTAL_MAX_CONCURRENCY": "many"}, "VIRUSTOTAL_MAX_CONCURRENCY", "many", "1 to 1000"),
    ({"VIRUSTOTAL_MAX_CONCURRENCY": "0"}, "VIRUSTOTAL_MAX_CONCURRENCY", "0", "1 to 1000"),
    ({"VIRUSTOTAL_MAX_CONCURRENCY": "-4"}, "VIRUSTOTAL_MAX_CONCURRENCY", "-4", "1 to 1000"),
    (
        {"VIRUSTOTAL_API_URL": "www.virustotal.com"},
        "VIRUSTOTAL_API_URL",
        "www.virustotal.com",
        "an http:// or https:// URL with a host",
    ),
    (
        {"VIRUSTOTAL_API_URL": "ftp://vt.example"},
        "VIRUSTOTAL_API_URL",
        "ftp://vt.example",
        "an http:// or https:// URL",
    ),
    (
        {"VIRUSTOTAL_API_URL": "http://vt.example:99999"},
        "VIRUSTOTAL_API_URL",
        "http://vt.example:99999",
        "a port from 1 to 65535",
    ),
    (
        {"VIRUSTOTAL_API_URL": "https://vt.example/?x=1"},
        "VIRUSTOTAL_API_URL",
        "https://vt.example/?x=1",
        "without ?query",
    ),
    (
        {"VIRUSTOTAL_API_URL": "https://user:pw@vt.example"},
        "VIRUSTOTAL_API_URL",
        "https://***@vt.example",
        "a URL without credentials",
    ),
    (
        {"CONNECTOR_CONFIDENCE_LEVEL": "high"},
        "CONNECTOR_CONFIDENCE_LEVEL",
        "high",
        "an integer from 0 to 100",
    ),
    (
        {"CONNECTOR_CONFIDENCE_LEVEL": "101"},
        "CONNECTOR_CONFIDENCE_LEVEL",
        "101",
        "an integer from 0 to 100",
    ),
    (
        {"OPENCTI_URL": "http://opencti:8080"},
        "OPENCTI_TOKEN",
        "",
        "required when OPENCTI_URL is set",
    ),
    (
        {"OPENCTI_URL": "http://opencti:8080", "OPENCTI_TOKEN": "   "},
        "OPENCTI_TOKEN",
        "",
        "required when OPENCTI_URL is set",
    ),
    (
        {"OPENCTI_TOKEN": SECRET},
        "OPENCTI_URL",
        "",
        "the OpenCTI platform's URL",
    ),
    (
        {"OPENCTI_URL": "opencti:8080", "OPENCTI_TOKEN": SECRET},
        "OPENCTI_URL",
        "opencti:8080",
        "an http:// or https:// URL with a host",
    ),
    (
        {"CONNECTOR_QUEUE_PROTOCOL": "kafka"},
        "CONNECTOR_QUEUE_PROTOCOL",
        "kafka",
        "one of amqp, api",
    ),
    (
        {"CONNECTOR_LOG_LEVEL": "verbose"},
        "CONNECTOR_LOG_LEVEL",
        "verbose",
        "one of debug, info, warning, error, critical",
    ),
    ({"CONNECTOR_ID": "livehunt-1"}, "CONNECTOR_ID", "livehunt-1", "a UUID"),
    (
        {f"{LIVEHUNT}TLP_LEVEL": "purple"},
        f"{LIVEHUNT}TLP_LEVEL",
        "purple",
        "clear, white, green, amber, amber+strict, red",
    ),
    ({f"{LIVEHUNT}LIMIT": "-1"}, f"{LIVEHUNT}LIMIT", "-1", "an integer >= 0"),
    (
        {"VIRUSTOTAL_RETRY_DEADLINE_SECONDS": "2min"},
        "VIRUSTOTAL_RETRY_DEADLINE_SECONDS",
        "2min",
        "a number of seconds above 0, e.g. 120",
    ),
    (
        {"VIRUSTOTAL_RETRY_DEADLINE_SECONDS": "0"},
        "VIRUSTOTAL_RETRY_DEADLINE_SECONDS",
        "0",
        "a number of seconds above 0",
    ),
]


@pytest.mark.parametrize(
    ("env", "variable", "value", "accepted"), BAD, ids=[f"{v}={x!r}" for _, v, x, _ in BAD]
)
def test_a_bad_variable_fails_the_load_naming_variable_value_and_what_is_accepted(
    env: dict[str, str], variable: str, value: str, accepted: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_resources({"DAGSTER_HOME": str(tmp_path), **env})
    message = str(caught.value)
    assert f"{variable}={value!r} is not accepted: expected" in message
    assert accepted in message
    assert SECRET not in message


@pytest.mark.parametrize("variable", ["VT_PIPELINE_STORAGE_DIR", "DAGSTER_HOME"])
def test_a_storage_directory_this_process_cannot_write_fails_the_load(
    variable: str, tmp_path: Path
) -> None:
    below_a_file = str(Path(a_file(tmp_path)) / "storage")
    with pytest.raises(ConfigError) as caught:
        build_resources({variable: below_a_file})
    assert f"{variable}={below_a_file!r} is not accepted: expected a directory" in str(caught.value)


def test_every_bad_variable_is_listed_at_once(tmp_path: Path) -> None:
    env = {
        "DAGSTER_HOME": str(tmp_path),
        "VIRUSTOTAL_MAX_CONCURRENCY": "many",
        "CONNECTOR_CONFIDENCE_LEVEL": "high",
        f"{LIVEHUNT}MIN_FILE_SIZE": "-1",
        f"{LIVEHUNT}TLP_LEVEL": "purple",
    }
    with pytest.raises(ConfigError) as caught:
        build_resources(env)
    assert str(caught.value).startswith("4 settings are not accepted:")
    assert len(caught.value.problems) == 4
    for name in set(env) - {"DAGSTER_HOME"}:
        assert f"{name}={env[name]!r}" in str(caught.value)


def test_urls_are_normalized_and_spellings_made_canonical(tmp_path: Path) -> None:
    """A VT base pasted with `/api/v3` (as VT's docs show it) would call /api/v3/api/v3/..."""
    resources = build_resources(
        {
            "DAGSTER_HOME": str(tmp_path),
            "VIRUSTOTAL_API_URL": " HTTPS://vt.example:8443/api/v3/ ",
            "OPENCTI_URL": "http://opencti:8080/graphql/",
            "OPENCTI_TOKEN": SECRET,
            "CONNECTOR_LOG_LEVEL": "WARN",
            "CONNECTOR_QUEUE_PROTOCOL": "API",
            "CONNECTOR_ID": "0B9A3ED4-5F7F-4D2E-9D5E-6F1F8C0C2A11",
            "CONNECTOR_NAME": "",  # blank: upstream's default
        }
    )
    virustotal, opencti = resources["virustotal"], resources["opencti"]
    assert isinstance(virustotal, VirusTotalResource) and isinstance(opencti, OpenCTIResource)
    assert virustotal.api_url == "https://vt.example:8443"
    assert opencti.url == "http://opencti:8080"
    assert opencti.connector_log_level == "warning" and opencti.queue_protocol == "api"
    assert opencti.connector_id == "0b9a3ed4-5f7f-4d2e-9d5e-6f1f8c0c2a11"
    assert opencti.connector_name == "VirusTotal Livehunt Notifications"
    # the token stays a reference to the variable, resolved in the run
    assert isinstance(opencti.token, dg.EnvVar) and opencti.token.env_var_name == "OPENCTI_TOKEN"


def test_the_retry_deadline_of_a_failing_vt_call_comes_from_its_variable(tmp_path: Path) -> None:
    home = {"DAGSTER_HOME": str(tmp_path)}
    default = build_resources(home)["virustotal"]
    assert isinstance(default, VirusTotalResource) and default.retry_deadline_seconds == 120.0
    resources = build_resources({**home, "VIRUSTOTAL_RETRY_DEADLINE_SECONDS": " 45.5 "})
    virustotal = resources["virustotal"]
    assert isinstance(virustotal, VirusTotalResource)
    assert virustotal.retry_deadline_seconds == 45.5


def test_an_api_url_ending_in_api_v3_calls_the_real_endpoints(
    vt_emulator: VirusTotalEmulator,
) -> None:
    resource = VirusTotalResource(api_key=PREMIUM_KEY, api_url=vt_emulator.url + "/api/v3/")

    async def fetch() -> dict[str, Any]:
        async with resource.session() as session:
            return await session.get_json("ioc_stream", "/ioc_stream", params={"limit": 1})

    assert isinstance(asyncio.run(fetch()).get("data"), list)
    assert vt_emulator.count("ioc_stream", 200) == 1


def test_a_url_the_client_cannot_send_is_not_retried() -> None:
    """Defense in depth behind the validator: built without validation, the URL fails at once."""
    resource = VirusTotalResource.model_construct(
        api_key=PREMIUM_KEY,
        api_url="www.virustotal.com",  # no scheme: what the validator refuses at load
        timeout_seconds=5.0,
        max_concurrency=4,
        max_attempts=8,
        backoff_base_seconds=1.0,
        backoff_max_seconds=60.0,
    )

    async def fetch() -> int:
        async with resource.session() as session:
            try:
                await session.get_json("ioc_stream", "/ioc_stream")
            finally:
                calls = session.log.total
        return calls

    started = time.monotonic()
    with pytest.raises(VirusTotalError, match="VIRUSTOTAL_API_URL") as caught:
        asyncio.run(fetch())
    assert caught.value.code == "InvalidURL"
    assert time.monotonic() - started < 1.0  # no backoff: the first retry alone waits >= 0.5 s


@pytest.mark.parametrize(
    ("settings", "field", "named"),
    [
        ({"tlp_level": "purple"}, "tlp_level", None),  # Literal: refused at launch
        ({"min_file_size": -1}, "min_file_size", None),
        ({"min_file_size": 2000, "max_file_size": 1000}, None, f"{LIVEHUNT}MIN_FILE_SIZE='2000'"),
    ],
)
def test_a_bad_launchpad_value_fails_the_run_before_any_vt_call(
    settings: dict[str, Any],
    field: str | None,
    named: str | None,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    dagster_instance: dg.DagsterInstance,
) -> None:
    from vt_pipeline.livehunt.assets import livehunt_assets

    run_config = {"resources": {"livehunt_settings": {"config": settings}}}
    try:
        result = dg.materialize(
            livehunt_assets,
            instance=dagster_instance,
            resources=livehunt_resources(),
            partition_key=partition_key(2),
            run_config=run_config,
            raise_on_error=False,
        )
        assert not result.success
        message = "\n".join(
            str(event.event_specific_data.error)
            for event in result.all_events
            if event.is_failure and getattr(event.event_specific_data, "error", None)
        )
    except dg.DagsterInvalidConfigError as exc:  # refused at launch, before any run
        message = str(exc)
    assert (field or named) in message, message
    assert not any(vt_emulator.stats().values())


def test_a_bad_launchpad_value_never_shows_the_resolved_token(
    dagster_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At run start the token is resolved; the message about another field must not carry it."""
    monkeypatch.setenv("VT_PIPELINE_TEST_TOKEN", SECRET)

    @dg.asset
    def needs_opencti(opencti: OpenCTIResource) -> None:
        raise AssertionError("must not run")

    resource = OpenCTIResource(url="http://opencti:8080", token=dg.EnvVar("VT_PIPELINE_TEST_TOKEN"))
    result = dg.materialize(
        [needs_opencti],
        instance=dagster_instance,
        resources={"opencti": resource},
        run_config={"resources": {"opencti": {"config": {"url": "opencti:8080"}}}},
        raise_on_error=False,
    )
    assert not result.success
    failures = [
        str(event.event_specific_data.error) for event in result.all_events if event.is_failure
    ]
    text = "\n".join(failures)
    assert "OPENCTI_URL='opencti:8080' is not accepted" in text
    assert SECRET not in text
    stored = "\n".join(str(record) for record in dagster_instance.all_logs(result.run_id))
    assert SECRET not in stored


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"VIRUSTOTAL_MAX_CONCURRENCY": "many", "OPENCTI_TOKEN": SECRET},
            [
                "VIRUSTOTAL_MAX_CONCURRENCY='many' is not accepted",
                "OPENCTI_URL='' is not accepted",
            ],
        ),
        (
            {"VT_PIPELINE_LIVEHUNT_START": "2026-01-01T00:00:00Z"},
            ["VT_PIPELINE_LIVEHUNT_START='2026-01-01T00:00:00Z' is not accepted"],
        ),
    ],
    ids=["resources", "partitions"],
)
def test_loading_the_code_location_shows_the_message(
    env: dict[str, str], expected: list[str], tmp_path: Path
) -> None:
    """What `dagster dev` / the code server does: import the definitions with that environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VIRUSTOTAL", "OPENCTI"))}
    done = subprocess.run(
        [sys.executable, "-c", "import vt_pipeline.definitions"],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "vt_pipeline.config.ConfigError: " in done.stderr
    for text in expected:
        assert text in done.stderr
    assert SECRET not in done.stdout + done.stderr
