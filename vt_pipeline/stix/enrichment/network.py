"""Network context of an IP (Autonomous System, Country) and a domain's A records."""

from __future__ import annotations

from pycti import Location

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.countries import country_name
from vt_pipeline.stix.enrichment.base import NAME_LIMIT, Addition, Builder, Target
from vt_pipeline.virustotal.reports import DomainReport, IpReport

MAX_RESOLUTIONS = 100


def add_ip_relationships(builder: Builder, target: Target) -> None:
    """The IP `belongs-to` its Autonomous System and is `located-at` its named Country."""
    report, ip_id, created = target.report, target.entity["id"], target.created
    if not isinstance(report, IpReport):
        return
    number = report.asn
    if number is None:
        if report.asn_raw is not None:
            builder.stats["invalid_values"] += 1
    else:
        system: StixObject = {
            "type": "autonomous-system",
            "spec_version": "2.1",
            "id": common.sco_id("autonomous-system", {"number": number}),
            "number": number,
        }
        for key, raw in (("name", report.as_owner), ("rir", report.rir)):
            value = builder.clean_texts([raw], NAME_LIMIT, 1)
            if value:
                system[key] = value[0]
        common.add_observable_extras(
            system, created_by_ref=builder.author_id, object_marking_refs=()
        )
        builder.add_counted(system, "observables")
        builder.relate("belongs-to", ip_id, system["id"], created)

    code = report.country
    name = country_name(code) if code else None
    if name is None:
        if report.country_raw not in (None, ""):
            builder.stats["invalid_values"] += 1
        return
    location: StixObject = {
        "type": "location",
        "spec_version": "2.1",
        "id": Location.generate_id(name, "Country"),
        "created": common.FIXED_TIMESTAMP,
        "modified": common.FIXED_TIMESTAMP,
        "name": name,
        "country": code,
        "x_opencti_location_type": "Country",
        "created_by_ref": builder.author_id,
    }
    builder.add_counted(location, "locations")
    builder.relate("located-at", ip_id, location["id"], created)


def add_resolutions(builder: Builder, target: Target) -> None:
    """Each A record of the domain as an IPv4-Addr the domain (or hostname) `resolves-to`."""
    report = target.report
    if not isinstance(report, DomainReport):
        return
    addresses = report.a_records
    builder.stats["invalid_values"] += report.invalid_a_records + max(
        0, len(addresses) - MAX_RESOLUTIONS
    )
    for address in addresses[:MAX_RESOLUTIONS]:
        observable = common.value_observable(
            "ipv4-addr", address, created_by_ref=builder.author_id, object_marking_refs=()
        )
        builder.add_counted(observable, "observables")
        builder.relate("resolves-to", target.entity["id"], observable["id"], target.created)


AUTONOMOUS_SYSTEM_AND_COUNTRY = Addition(
    "autonomous system and country",
    lambda options, target: (
        target.entity_type in ("IPv4-Addr", "IPv6-Addr") and options.ip_add_relationships
    ),
    add_ip_relationships,
)
A_RECORDS = Addition(
    "A records",
    lambda options, target: (
        target.entity_type in ("Domain-Name", "Hostname") and options.domain_add_relationships
    ),
    add_resolutions,
)
