"""A file's own properties from VT: hashes, size, names and labels (VT's tags)."""

from __future__ import annotations

from pycti import STIX_EXT_OCTI_SCO

from vt_pipeline.stix.enrichment.base import (
    LABEL_LIMIT,
    MAX_LABELS,
    MAX_NAMES,
    NAME_LIMIT,
    Addition,
    Builder,
    Target,
    entity_hashes,
    extend,
)
from vt_pipeline.virustotal.reports import FileReport

# Largest size a file can have (bytes); more is corrupt data.
MAX_SIZE = 2**53


def update_file(builder: Builder, target: Target) -> None:
    """Hashes, size, names and labels (VT tags) of a StixFile / Artifact."""
    entity, entity_type, report = target.entity, target.entity_type, target.report
    if not isinstance(report, FileReport):
        return
    hashes = entity_hashes(entity)
    for algorithm, value in report.hashes.items():
        current = hashes.get(algorithm)
        if current is None:
            hashes[algorithm] = value
        elif current.lower() != value:
            builder.stats["hash_conflicts"] += 1
    if hashes:
        entity["hashes"] = hashes
    size = report.size
    if entity_type == "StixFile" and size is not None:
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_SIZE:
            entity["size"] = size
        else:
            builder.stats["invalid_values"] += 1

    names = builder.clean_texts([report.meaningful_name, *report.names], NAME_LIMIT, MAX_NAMES)
    if entity_type == "StixFile" and names and not entity.get("name"):
        entity["name"] = names[0]
    others = [name for name in names if name != entity.get("name")]
    if others:
        extend(
            entity, STIX_EXT_OCTI_SCO, "additional_names", others, ("x_opencti_additional_names",)
        )
    labels = builder.clean_texts(list(report.tags), LABEL_LIMIT, MAX_LABELS)
    if labels:
        extend(entity, STIX_EXT_OCTI_SCO, "labels", labels, ("x_opencti_labels", "labels"))


FILE_PROPERTIES = Addition("file properties", lambda options, target: target.is_file, update_file)
