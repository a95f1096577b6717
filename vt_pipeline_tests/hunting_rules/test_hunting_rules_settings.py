"""Upstream's stream connector's variables, accepted unchanged; bad values named at load."""

import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.hunting_rules.settings import HuntingRulesSettings
from vt_pipeline.resources import api_key_env_name, build_resources


def test_upstream_compose_environment_moves_over() -> None:
    settings = HuntingRulesSettings.from_env(
        {
            "CONNECTOR_LIVE_STREAM_ID": "0b3e2a54-6a1c-4f6e-9d55-7d2f7c8e8f11",
            "CONNECTOR_LIVE_STREAM_LISTEN_DELETE": "false",
            "CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES": "true",
            "VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS": '["wcoyte@acme.com", "rrunner@acme.com"]',
            "VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS": "['johndd', 'jimtold']",
        }
    )
    assert settings.enabled and settings.listen_delete is False
    assert settings.emails == ["wcoyte@acme.com", "rrunner@acme.com"]
    assert settings.owners == ["johndd", "jimtold"]
    # upstream's placeholders and empty lists mean "off" and "none"
    off = HuntingRulesSettings.from_env(
        {
            "CONNECTOR_LIVE_STREAM_ID": "ChangeMe",
            "VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS": "[]",
            "VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS": "a, b",
        }
    )
    assert not off.enabled and off.emails == [] and off.owners == ["a", "b"]
    assert HuntingRulesSettings.from_env({}).on_detection_off == "disable"


def test_the_livehunt_token_is_one_more_name_of_the_deployments_key() -> None:
    assert api_key_env_name({"VIRUSTOTAL_LIVEHUNT_TOKEN": "k"}) == "VIRUSTOTAL_LIVEHUNT_TOKEN"
    both = {"VIRUSTOTAL_TOKEN": "a", "VIRUSTOTAL_LIVEHUNT_TOKEN": "b"}
    assert api_key_env_name(both) == "VIRUSTOTAL_TOKEN"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS", '["not an email"]', "e-mail"),
        ("VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS", '["a@b.c"', "a list"),
        ("CONNECTOR_LIVE_STREAM_LISTEN_DELETE", "maybe", "true or false"),
        ("VT_PIPELINE_HUNTING_RULES_ON_DETECTION_OFF", "archive", "disable or delete"),
        ("VT_PIPELINE_HUNTING_RULES_MAX_EVENTS", "0", "from 1 to 10000"),
    ],
)
def test_a_bad_value_fails_at_load_naming_the_variable(
    variable: str, value: str, accepted: str, tmp_path: object
) -> None:
    with pytest.raises(ConfigError) as refused:
        build_resources({variable: value, "DAGSTER_HOME": str(tmp_path)})
    message = str(refused.value)
    assert variable in message and value[:20] in message and accepted in message
