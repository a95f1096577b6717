"""Map kept Livehunt notifications to one STIX 2.1 bundle (pure: no I/O, no clock).

Data model of the upstream connector, bugs fixed (see shared/reference/upstream-connectors.md):
the Incident is dated by the notification (not the wall clock), its description is in UTC, the
YARA rule is the one the notification names, looked up in the notification's own rulesets (not
matched by ruleset label), network subjects (URL, domain, IP) are mapped instead of crashing,
malware-config hosts are classified without a DNS lookup, and every id is derived from content.

Determinism: notifications are processed sorted by (notification date, notification id), and
the bundle is sorted by id. One id always carries one content, in any window and in any order
(but the validity of a detection Indicator, which each window re-confirms: see below): an
object that several notifications reach (a YARA Indicator, a File and what hangs on it, a
relationship between two such objects) takes every field from the VT objects it describes -
the rule and its ruleset, the file - never from whichever notification comes first:
- YARA Indicator: pattern, name and description from the rule (description: its `description`
  metadata, else the ruleset's name); `valid_from` = the rule's `date` metadata, else the
  ruleset's creation date, else its modification date; `x_opencti_main_observable_type` from
  the rule (`rule_observable_type`): what its condition hunts (`vt.net.url` -> Url, else
  `vt.net.domain` -> Domain-Name, else `vt.net.ip` -> IPv4-Addr), else the ruleset's
  `match_object_type`, else StixFile. VT's `vt.net.ip` matches IPv4 and IPv6 addresses alike
  and OpenCTI wants one type: such a rule is IPv4-Addr, whatever address it matched; its
  `based-on` relationships still point at the IPv6-Addr observable when that is the subject.
  A ruleset made from an OpenCTI Indicator (`stix.hunting_rules.managed_indicator`: its name
  carries the Indicator's id, its rules are exactly that Indicator's pattern) gives that
  Indicator instead: the whole pattern, the same id, the Indicator's name, no description.
- A subject's observable (File, URL, ...) and Artifact: from its latest notification (VT's
  freshest data on it), which does not depend on input order; a value that is both a subject
  and in some file's malware config is the subject's observable (configs are mapped last, and
  only add their labels to it).
- Malware-config observables and Note: dated by the file's `first_submission_date`.
- Detection Indicators built from a file (the File Indicator, the malware-config network
  Indicators): `created` = the file's `first_submission_date` (what VT observed), and valid
  from the latest notification of the file in the batch (`valid_from` = `modified` = that
  notification's date), with no `valid_until`: OpenCTI's lifecycle (decay rule or default
  lifetime) counts from `valid_from`. The notification is the request here: VT matched the file
  against a live rule at that date, which re-confirms it. Valid from the first submission, a
  file VT first saw years ago gave an Indicator born expired, which OpenCTI revokes at once and
  never deploys. A later window re-sends the same Indicator (id from the pattern) valid from
  its own notification, with a later `modified`: OpenCTI takes a re-sent `modified` only when
  it is later than the stored one. Within a batch the latest notification wins (for a config
  value two files share, the later of theirs), whatever the input order, so a window
  re-materialized from its stored notifications gives the same bytes. This is the one thing an
  id carries that depends on the batch: its validity.
- A relationship between two shared objects is dated by its source: `based-on` by the
  Indicator's `created`, the malware config's `related-to` by the file's first submission.
  Only relationships from an Incident (one Incident per notification) take the notification's
  date, the Incident's own.
The notification date remains a last resort only where VT gave no date at all (a ruleset with
neither creation nor modification date, a file without first submission date).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pycti import Incident

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.hunting_rules import managed_indicator
from vt_pipeline.stix.yara import YaraParseError, YaraRule, find_rule
from vt_pipeline.virustotal import objects as vt

AUTHOR_NAME = "VirusTotal Livehunt Notifications"
INCIDENT_SOURCE = "hunting_notification"
REFERENCE_SOURCE = "VirusTotal"

# Every counter `stats` reports, always present (0 when nothing happened) for stable metadata.
STAT_KEYS = (
    "notifications",  # items received
    "notifications_mapped",  # items that produced their objects
    "invalid_notifications",  # subject, id or date unusable: skipped
    "duplicate_notifications",  # same notification id seen again: skipped
    "yara_rule_missing",  # no rule name, or the rule is in none of the fetched rulesets
    "yara_ruleset_missing",  # rule not found and a source ruleset was not fetched
    "yara_parse_error",  # rule not found and a source ruleset could not be parsed
    "invalid_malware_config_hosts",  # config host neither IP, domain nor clean hostname
    "invalid_malware_config_urls",  # config url that is not a safe URL
    "artifact_hash_mismatch",  # artifact record whose sha256 differs from its key: ignored
)

_SCO_TYPE = {
    "file": "file",
    "url": "url",
    "domain": "domain-name",
    "ipv4": "ipv4-addr",
    "ipv6": "ipv6-addr",
}
# OpenCTI's name of each observable type (`x_opencti_main_observable_type`, descriptions).
_OPENCTI_TYPE = {
    "file": "StixFile",
    "url": "Url",
    "domain-name": "Domain-Name",
    "ipv4-addr": "IPv4-Addr",
    "ipv6-addr": "IPv6-Addr",
    "hostname": "Hostname",
}
_NAME_KEY = {"file": "file", "url": "url", "domain": "domain", "ipv4": "ip", "ipv6": "ip"}
# What a Livehunt rule hunts (VT's `vt.net.<entity>` or a ruleset's `match_object_type`) ->
# OpenCTI's observable type.
_RULE_OBSERVABLE_TYPE = {
    "file": "StixFile",
    "url": "Url",
    "domain": "Domain-Name",
    "ip": "IPv4-Addr",
    "ip_address": "IPv4-Addr",
}
# String literals of a YARA condition, and its regexes (`matches /.../`; YARA divides with `\`).
_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|\bmatches\s*/(?:\\.|[^/\\\n])+/')
# A hostname from a malware config that is not a DNS name (no TLD): a plain token only.
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")


TlpLevel = Literal["clear", "white", "green", "amber", "amber+strict", "red"]


@dataclass(frozen=True)
class LivehuntMappingOptions:
    """What the mapping creates, as plain values (upstream's Livehunt options and defaults)."""

    tlp_level: TlpLevel = "clear"
    create_alert: bool = True
    alert_prefix: str = "VT "
    create_file: bool = True
    create_yara_rule: bool = True
    create_file_indicators: bool = False
    get_malware_config: bool = False
    create_domain_name_indicators: bool = False
    create_ip_indicators: bool = False
    create_url_indicators: bool = False
    av_list: tuple[str, ...] = ()
    livehunt_tag_prefix: str = ""
    yara_label_prefix: str = "vt:yara:"
    livehunt_label_prefix: str = "vt:lh:"
    enable_label_enrichment: bool = True
    # The server-side tag filter: not repeated as an Incident label.
    filter_with_tag: str = ""


@dataclass(frozen=True)
class LivehuntBundle:
    """The bundle of one batch of notifications, and counters of what was skipped and why."""

    bundle: dict[str, Any]
    stats: dict[str, int]


def build_livehunt_bundle(
    notifications: Iterable[dict[str, Any]],
    rulesets: Mapping[str, dict[str, Any]],
    artifacts: Mapping[str, Mapping[str, Any]],
    options: LivehuntMappingOptions,
) -> LivehuntBundle:
    """The STIX bundle of kept notifications (any order), with their rulesets (`{id: raw data
    object}`, possibly incomplete) and locally stored samples (`{sha256: {sha256, size,
    mime_type}}`). Never raises on bad VT data: what cannot be mapped is skipped and counted."""
    builder = _Builder(rulesets, artifacts, options)
    ordered = _ordered(notifications, builder.stats)
    for notification in ordered:  # the last one of a subject is its latest data
        builder.latest[notification.subject] = notification.item
        builder.matched[notification.subject] = common.stix_timestamp(notification.timestamp)
    for notification in ordered:
        builder.add_notification(notification)
    for deferred in builder.deferred:
        deferred()
    return LivehuntBundle(builder.bundle(), {key: builder.stats[key] for key in STAT_KEYS})


@dataclass(frozen=True)
class _Notification:
    """A notification whose subject, id and date were validated, with its sort key."""

    item: dict[str, Any]
    subject: vt.Observable
    notification_id: str
    timestamp: int


def _ordered(items: Iterable[dict[str, Any]], stats: Counter[str]) -> list[_Notification]:
    """Valid notifications sorted by (date, id), one per notification id.

    Two different payloads under one notification id keep the smaller canonical JSON, so the
    choice does not depend on input order.
    """
    by_id: dict[str, _Notification] = {}
    for item in items:
        stats["notifications"] += 1
        try:
            entry = _Notification(
                item, vt.observable(item), vt.notification_id(item), vt.notification_timestamp(item)
            )
            common.stix_timestamp(entry.timestamp)
        except (vt.InvalidNotification, ValueError, TypeError, AttributeError):
            stats["invalid_notifications"] += 1
            continue
        previous = by_id.get(entry.notification_id)
        if previous is not None:
            stats["duplicate_notifications"] += 1
            if _canonical(previous.item) <= _canonical(item):
                continue
        by_id[entry.notification_id] = entry
    return sorted(by_id.values(), key=lambda n: (n.timestamp, n.notification_id))


def _canonical(item: dict[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, default=str)


class _Builder:
    """Accumulates the objects of one bundle, deduplicated by id."""

    def __init__(
        self,
        rulesets: Mapping[str, dict[str, Any]],
        artifacts: Mapping[str, Mapping[str, Any]],
        options: LivehuntMappingOptions,
    ) -> None:
        self.rulesets = rulesets
        self.artifacts = artifacts
        self.options = options
        self.stats: Counter[str] = Counter()
        self.author = common.author_identity(AUTHOR_NAME)
        self.marking = common.tlp_marking(options.tlp_level)
        self.author_id: str = self.author["id"]
        self.markings = [self.marking["id"]]
        self.objects: dict[str, StixObject] = {}
        # subject -> ids of the objects built once per subject (observable, artifact, ...)
        self.subjects: dict[vt.Observable, _SubjectIds] = {}
        self.latest: dict[vt.Observable, dict[str, Any]] = {}
        # subject -> date of its latest notification: VT matched it then (indicator validity)
        self.matched: dict[vt.Observable, str] = {}
        # objects built once every notification's own objects exist (malware configs)
        self.deferred: list[Callable[[], None]] = []

    # -- bundle --------------------------------------------------------------------------

    def bundle(self) -> StixObject:
        objects = list(self.objects.values())
        if objects:
            objects += [self.author, self.marking]
        return common.make_bundle(objects)

    def add(self, obj: StixObject) -> str:
        """Keep the first version of an id; later versions only contribute labels."""
        existing = self.objects.get(obj["id"])
        if existing is None:
            self.objects[obj["id"]] = obj
        else:
            common.merge_labels(existing, obj)
        return obj["id"]

    def add_detection_indicator(self, obj: StixObject) -> str:
        """`add`, and of two versions the later validity wins (the earlier `created`): what
        two files' configs share is valid from the later match, in any input order."""
        existing = self.objects.get(obj["id"])
        self.add(obj)
        if existing is not None:
            if obj["valid_from"] > existing["valid_from"]:
                existing["valid_from"] = existing["modified"] = obj["valid_from"]
            existing["created"] = min(existing["created"], obj["created"])
        return obj["id"]

    def relate(self, rel_type: str, source: str, target: str, created: str) -> None:
        self.add(
            common.relationship(
                rel_type,
                source,
                target,
                created=created,
                created_by_ref=self.author_id,
                object_marking_refs=self.markings,
            )
        )

    # -- one notification ----------------------------------------------------------------

    def add_notification(self, notification: _Notification) -> None:
        created = common.stix_timestamp(notification.timestamp)
        ids = self.subject_objects(notification.subject, created)
        options = self.options

        incident_id = self.add_incident(notification, created) if options.create_alert else None
        yara_id = None
        if options.create_yara_rule:
            yara_id = self.add_yara_indicator(notification, created)

        if incident_id:
            for target in (ids.observable, ids.artifact, ids.file_indicator, yara_id):
                if target:
                    self.relate("related-to", incident_id, target, created)
        if yara_id and ids.observable:
            self.relate("based-on", yara_id, ids.observable, self.objects[yara_id]["valid_from"])
        self.stats["notifications_mapped"] += 1

    def subject_objects(self, subject: vt.Observable, created: str) -> _SubjectIds:
        """Objects about the subject itself, built once per bundle from its latest data and
        dated by its first notification (`created`)."""
        known = self.subjects.get(subject)
        if known is not None:
            return known
        item = self.latest[subject]
        matched = self.matched[subject]
        options = self.options
        # Shared objects about a file are dated by the file, not by this notification.
        created = _timestamp_or(vt.attributes(item).get("first_submission_date"), created)
        ids = _SubjectIds()
        config = _MalwareConfig()
        if subject.kind == "file" and options.get_malware_config and options.create_file:
            config = self.malware_config(item)
        if options.create_file:
            ids.observable = self.add(self.subject_observable(subject, item, config.labels))
        if subject.kind == "file":
            ids.artifact = self.add_artifact(subject.value, item)
            if options.create_file_indicators:
                indicator_id = self.add_file_indicator(subject.value, item, created, matched)
                ids.file_indicator = indicator_id
                if ids.observable:
                    since = self.objects[indicator_id]["created"]
                    self.relate("based-on", indicator_id, ids.observable, since)
            if config.raw and ids.observable:
                # after every notification's own objects: a subject's observable is never
                # replaced by the same value extracted from some file's malware config
                args = (subject.value, item, config, ids.observable, created, matched)
                self.deferred.append(lambda: self.add_malware_config(*args))
        self.subjects[subject] = ids
        return ids

    def add_incident(self, notification: _Notification, created: str) -> str:
        item, subject = notification.item, notification.subject
        rule = common.clean_name(vt.rule_name(item)) or "unknown rule"
        prefix = self.options.alert_prefix.rstrip()
        name = f"{rule} {_NAME_KEY[subject.kind]}={subject.value}"
        name = f"{prefix} {name}" if prefix else name
        incident: StixObject = {
            "type": "incident",
            "spec_version": "2.1",
            "id": Incident.generate_id(name, created),
            "created": created,
            "modified": created,
            "name": name,
            "description": self.incident_description(notification),
            "incident_type": "alert",
            "source": INCIDENT_SOURCE,
            "created_by_ref": self.author_id,
            "object_marking_refs": self.markings,
            "external_references": [self.gui_reference(subject, item)],
        }
        labels = self.incident_labels(item)
        if labels:
            incident["labels"] = labels
        return self.add(incident)

    def incident_description(self, notification: _Notification) -> str:
        item = notification.item
        sources = ", ".join(
            f"{source['label']} ({source['id']})" if source["label"] else source["id"]
            for source in vt.hunting_sources(item)
        )
        lines = [
            f"Date of the alert on VirusTotal: {common.human_timestamp(notification.timestamp)}",
            "",
            f"- Notification: {notification.notification_id}",
            f"- Rule: {vt.rule_name(item) or 'unknown'}",
            f"- Rulesets: {sources or 'unknown'}",
            f"- Subject: {notification.subject.kind} {notification.subject.value}",
        ]
        snippet = vt.hunting_snippet(item)
        if snippet:
            lines += ["", "Hunting snippet:", "", "```", snippet, "```"]
        return "\n".join(lines)

    def incident_labels(self, item: dict[str, Any]) -> list[str]:
        """Upstream's `retrieve_labels`: the notification tags minus the object id and the tag
        filter; with label enrichment, the rule and ruleset tags VT adds are replaced by
        prefixed, normalized labels."""
        options = self.options
        excluded = {item.get("id"), options.filter_with_tag}
        labels = [tag for tag in vt.notification_tags(item) if tag not in excluded]
        if not options.enable_label_enrichment:
            return common.unique(labels)
        enriched: list[tuple[str, str]] = []  # (prefix, normalized name)
        rule = vt.rule_name(item)
        if rule:
            enriched.append((options.livehunt_label_prefix, common.normalize_label(rule)))
        for source in vt.hunting_sources(item):
            if source["label"]:
                normalized = common.normalize_label(source["label"])
                enriched.append((options.yara_label_prefix, normalized))
        replaced = {normalized for _, normalized in enriched}
        labels = [tag for tag in labels if tag not in replaced]
        labels += [f"{prefix}{normalized}" for prefix, normalized in enriched]
        return common.unique(labels)

    def gui_reference(self, subject: vt.Observable, item: dict[str, Any]) -> StixObject:
        return common.external_reference(
            REFERENCE_SOURCE, vt.gui_url(subject, item), "VirusTotal report"
        )

    # -- the subject's observable --------------------------------------------------------

    def subject_observable(
        self, subject: vt.Observable, item: dict[str, Any], extra_labels: Sequence[str] = ()
    ) -> StixObject:
        """The URL / Domain-Name / IP observable, or the File with names, size and hashes."""
        attrs = vt.attributes(item)
        extras: dict[str, Any] = {
            "created_by_ref": self.author_id,
            "object_marking_refs": self.markings,
            "score": vt.vt_score(vt.analysis_stats(item)),
            "description": self.observable_description(item),
            "labels": common.unique([*self.vt_tag_labels(attrs), *extra_labels]),
            "external_references": [self.gui_reference(subject, item)],
        }
        if subject.kind != "file":
            return common.value_observable(_SCO_TYPE[subject.kind], subject.value, **extras)
        hashes = vt.file_hashes(item)
        name, other_names = _file_names(attrs)
        obj: StixObject = {
            "type": "file",
            "spec_version": "2.1",
            "id": common.sco_id("file", {"hashes": hashes, "name": name}),
            "hashes": hashes,
        }
        if name is not None:
            obj["name"] = name
        size = attrs.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            obj["size"] = size
        if other_names:
            obj["x_opencti_additional_names"] = other_names
        if self.stored_artifact(subject.value) is not None:
            obj["content_ref"] = self.artifact_id(subject.value, item)
        return common.add_observable_extras(obj, **extras)

    def observable_description(self, item: dict[str, Any]) -> str | None:
        """The results of the `av_list` engines and the VT score, as upstream wrote them."""
        results = vt.attributes(item).get("last_analysis_results")
        results = results if isinstance(results, dict) else {}
        lines = []
        for engine in self.options.av_list:
            result = results.get(engine)
            result = result if isinstance(result, dict) else {}
            verdict = result.get("result") or result.get("category") or "not analysed"
            lines.append(f"- **{engine}**: {verdict}")
        score = vt.vt_score(vt.analysis_stats(item))
        if score is not None:
            lines += ["", f"VirusTotal's score: {score}%."]
        return "\n".join(lines).strip() or None

    def vt_tag_labels(self, attrs: dict[str, Any]) -> list[str]:
        """VT's `type_tags` and `tags`, normalized, with `livehunt_tag_prefix` (upstream)."""
        prefix = self.options.livehunt_tag_prefix
        tags = [*_strings(attrs.get("type_tags")), *_strings(attrs.get("tags"))]
        return common.unique(f"{prefix}{common.normalize_label(tag)}" for tag in tags)

    # -- artifact ------------------------------------------------------------------------

    def stored_artifact(self, sha256: str) -> Mapping[str, Any] | None:
        """The stored sample of a file; a record naming another hash is ignored."""
        record = self.artifacts.get(sha256)
        if record is None or str(record.get("sha256") or sha256).lower() != sha256:
            return None
        return record

    def artifact_id(self, sha256: str, item: dict[str, Any]) -> str:
        return common.sco_id("artifact", {"hashes": self.artifact_hashes(sha256, item)})

    @staticmethod
    def artifact_hashes(sha256: str, item: dict[str, Any]) -> dict[str, str]:
        return {**vt.file_hashes(item), "SHA-256": sha256}

    def add_artifact(self, sha256: str, item: dict[str, Any]) -> str | None:
        """The Artifact of a stored sample (the bytes themselves are uploaded at delivery)."""
        record = self.stored_artifact(sha256)
        if record is None:
            if sha256 in self.artifacts:
                self.stats["artifact_hash_mismatch"] += 1
            return None
        attrs = vt.attributes(item)
        name, other_names = _file_names(attrs)
        artifact: StixObject = {
            "type": "artifact",
            "spec_version": "2.1",
            "id": self.artifact_id(sha256, item),
            "hashes": self.artifact_hashes(sha256, item),
            # stix2 requires url or payload_bin; the bytes are uploaded separately by delivery.
            "url": f"https://www.virustotal.com/api/v3/files/{sha256}/download",
        }
        mime_type = record.get("mime_type")
        if isinstance(mime_type, str) and mime_type:
            artifact["mime_type"] = mime_type
        names = common.unique([name or "", *other_names])
        if names:
            artifact["x_opencti_additional_names"] = names
        common.add_observable_extras(
            artifact,
            created_by_ref=self.author_id,
            object_marking_refs=self.markings,
            score=vt.vt_score(vt.analysis_stats(item)),
            description="Sample downloaded from VirusTotal Livehunt.",
        )
        return self.add(artifact)

    # -- indicators ----------------------------------------------------------------------

    def add_file_indicator(
        self, sha256: str, item: dict[str, Any], created: str, matched: str
    ) -> str:
        """The file's hash Indicator, valid from its latest notification (`matched`), created
        at its first submission (`created`; module docstring)."""
        first_seen = _timestamp_or(vt.attributes(item).get("first_submission_date"), created)
        return self.add_detection_indicator(
            common.indicator(
                f"[file:hashes.'SHA-256' = '{sha256}']",
                pattern_type="stix",
                name=sha256,
                description=(
                    f"File with SHA-256 {sha256} observed in VirusTotal Livehunt notifications."
                ),
                **_validity(first_seen, matched),
                created_by_ref=self.author_id,
                object_marking_refs=self.markings,
                main_observable_type="StixFile",
                labels=self.vt_tag_labels(vt.attributes(item)),
            )
        )

    def add_yara_indicator(self, notification: _Notification, created: str) -> str | None:
        found = self.find_rule(notification.item)
        if found is None:
            return None
        rule, ruleset_id = found
        attrs = vt.attributes(self.rulesets[ruleset_id])
        ruleset_name = str(attrs.get("name") or ruleset_id)
        valid_from = (
            _timestamp_or(rule.date, None)
            or _timestamp_or(attrs.get("creation_date"), None)
            or _timestamp_or(attrs.get("modification_date"), None)
            or created
        )
        modified = max(valid_from, _timestamp_or(attrs.get("modification_date"), valid_from))
        description = rule.description or (
            f"YARA rule {rule.name} of the VirusTotal Livehunt ruleset {ruleset_name}."
        )
        pattern, name = rule.source, rule.name
        managed = managed_indicator(attrs)
        if managed is not None:  # made from an OpenCTI Indicator: that same Indicator (its id)
            pattern, name, description = str(attrs["rules"]), managed[1], None
        return self.add(
            common.indicator(
                pattern,
                pattern_type="yara",
                name=name,
                description=description,
                valid_from=valid_from,
                modified=modified,
                created_by_ref=self.author_id,
                object_marking_refs=self.markings,
                main_observable_type=rule_observable_type(rule, attrs),
            )
        )

    def find_rule(self, item: dict[str, Any]) -> tuple[YaraRule, str] | None:
        """The named rule in the notification's own rulesets; counts why when it is not found."""
        name = vt.rule_name(item)
        missing = parse_error = False
        for source in vt.hunting_sources(item) if name else []:
            ruleset = self.rulesets.get(source["id"])
            if not isinstance(ruleset, dict):
                missing = True
                continue
            try:
                rule = find_rule(vt.attributes(ruleset).get("rules"), name)
            except YaraParseError:
                parse_error = True
                continue
            if rule is not None:
                return rule, source["id"]
        if parse_error:
            self.stats["yara_parse_error"] += 1
        elif missing:
            self.stats["yara_ruleset_missing"] += 1
        else:
            self.stats["yara_rule_missing"] += 1
        return None

    # -- malware config ------------------------------------------------------------------

    def malware_config(self, item: dict[str, Any]) -> _MalwareConfig:
        """VT's `malware_config` of the file with its network values and labels extracted."""
        raw = vt.attributes(item).get("malware_config")
        if not isinstance(raw, dict) or not raw:
            return _MalwareConfig()
        extracted, labels = self.config_network(raw)
        return _MalwareConfig(raw, extracted, labels)

    def add_malware_config(
        self,
        sha256: str,
        item: dict[str, Any],
        config: _MalwareConfig,
        file_id: str,
        created: str,
        matched: str,
    ) -> None:
        """Network observables (and indicators, valid from the file's latest notification
        `matched`) related to the file, and a Note of the config."""
        labels = config.labels
        first_seen = _timestamp_or(vt.attributes(item).get("first_submission_date"), created)
        refs = [file_id]
        for stix_type, value in config.extracted:
            observable = common.value_observable(
                stix_type,
                value,
                created_by_ref=self.author_id,
                object_marking_refs=self.markings,
                description="Extracted from a malware configuration by VirusTotal.",
                labels=labels,
            )
            refs.append(self.add(observable))
            self.relate("related-to", file_id, observable["id"], created)
            if self.wants_indicator(stix_type):
                indicator_id = self.add_detection_indicator(
                    common.indicator(
                        common.value_pattern(stix_type, value),
                        pattern_type="stix",
                        name=value,
                        description=(
                            f"{_OPENCTI_TYPE[stix_type]} {value} extracted from a malware "
                            "configuration by VirusTotal."
                        ),
                        **_validity(first_seen, matched),
                        created_by_ref=self.author_id,
                        object_marking_refs=self.markings,
                        main_observable_type=_OPENCTI_TYPE[stix_type],
                        labels=labels,
                    )
                )
                self.relate("based-on", indicator_id, observable["id"], created)
                refs.append(indicator_id)
        content = (
            "```json\n"
            + json.dumps(config.raw, indent=2, sort_keys=True, ensure_ascii=False, default=str)
            + "\n```"
        )
        self.add(
            common.note(
                content,
                abstract=f"Malware configuration extracted by VirusTotal from file {sha256}",
                object_refs=refs,
                created=created,
                created_by_ref=self.author_id,
                object_marking_refs=self.markings,
            )
        )

    def wants_indicator(self, stix_type: str) -> bool:
        """Hostnames never get one (upstream: too many false positives)."""
        options = self.options
        return {
            "ipv4-addr": options.create_ip_indicators,
            "ipv6-addr": options.create_ip_indicators,
            "domain-name": options.create_domain_name_indicators,
            "url": options.create_url_indicators,
        }.get(stix_type, False)

    def config_network(self, config: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
        """(STIX type, value) of each host/url of the config's connections, and its labels:
        family names, alt names, connection categories and protocol tags."""
        extracted: list[tuple[str, str]] = []
        labels: list[str] = []
        for family in _dicts(config.get("families")):
            labels += _strings([family.get("family")]) + _strings(family.get("alt_names"))
            for entry in _dicts(family.get("configs")):
                net_info = entry.get("net_info")
                connections = net_info.get("connections") if isinstance(net_info, dict) else None
                for connection in _dicts(connections):
                    labels += _strings(connection.get("categories"))
                    labels += _strings(connection.get("protocol_tags"))
                    host, url = connection.get("host"), connection.get("url")
                    if host is not None:
                        classified = classify_host(host)
                        if classified is None:
                            self.stats["invalid_malware_config_hosts"] += 1
                        else:
                            extracted.append(classified)
                    if url is not None:
                        if vt.is_valid_url(url):
                            extracted.append(("url", url))
                        else:
                            self.stats["invalid_malware_config_urls"] += 1
        return list(dict.fromkeys(extracted)), common.unique(label.strip() for label in labels)


@dataclass(frozen=True)
class _MalwareConfig:
    raw: dict[str, Any] | None = None
    extracted: list[tuple[str, str]] = field(default_factory=list)  # (STIX type, value)
    labels: list[str] = field(default_factory=list)


@dataclass
class _SubjectIds:
    observable: str | None = None
    artifact: str | None = None
    file_indicator: str | None = None


def rule_observable_type(rule: YaraRule, ruleset_attributes: Mapping[str, Any]) -> str:
    """OpenCTI's main observable type of a Livehunt rule, from the rule alone (never from the
    notification that matched it): the VT network entity its condition hunts - `vt.net.url`,
    else `vt.net.domain`, else `vt.net.ip` (a URL rule may test its domain and IP too, a domain
    rule its IP) - else its ruleset's `match_object_type`, else StixFile. `vt.net.ip` matches
    both address families; OpenCTI wants one type, so it is IPv4-Addr."""
    condition = _condition(rule.source)
    for entity in ("url", "domain", "ip"):
        if re.search(rf"\bvt\.net\.{entity}\b", condition):
            return _RULE_OBSERVABLE_TYPE[entity]
    match_type = ruleset_attributes.get("match_object_type")
    if isinstance(match_type, str) and match_type in _RULE_OBSERVABLE_TYPE:
        return _RULE_OBSERVABLE_TYPE[match_type]
    return "StixFile"


def _condition(source: str) -> str:
    """The condition of a rebuilt rule, its string and regex literals blanked out (a literal
    that spells `vt.net.url` says nothing about what the rule hunts)."""
    _, _, condition = source.rpartition("condition:")
    return _LITERALS.sub('""', condition)


def classify_host(host: Any) -> tuple[str, str] | None:
    """STIX type and value of a malware-config host: IP, DNS name (syntax only, no lookup), or
    a clean hostname token (OpenCTI's `hostname` observable); None when it is none of these."""
    if not isinstance(host, str) or not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ("ipv4-addr" if address.version == 4 else "ipv6-addr", str(address))
    if vt.is_valid_domain(host):
        return "domain-name", host.lower().rstrip(".")
    if _HOSTNAME.fullmatch(host):
        return "hostname", host
    return None


def _file_names(attrs: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The file's name (meaningful_name, else its first name) and its other names, each made
    safe (`common.clean_name`: VT-supplied, so no controls, no bidi tricks, capped)."""
    names = [common.clean_name(name) for name in _strings(attrs.get("names"))]
    meaningful = [common.clean_name(name) for name in _strings([attrs.get("meaningful_name")])]
    name = next((candidate for candidate in [*meaningful, *names] if candidate), None)
    return name, [other for other in common.unique(names) if other != name]


def _strings(values: Any) -> list[str]:
    """The non-empty strings of a VT list (VT may send null, a scalar or mixed types)."""
    if not isinstance(values, list | tuple):
        return []
    return [value for value in values if isinstance(value, str) and value.strip()]


def _dicts(values: Any) -> list[dict[str, Any]]:
    if not isinstance(values, list):
        return []
    return [value for value in values if isinstance(value, dict)]


def _validity(first_seen: str, matched: str) -> dict[str, str]:
    """Dates of a detection Indicator built from a file VT first saw at `first_seen` and matched
    at `matched` (both STIX timestamps of whole seconds): valid from the match, created at the
    first sighting but never after the match."""
    return {"valid_from": matched, "created": min(first_seen, matched), "modified": matched}


def _timestamp_or(value: Any, default: str | None) -> str | None:
    """STIX timestamp of a VT date (unix seconds or ISO), or `default` when absent/unusable."""
    seconds = vt.parse_timestamp(value)
    if seconds is None:
        return default
    try:
        return common.stix_timestamp(seconds)
    except ValueError:
        return default
