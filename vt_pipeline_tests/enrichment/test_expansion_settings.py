"""The expansion variables of issue 19 sections 2 to 4: defaults, parsing, and a bad value
failing at load with the variable, the value and what is accepted."""

from __future__ import annotations

import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.enrichment.settings import GTI_CONTEXT_LIMIT, EnrichmentSettings
from vt_pipeline.virustotal.expansions import ExpansionOptions


def test_defaults_cost_no_call_but_gti_context_on_a_gti_key() -> None:
    settings = EnrichmentSettings.from_env({})
    options = settings.to_options()
    assert not (options.file_malware_family or options.file_attack_patterns)
    assert not (options.file_import_sigma or options.file_import_ids)
    assert not options.create_note_comments and options.gti_context
    assert settings.rescan_older_than_days == 0
    assert settings.expansion_options() == ExpansionOptions(gti_limit=GTI_CONTEXT_LIMIT)


def test_the_variables_are_read() -> None:
    settings = EnrichmentSettings.from_env(
        {
            "VIRUSTOTAL_FILE_MALWARE_FAMILY": "yes",
            "VIRUSTOTAL_FILE_MALWARE_FAMILY_MIN_ENGINES": "5",
            "VIRUSTOTAL_FILE_ATTACK_PATTERNS": "true",
            "VIRUSTOTAL_FILE_IMPORT_SIGMA": "1",
            "VIRUSTOTAL_FILE_IMPORT_IDS": "on",
            "VIRUSTOTAL_CREATE_NOTE_COMMENTS": "true",
            "VIRUSTOTAL_COMMENTS_LIMIT": "25",
            "VIRUSTOTAL_RESCAN_OLDER_THAN_DAYS": "30",
            "VIRUSTOTAL_GTI_CONTEXT": "false",
        }
    )
    options = settings.to_options()
    assert options.file_malware_family and options.file_malware_family_min_engines == 5
    assert options.file_attack_patterns and options.file_import_sigma and options.file_import_ids
    assert settings.rescan_older_than_days == 30
    assert settings.expansion_options() == ExpansionOptions(
        attack_patterns=True, sigma_rules=True, comments_limit=25, gti_limit=0
    )


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("VIRUSTOTAL_COMMENTS_LIMIT", "0", "1"),
        ("VIRUSTOTAL_COMMENTS_LIMIT", "41", "40"),
        ("VIRUSTOTAL_RESCAN_OLDER_THAN_DAYS", "-1", ">= 0"),
        ("VIRUSTOTAL_FILE_MALWARE_FAMILY_MIN_ENGINES", "many", "integer"),
        ("VIRUSTOTAL_GTI_CONTEXT", "maybe", "true or false"),
        ("VIRUSTOTAL_FILE_IMPORT_SIGMA", "2", "true or false"),
    ],
)
def test_a_bad_value_fails_at_load_naming_it(variable: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as error:
        EnrichmentSettings.from_env({variable: value})
    message = str(error.value)
    assert variable in message and repr(value) in message and accepted in message
