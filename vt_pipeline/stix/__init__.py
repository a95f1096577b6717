"""Pure VirusTotal -> STIX 2.1 mapping: ids, markings, bundles, YARA rules, Livehunt bundles."""

from vt_pipeline.stix.common import make_bundle, serialize_bundle
from vt_pipeline.stix.livehunt import LivehuntBundle, build_livehunt_bundle
from vt_pipeline.stix.validation import validate_bundle

__all__ = [
    "LivehuntBundle",
    "build_livehunt_bundle",
    "make_bundle",
    "serialize_bundle",
    "validate_bundle",
]
