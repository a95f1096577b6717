"""Map a VirusTotal lookup onto the OpenCTI entity it enriches (pure: no I/O, no clock).

WHERE A NEW ADDITION GOES. VT's data is read once into a typed report
(`vt_pipeline/virustotal/reports.py`: one frozen dataclass per object kind, relations included);
mapping modules read its fields, never VT's dicts. One module per kind of addition:
- `base.py`: options, result, the `Builder` (objects by id, counters, `relate`), the `Target` an
  addition reads, shared helpers;
- `build.py`: the entry points and `ADDITIONS`, the ordered list of additions;
- `score.py` (score, detection Indicator), `file_properties.py` (hashes, size, names, labels),
  `yara_rules.py` (crowdsourced YARA), `network.py` (AS, country, A records), `report_notes.py`
  (notes and their tables), `relations.py` (related objects of VT relationships);
- `bundles.py`: the bundles sent back.
A new addition is a new module defining an `Addition(name, applies, add)` (its option in
`EnrichmentMappingOptions`, its counters in `STAT_KEYS`), plus one line in `build.ADDITIONS`.
A new VT relation is one entry in `relations.RELATIONS` (its target type and relationship).

Data model of the upstream enrichment connector (shared/reference/upstream-connectors.md), its
bugs fixed:
- The score is VT's GTI threat score when VT sent one, else the detection ratio, and
  `replace_with_lower_score=False` protects the existing score from BOTH (upstream let GTI through).
- Indicators: valid for the configured MINUTES (upstream added days) from the enrichment
  request (see the dates below), patterns escaped, a Hostname gets a `hostname:value` pattern.
- Notes have ids from the subject, the analysis date and the content, so re-enriching the same
  analysis upserts the same notes (upstream's clock-based ids duplicated them); every cell is
  escaped (stix/notes.py).
- Countries are named Locations (upstream: no name); relationships of an Indicator's values start
  at the observable, not the Indicator, and the Indicator gets one score (the highest).
- Knowledge about the entity (its Indicator, notes, relationships) carries the entity's markings:
  what is derived from a TLP:AMBER entity is AMBER. Shared reference objects (Country, Autonomous
  System, resolved IPv4 addresses, public crowdsourced YARA rules) carry none: OpenCTI adds a
  re-sent marking to the existing object, which would restrict it for everyone else.

What VT sends is untrusted: a part that cannot be used (absurd counts, non-objects, control
characters, unknown country, bad DNS record...) is dropped and counted in `stats`, never raised.

Dates. No clock is read here: every date is VT's or the request's, both passed in, so a run
re-executed with the same request rebuilds the same bytes.
- From the request (`requested_at`, when the enrichment was asked): what a user reads as "from
  now". An Indicator's `valid_from` and `modified` (detection Indicators and crowdsourced YARA
  Indicators), and a detection Indicator's `valid_until` = `valid_from` + the configured minutes.
  VT's analysis of a file may be years old; an Indicator valid from it would be born expired, and
  OpenCTI would revoke it and never deploy a detection rule from it. Asking VT again re-confirms
  the verdict: a later request re-sends the same Indicator (its id comes from the pattern alone)
  valid from that request, a new version of one object, not a second Indicator. Its `modified`
  moves forward with the validity because OpenCTI takes a re-sent `modified` only when it is
  later than the stored one (OpenCTI issue 13296; in STIX a version that is not newer is no new
  version); an unchanged `modified` would leave the old validity in place. The request time is
  written to the millisecond (OpenCTI's precision), so close requests stay in order.
- From VT's data: what VT observed, dated when VT observed it. An Indicator's `created` (the
  analysis that gave the verdict; a YARA rule's own date), never after `requested_at`, so it is
  stable across requests of one analysis and never after `modified`; OpenCTI keeps the first
  `created` it was given anyway. Notes (`created`, and their ids, hash VT's analysis date: the
  same analysis enriched again upserts the same notes, a new analysis adds one); relationships
  (`created`/`modified`: the analysis for resolutions, autonomous system, country, YARA
  matches and `based-on`, or the entity's own date when VT gives none; no start/stop time is
  emitted); the analysis date written in the notes.
- Fixed: the author Identity and Country locations (shared, never re-dated).
Without `requested_at` (a caller that has no request time) the Indicators fall back to VT's
dates (valid from the analysis, the YARA rule's date), the behaviour before request times: an
old report then gives an expired Indicator.
"""

from vt_pipeline.stix.enrichment.base import (
    AUTHOR_NAME,
    ENTITY_TYPES,
    GUI_ROOT,
    REFERENCE_SOURCE,
    SCO_TYPES,
    STAT_KEYS,
    EnrichmentMappingOptions,
    EnrichmentResult,
)
from vt_pipeline.stix.enrichment.build import (
    ADDITIONS,
    build_enrichment,
    build_indicator_enrichment,
)
from vt_pipeline.stix.enrichment.bundles import (
    enrichment_bundle,
    playbook_bundle,
    unchanged_playbook_bundle,
)

__all__ = [
    "ADDITIONS",
    "AUTHOR_NAME",
    "ENTITY_TYPES",
    "GUI_ROOT",
    "REFERENCE_SOURCE",
    "SCO_TYPES",
    "STAT_KEYS",
    "EnrichmentMappingOptions",
    "EnrichmentResult",
    "build_enrichment",
    "build_indicator_enrichment",
    "enrichment_bundle",
    "playbook_bundle",
    "unchanged_playbook_bundle",
]
