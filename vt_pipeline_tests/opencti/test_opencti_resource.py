"""OpenCTIResource: configuration from upstream variables, clear errors, safe display names."""

import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIResource, display_name
from vt_pipeline.resources import build_opencti


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("invoice.exe", "invoice.exe"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\evil.dll", "evil.dll"),
        ("a|b\nc\x00d\u202egnp.exe", "a|bcdgnp.exe"),
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


@pytest.mark.integration
def test_wrong_token_fails_clearly_without_the_token(opencti: OpenCTIEmulator) -> None:
    resource = OpenCTIResource(url=opencti.url, token="wrong-secret-value")
    with pytest.raises(OpenCTIError, match="OpenCTI") as caught, resource.connector():
        pass
    assert "wrong-secret-value" not in str(caught.value)
    with pytest.raises(OpenCTIError) as caught:
        resource.lookups()
    assert "wrong-secret-value" not in str(caught.value)


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
