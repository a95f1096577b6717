"""OpenCTIResource: configuration from upstream variables, clear errors, safe display names."""

import threading
import time
import uuid
from typing import Any

import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ, _port_open
from vt_pipeline.opencti.resource import (
    OpenCTIError,
    OpenCTIResource,
    OpenCTIUnavailable,
    display_name,
)
from vt_pipeline.resources import build_opencti


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("invoice.exe", "invoice.exe"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\evil.dll", "evil.dll"),
        ("a|b\nc\x00d\u202egnp.exe", "a|b cdgnp.exe"),
        ("", "fallback"),
        ("../..", "fallback"),
        ("x" * 5000, "x" * 255),
    ],
)
def test_display_names_are_safe(name: str, shown: str) -> None:
    assert display_name(name, "fallback") == shown


def test_upstream_variables_configure_the_connector() -> None:
    resource = build_opencti(
        {
            "OPENCTI_URL": "http://opencti:8080/",
            "OPENCTI_TOKEN": "secret-token",
            "CONNECTOR_ID": "0b9a3ed4-5f7f-4d2e-9d5e-6f1f8c0c2a11",
            "CONNECTOR_NAME": "VT Livehunt (Dagster)",
            "CONNECTOR_CONFIDENCE_LEVEL": "80",
            "CONNECTOR_QUEUE_PROTOCOL": "API",
        }
    )
    config = resource.helper_config()
    assert config["opencti"]["url"] == "http://opencti:8080"
    assert config["connector"]["id"] == "0b9a3ed4-5f7f-4d2e-9d5e-6f1f8c0c2a11"
    assert config["connector"]["type"] == "EXTERNAL_IMPORT"
    assert config["connector"]["confidence_level"] == 80
    assert config["connector"]["queue_protocol"] == "api"
    assert resource.configured


def test_unconfigured_opencti_says_what_to_set() -> None:
    resource = build_opencti({})
    assert not resource.configured
    with pytest.raises(OpenCTIError, match="OPENCTI_URL"), resource.connector():
        pass


def test_unknown_queue_protocol_is_refused() -> None:
    """Refused when the resource is built (load or run start), not when pycti registers."""
    with pytest.raises(ValueError, match=r"CONNECTOR_QUEUE_PROTOCOL='kafka'.*amqp, api"):
        OpenCTIResource(url="http://x", token="t", queue_protocol="kafka")


def patient(emulator: OpenCTIEmulator, attempts: int = 20, **options: Any) -> OpenCTIResource:
    """OpenCTI through the emulator, retrying fast: what is tested is that retries happen."""
    settings: dict[str, Any] = {
        "retry_backoff_seconds": 0.1,
        "retry_backoff_max_seconds": 0.5,
        **options,
    }
    return OpenCTIResource(
        url=emulator.url, token=emulator.token, retry_attempts=attempts, **settings
    )


DOMAIN_BUNDLE = {
    "type": "bundle",
    "id": "bundle--6f1f8c0c-2a11-4d2e-9d5e-0b9a3ed45f7f",
    "objects": [
        {
            "type": "domain-name",
            "spec_version": "2.1",
            "value": "restart.example.org",
            "id": "domain-name--8c0c2a11-6f1f-5d2e-9d5e-0b9a3ed45f7f",
        }
    ],
}


@pytest.mark.integration
def test_a_wrong_token_is_said_to_be_refused_and_is_not_retried(opencti: OpenCTIEmulator) -> None:
    resource = OpenCTIResource(
        url=opencti.url, token="wrong-secret-value", retry_backoff_seconds=5.0
    )
    started = time.monotonic()
    with pytest.raises(OpenCTIError, match="refused the token") as caught, resource.connector():
        pass
    assert "not reachable" not in str(caught.value)
    assert "OPENCTI_TOKEN" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)
    with pytest.raises(OpenCTIError, match="refused the token") as caught:
        resource.lookups()
    assert "wrong-secret-value" not in str(caught.value)
    assert time.monotonic() - started < 5  # never waited for a retry


@pytest.mark.integration
def test_calls_wait_out_a_short_outage(opencti: OpenCTIEmulator) -> None:
    opencti.set_outage(503, seconds=1.5)  # registration waits it out
    with patient(opencti, queue_protocol="api").connector() as cti:
        work_id = cti.initiate_work("through an outage")
        opencti.set_outage("refuse", seconds=1.5)  # connections refused, then back
        cti.close_work(work_id, "nothing to send")
        assert cti.wait_for_work(work_id)["status"] == "complete"


