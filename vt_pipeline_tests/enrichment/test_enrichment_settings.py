"""The upstream enrichment connector's variables configure the job unchanged (test_settings.py
would clash with livehunt/test_settings.py: the test folders are not packages)."""

import dataclasses

import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.resources import build_resources
from vt_pipeline.stix.enrichment import EnrichmentMappingOptions


def test_defaults_are_the_seed_readme_defaults() -> None:
    settings = EnrichmentSettings.from_env({})
    assert settings.max_tlp == "TLP:AMBER"
    assert settings.file_upload_unseen_artifacts and settings.url_upload_unseen
    assert settings.lookup_cache_hours == 24
    options = settings.to_options()
    # The seed README, not upstream's code: YARA off, IP and domain relationships on.
    assert not options.file_import_yara
    assert options.ip_add_relationships and options.domain_add_relationships
    assert options == EnrichmentMappingOptions()  # the mapping's defaults are the same


def test_every_mapping_option_has_its_upstream_variable() -> None:
    """Each option is read from VIRUSTOTAL_<NAME>: flip them all and see every one change."""
    defaults = EnrichmentMappingOptions()
    env: dict[str, str] = {}
    for option in dataclasses.fields(EnrichmentMappingOptions):
        value = getattr(defaults, option.name)
        flipped = (not value) if isinstance(value, bool) else value + 7
        env[f"VIRUSTOTAL_{option.name.upper()}"] = str(flipped).lower()
    options = EnrichmentSettings.from_env(env).to_options()
    for option in dataclasses.fields(EnrichmentMappingOptions):
        assert getattr(options, option.name) != getattr(defaults, option.name), option.name


def test_upstream_names_and_formats() -> None:
    settings = EnrichmentSettings.from_env(
        {
            "VIRUSTOTAL_MAX_TLP": "tlp:amber+strict",
            "VIRUSTOTAL_FILE_UPLOAD_UNSEEN_ARTIFACTS": "False",
            "VIRUSTOTAL_URL_UPLOAD_UNSEEN": "no",
            "VIRUSTOTAL_FILE_INDICATOR_VALID_MINUTES": "60",
            "VT_PIPELINE_ENRICHMENT_CACHE_HOURS": "0",
        }
    )
    assert settings.max_tlp == "TLP:AMBER+STRICT" and settings.max_tlp_rank == 3
    assert not settings.file_upload_unseen_artifacts and not settings.url_upload_unseen
    assert settings.to_options().file_indicator_valid_minutes == 60
    assert settings.lookup_cache_hours == 0
    assert EnrichmentSettings.from_env({"VIRUSTOTAL_MAX_TLP": "white"}).max_tlp == "TLP:WHITE"
    assert EnrichmentSettings.from_env({"VIRUSTOTAL_MAX_TLP": ""}).max_tlp == "TLP:AMBER"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VIRUSTOTAL_MAX_TLP", "TLP:PURPLE"),
        ("VIRUSTOTAL_FILE_INDICATOR_CREATE_POSITIVES", "ten"),
        ("VIRUSTOTAL_IP_ADD_RELATIONSHIPS", "maybe"),
        ("VIRUSTOTAL_URL_INDICATOR_VALID_MINUTES", "0"),
        ("VT_PIPELINE_ENRICHMENT_CACHE_HOURS", "-1"),
    ],
)
def test_a_bad_value_fails_at_load_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}="):
        EnrichmentSettings.from_env({variable: value})
    with pytest.raises(ConfigError, match=f"^{variable}="):
        build_resources({variable: value})


def test_a_bad_max_tlp_from_the_launchpad_is_refused_too() -> None:
    with pytest.raises(ValueError, match="not a TLP level"):
        EnrichmentSettings(max_tlp="TLP:PURPLE")


def test_the_deployment_has_the_enrichment_settings() -> None:
    resources = build_resources({"VIRUSTOTAL_IP_INDICATOR_DETECT": "false"})
    settings = resources["enrichment_settings"]
    assert isinstance(settings, EnrichmentSettings)
    assert not settings.to_options().ip_indicator_detect
