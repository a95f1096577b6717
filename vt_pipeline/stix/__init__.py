"""Pure VirusTotal -> STIX 2.1 mapping: ids, markings, bundles, YARA rules, Livehunt bundles,
enrichment of OpenCTI entities."""

from vt_pipeline.stix.common import make_bundle, serialize_bundle
from vt_pipeline.stix.enrichment import (
    EnrichmentMappingOptions,
    EnrichmentResult,
    build_enrichment,
    build_indicator_enrichment,
    enrichment_bundle,
    playbook_bundle,
    unchanged_playbook_bundle,
)
from vt_pipeline.stix.livehunt import LivehuntBundle, build_livehunt_bundle
from vt_pipeline.stix.validation import validate_bundle

__all__ = [
    "EnrichmentMappingOptions",
    "EnrichmentResult",
    "LivehuntBundle",
    "build_enrichment",
    "build_indicator_enrichment",
    "build_livehunt_bundle",
    "enrichment_bundle",
    "make_bundle",
    "playbook_bundle",
    "serialize_bundle",
    "unchanged_playbook_bundle",
    "validate_bundle",
]