@pytest.mark.integration
def test_an_outage_longer_than_the_retries_fails_saying_what_happened(
    opencti: OpenCTIEmulator,
) -> None:
    resource = patient(opencti, attempts=3)
    opencti.set_outage(503)
    with (
        pytest.raises(OpenCTIUnavailable, match=r"HTTP 503.*gave up after 3 attempts"),
        resource.connector(),
    ):
        pass
    opencti.clear_outage()
    with resource.connector() as cti:
        opencti.set_outage("refuse")
        try:
            with pytest.raises(OpenCTIUnavailable, match=r"refused or dropped.*after 3 attempts"):
                cti.read_entity("domain-name--8c0c2a11-6f1f-5d2e-9d5e-0b9a3ed45f7f")
        finally:
            opencti.clear_outage()


@pytest.mark.integration
def test_a_rabbitmq_restart_during_delivery_is_waited_out_or_named() -> None:
    with RabbitMQ() as broker, OpenCTIEmulator(amqp=broker) as emulator:
        impatient = patient(emulator, attempts=2, connector_id=str(uuid.uuid4()))
        # a broker restart takes 5-20 s here (stop, 3 s down, boot): retries for up to 60 s
        slow = patient(emulator, work_timeout_seconds=60, retry_backoff_max_seconds=3.0)
        with slow.connector() as cti, impatient.connector() as hasty:
            restart = threading.Thread(target=broker.restart, kwargs={"down_seconds": 3})
            restart.start()
            try:
                deadline = time.monotonic() + 30
                while _port_open(broker.host, broker.port) and time.monotonic() < deadline:
                    time.sleep(0.05)
                # with too few retries: fails, and says that RabbitMQ went away
                with pytest.raises(OpenCTIUnavailable) as caught:
                    hasty.deliver_bundle(DOMAIN_BUNDLE, "hasty", "one domain")
                assert "RabbitMQ" in str(caught.value)
                assert "gave up after 2 attempts" in str(caught.value)
                # with enough: waits for the broker and delivers, in a new work
                work_id, pieces = cti.deliver_bundle(DOMAIN_BUNDLE, "patient", "one domain")
            finally:
                restart.join(timeout=120)
        assert pieces >= 1
        assert emulator.work(work_id).status == "complete"
        assert emulator.get(DOMAIN_BUNDLE["objects"][0]["id"]) is not None
        abandoned = [w for w in emulator.works() if w.id != work_id]
        assert abandoned and all(w.processed_time for w in abandoned)  # none left open
        assert all("RabbitMQ" in w.errors[0]["message"] for w in abandoned)


@pytest.mark.integration
def test_registration_and_a_work_round_trip(opencti: OpenCTIEmulator) -> None:
    resource = OpenCTIResource(
        url=opencti.url, token=opencti.token, queue_protocol="api", work_timeout_seconds=10
    )
    with resource.connector() as cti:
        work_id = cti.initiate_work("round trip")
        cti.close_work(work_id, "nothing to send")
        assert cti.wait_for_work(work_id)["status"] == "complete"
        assert cti.held_artifact("0" * 64) is None
        opencti.ingest(
            {
                "type": "bundle",
                "id": "bundle--0f4b5c5e-1d2a-4a57-9a3c-7f0f2b1d9e11",
                "objects": [
                    {
                        "type": "domain-name",
                        "spec_version": "2.1",
                        "value": "example.org",
                        "id": "domain-name--3c10e5a6-9b94-5b3e-8b7a-2b9f4f8c1e11",
                    }
                ],
            }
        )
        held = cti.read_entity("domain-name--3c10e5a6-9b94-5b3e-8b7a-2b9f4f8c1e11")
        assert held is not None and held["entity_type"] == "Domain-Name"
        assert cti.read_entity("domain-name--00000000-0000-5000-8000-000000000000") is None
    assert resource.connector_id in opencti.connectors


