"""Google Threat Intelligence context (OpenCTI connectors #7644): the threat actors, malware
families, campaigns and reports GTI associates with the object, as Intrusion-Set, Malware,
Campaign and Report, linked to it by relationship types OpenCTI's matrix accepts:
- Intrusion-Set `uses` a StixFile (`Intrusion-Set_StixFile`); any other entity `related-to` it;
- Malware `communicates-with` an IPv4-Addr, IPv6-Addr, Domain-Name or Url (`Malware_<type>`);
  a file or hostname `related-to` it (no StixFile/Hostname -> Malware type in the matrix);
- a Campaign: the entity `related-to` it (no observable pair in the matrix);
- a Report contains the entity (`object_refs`), published at GTI's creation date.
The threat objects are shared (no marking, GTI's own dates, names as GTI gives them: a family
merges with VT's classification by pycti's case-insensitive Malware id); the relationships
carry the entity's markings."""

from __future__ import annotations

from vt_pipeline.stix import common
from vt_pipeline.stix.enrichment.base import Addition, Builder, Target, timestamp
from vt_pipeline.stix.enrichment.threat_objects import (
    campaign,
    clean_description,
    clean_name,
    intrusion_set,
    malware,
    report,
)
from vt_pipeline.virustotal.expansions import Expansions

MAX_THREAT_OBJECTS = 100
_COMMUNICATES = ("IPv4-Addr", "IPv6-Addr", "Domain-Name", "Url")
_WHY = "Associated by Google Threat Intelligence."


def add_gti_context(builder: Builder, target: Target) -> None:
    expansions: Expansions | None = getattr(target.report, "expansions", None)
    if expansions is None or not expansions.threat_objects:
        return
    entity_id, entity_type, created = target.entity["id"], target.entity_type, target.created
    threats = expansions.threat_objects
    builder.stats["invalid_values"] += max(0, len(threats) - MAX_THREAT_OBJECTS)
    for threat in threats[:MAX_THREAT_OBJECTS]:
        name = clean_name(builder, threat.name)
        if name is None:
            continue
        made = timestamp(threat.created) or common.FIXED_TIMESTAMP
        changed = timestamp(threat.modified) or made
        description = clean_description(threat.description)
        aliases = [a for alias in threat.aliases if (a := clean_name(builder, alias))]
        if threat.kind == "threat-actor":
            obj = intrusion_set(builder, name, made, changed, description, aliases)
            builder.add_counted(obj, "threat_objects")
            if entity_type == "StixFile":
                builder.relate("uses", obj["id"], entity_id, created, _WHY)
            else:
                builder.relate("related-to", entity_id, obj["id"], created, _WHY)
        elif threat.kind == "malware-family":
            obj = malware(
                builder,
                name,
                created=made,
                modified=changed,
                description=description,
                aliases=aliases,
            )
            builder.add_counted(obj, "threat_objects")
            if entity_type in _COMMUNICATES:
                builder.relate("communicates-with", obj["id"], entity_id, created, _WHY)
            else:
                builder.relate("related-to", entity_id, obj["id"], created, _WHY)
        elif threat.kind == "campaign":
            obj = campaign(builder, name, made, changed, description)
            builder.add_counted(obj, "threat_objects")
            builder.relate("related-to", entity_id, obj["id"], created, _WHY)
        elif threat.kind == "report":
            obj = report(builder, name, made, changed, description, [entity_id])
            builder.add_counted(obj, "threat_objects")


GTI_CONTEXT = Addition(
    "GTI context",
    lambda options, target: options.gti_context,
    add_gti_context,
)