def test_two_connector_identities_from_their_own_variables() -> None:
    resource = build_opencti(
        {
            "OPENCTI_URL": "http://opencti:8080",
            "OPENCTI_TOKEN": "a-token",
            "CONNECTOR_ID": "0b9a3ed4-5f7f-4d2e-9d5e-6f1f8c0c2a11",
            "CONNECTOR_SCOPE": "vt-livehunt",
            "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": "1c8b4fe5-6a8a-4e3f-8e6f-7a2a9d1d3b22",
            "VIRUSTOTAL_ENRICHMENT_CONNECTOR_NAME": "VirusTotal (Dagster)",
            "VIRUSTOTAL_ENRICHMENT_CONNECTOR_SCOPE": "StixFile,Url",
            "CONNECTOR_AUTO": "true",
        }
    )
    livehunt = resource.helper_config()["connector"]
    enrichment = resource.helper_config("enrichment")["connector"]
    assert (livehunt["id"], livehunt["type"], livehunt["scope"], livehunt["auto"]) == (
        "0b9a3ed4-5f7f-4d2e-9d5e-6f1f8c0c2a11",
        "EXTERNAL_IMPORT",
        "vt-livehunt",
        False,
    )
    assert enrichment == {
        **enrichment,
        "id": "1c8b4fe5-6a8a-4e3f-8e6f-7a2a9d1d3b22",
        "type": "INTERNAL_ENRICHMENT",
        "name": "VirusTotal (Dagster)",
        "scope": "StixFile,Url",
        "auto": True,
    }


def test_enrichment_identity_defaults_differ_from_livehunt() -> None:
    resource = build_opencti({"OPENCTI_URL": "http://opencti:8080", "OPENCTI_TOKEN": "a-token"})
    enrichment = resource.helper_config("enrichment")["connector"]
    assert enrichment["id"] != resource.helper_config()["connector"]["id"]
    assert enrichment["name"] == "VirusTotal"
    assert enrichment["scope"] == (
        "StixFile,Artifact,IPv4-Addr,IPv6-Addr,Domain-Name,Hostname,Url,Indicator"
    )
    assert enrichment["auto"] is False


@pytest.mark.parametrize(
    ("variable", "value"), [("CONNECTOR_AUTO", "sometimes"), ("CONNECTOR_CONFIDENCE_LEVEL", "x")]
)
def test_bad_connector_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable}='{value}'"):
        build_opencti(
            {"OPENCTI_URL": "http://opencti:8080", "OPENCTI_TOKEN": "a-token", variable: value}
        )


@pytest.mark.integration
def test_each_identity_registers_itself_whatever_the_environment_says(
    opencti: OpenCTIEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deployment's environment configures the Livehunt connector with the upstream names;
    # pycti reads them before its config, which would register enrichment as Livehunt.
    livehunt_id = "0b9a3ed4-5f7f-4d2e-9d5e-6f1f8c0c2a11"
    for name, value in {
        "CONNECTOR_ID": livehunt_id,
        "CONNECTOR_NAME": "VT Livehunt",
        "CONNECTOR_SCOPE": "vt-livehunt",
        "CONNECTOR_TYPE": "EXTERNAL_IMPORT",
        "CONNECTOR_AUTO": "true",
    }.items():
        monkeypatch.setenv(name, value)
    resource = OpenCTIResource(
        url=opencti.url,
        token=opencti.token,
        connector_id=livehunt_id,
        connector_name="VT Livehunt",
        connector_scope="vt-livehunt",
        connector_auto=True,
    )
    with resource.connector("enrichment") as cti:
        assert cti.helper.connect_id == resource.enrichment_connector_id
        assert cti.helper.connector_config["listen"].endswith(resource.enrichment_connector_id)
    with resource.connector():
        pass
    enrichment = opencti.connectors[resource.enrichment_connector_id]
    assert (enrichment["type"], enrichment["name"], enrichment["auto"]) == (
        "INTERNAL_ENRICHMENT",
        "VirusTotal",
        True,
    )
    assert enrichment["scope"] == resource.enrichment_connector_scope.split(",")
    assert enrichment["playbook_compatible"] is True
    livehunt = opencti.connectors[livehunt_id]
    assert (livehunt["type"], livehunt["name"], livehunt["auto"]) == (
        "EXTERNAL_IMPORT",
        "VT Livehunt",
        False,
    )


def test_a_bad_enrichment_connector_id_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID='not-a-uuid'"):
        build_opencti(
            {
                "OPENCTI_URL": "http://opencti:8080",
                "OPENCTI_TOKEN": "a-token",
                "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID": "not-a-uuid",
            }
        )
