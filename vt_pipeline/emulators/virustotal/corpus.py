"""What the VirusTotal emulator serves: Livehunt notifications, the objects they are about,
rulesets, samples and the objects of the enrichment lookups.

``generate_corpus`` builds a deterministic synthetic corpus (same seed and range -> byte-identical
JSON). Objects are built on access from small specs and sample bytes are produced on download,
so 10,000 notifications take a few seconds and little memory. ``fixtures.load_fixtures`` builds
a corpus from JSON files instead.
"""

from __future__ import annotations

import copy
import ipaddress
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload
from urllib.parse import urlsplit

from vt_pipeline.emulators.virustotal import objects as vtobjects
from vt_pipeline.emulators.virustotal.detections import with_detections
from vt_pipeline.emulators.virustotal.filetypes import FILE_TYPES, FileType
from vt_pipeline.emulators.virustotal.gti import Assessor, gti_assessment
from vt_pipeline.emulators.virustotal.objects import C2, FileSpec
from vt_pipeline.emulators.virustotal.rulesets import (
    HuntingRuleset,
    crowdsourced_rulesets,
    hunting_ruleset_object,
    hunting_rulesets,
)
from vt_pipeline.emulators.virustotal.samples import MIB, Hashes, SampleLayout, SyntheticSamples

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.targets import EnrichmentTargets

COLLECTIONS = {"file": "files", "url": "urls", "domain": "domains", "ip_address": "ip_addresses"}
T = TypeVar("T")
_HOST_PREFIXES = ("cdn", "mail", "update", "login")
_Specs = dict[str, tuple[str, int]]  # object id -> (value, first seen) of a network object
_Draft = tuple[str, int | str, dict[str, Any]]  # (type, file index or value, context_attributes)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One notification as the stream stores it: its subject and its context_attributes."""

    object_type: str
    object_id: str
    context: dict[str, Any]

    @property
    def notification_id(self) -> str:
        return str(self.context["notification_id"])

    @property
    def date(self) -> int:
        return int(self.context["notification_date"])

    @property
    def tags(self) -> list[str]:
        return list(self.context.get("tags") or [])

    @property
    def source_types(self) -> set[str]:
        return {source.get("type") for source in self.context.get("sources") or []}


class SampleStore(Protocol):
    """Sample bytes by SHA-256, streamed so that no sample is held whole in memory."""

    def size(self, sha256: str) -> int | None: ...

    def chunks(self, sha256: str, chunk_size: int) -> Iterator[bytes]: ...


class LazyObjects(Mapping[str, T]):
    """A read-only mapping whose values are built on access from small specs."""

    def __init__(self, specs: Mapping[str, Any], build: Callable[[Any], T]) -> None:
        self._specs = specs
        self._build = build

    def __getitem__(self, key: str) -> T:
        return self._build(self._specs[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, key: object) -> bool:
        return key in self._specs


class _Notifications(Sequence[dict]):
    """The notifications as ``/ioc_stream`` items, built on access, newest first."""

    def __init__(self, corpus: Corpus) -> None:
        self._corpus = corpus

    def __len__(self) -> int:
        return len(self._corpus.stream)

    @overload
    def __getitem__(self, index: int) -> dict: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict]: ...
    def __getitem__(self, index: int | slice) -> dict | list[dict]:
        if isinstance(index, slice):
            return [self._corpus.notification(entry) for entry in self._corpus.stream[index]]
        return self._corpus.notification(self._corpus.stream[index])


class Corpus:
    """Everything the emulator serves; read-only (the emulator keeps deletions and uploads).

    `assess_gti` derives the `gti_assessment` of a synthetic object; a captured corpus has none
    (None): its objects carry their own, or none, and are served as captured.
    """

    def __init__(
        self,
        *,
        stream: Sequence[StreamEntry],
        files: Mapping[str, dict],
        urls: Mapping[str, dict],
        domains: Mapping[str, dict],
        ip_addresses: Mapping[str, dict],
        resolutions: Mapping[str, list[dict]],
        hunting_rulesets: Mapping[str, dict],
        yara_rulesets: Mapping[str, dict],
        samples: SampleStore,
        file_aliases: Mapping[str, str] | None = None,
        assess_gti: Assessor | None = None,
    ) -> None:
        self.stream: tuple[StreamEntry, ...] = tuple(
            sorted(stream, key=lambda entry: (-entry.date, entry.notification_id))
        )
        self.files = files
        self.urls = urls
        self.domains = domains
        self.ip_addresses = ip_addresses
        self.resolutions = resolutions
        self.hunting_rulesets = hunting_rulesets
        self.yara_rulesets = yara_rulesets
        self.samples = samples
        self._aliases = file_aliases if file_aliases is not None else _aliases_of(files)
        self.assess_gti = assess_gti

    @property
    def notifications(self) -> Sequence[dict]:
        """The ``/ioc_stream`` items, newest first, exactly as the emulator serves them."""
        return _Notifications(self)

    def objects(self, object_type: str) -> Mapping[str, dict]:
        return getattr(self, COLLECTIONS[object_type])

    def notification(self, entry: StreamEntry) -> dict:
        item = dict(self.objects(entry.object_type)[entry.object_id])
        item["context_attributes"] = copy.deepcopy(entry.context)
        return item

    def find_file(self, file_hash: str) -> dict | None:
        """A file object by SHA-256, SHA-1 or MD5 (any case)."""
        key = file_hash.lower()
        sha256 = key if key in self.files else self._aliases.get(key)
        return self.files[sha256] if sha256 else None

    def targets(self) -> EnrichmentTargets:
        """Deterministic lookup targets for enrichment tests (see `EnrichmentTargets`)."""
        from vt_pipeline.emulators.virustotal.targets import enrichment_targets

        return enrichment_targets(self)

    def sample_size(self, sha256: str) -> int | None:
        """Size of the downloadable sample, or None when the corpus has no bytes for it."""
        return self.samples.size(sha256)

    def sample_chunks(self, sha256: str, chunk_size: int = MIB) -> Iterator[bytes]:
        return self.samples.chunks(sha256, chunk_size)


def _aliases_of(files: Mapping[str, dict]) -> dict[str, str]:
    aliases = {}
    for sha256, obj in files.items():
        attrs = obj.get("attributes") or {}
        for name in ("md5", "sha1"):
            if attrs.get(name):
                aliases[str(attrs[name]).lower()] = sha256
    return aliases


class _GeneratedSamples:
    def __init__(self, synthetic: SyntheticSamples, layouts: Mapping[str, SampleLayout]) -> None:
        self._synthetic = synthetic
        self._layouts = layouts

    def size(self, sha256: str) -> int | None:
        layout = self._layouts.get(sha256)
        return layout.size if layout else None

    def chunks(self, sha256: str, chunk_size: int) -> Iterator[bytes]:
        return self._synthetic.chunks(self._layouts[sha256], chunk_size)


def generate_corpus(seed: int, notifications: int, start: datetime, end: datetime) -> Corpus:
    """A deterministic synthetic corpus of ``notifications`` spread over [start, end)."""
    if notifications < 0:
        raise ValueError("notifications must be >= 0")
    start_ts, end_ts = int(start.timestamp()), int(end.timestamp())
    if end_ts <= start_ts:
        raise ValueError("end must be after start")
    return _Generator(seed, start_ts, end_ts).build(notifications)


def exact_count(total: int, share: float) -> int:
    """How many of ``total`` get a trait of ``share``: at least one once a corpus is >= 100."""
    count = round(total * share)
    return max(count, 1) if total >= 100 else count


def _pick_positions(rng: random.Random, population: Sequence[int], share: float) -> set[int]:
    return set(
        rng.sample(list(population), min(len(population), exact_count(len(population), share)))
    )


UNANALYSED_FILES = 0.03  # share of files just submitted, with no analysis yet
UNANALYSED_URLS = 0.05


def _unanalysed(seed: int, kind: str, population: Sequence[T], share: float) -> set[T]:
    """Which objects VirusTotal has not analysed yet: `share` of them, at least one once there
    are two (so every corpus has such a report to test), from their own RNG so that the rest
    of the corpus does not depend on them."""
    rng = random.Random(f"vt-unanalysed:{seed}:{kind}")
    count = max(1, round(len(population) * share)) if len(population) >= 2 else 0
    return set(rng.sample(list(population), count))


_NETWORK_SHARES = {"url": 0.06, "domain": 0.05, "ip_address": 0.04}
_NET_RULES = {
    "url": "net_url_phishing_path",
    "domain": "net_domain_suspicious_tld",
    "ip_address": "net_ip_bulletproof_asn",
}
_WORDS = ("secure", "update", "login", "cdn", "portal", "verify", "account", "cloud", "mail", "pay")
_TLDS = ("top", "xyz", "click", "com", "net", "ru", "info", "online")
_URL_PATHS = ("login.php", "verify/account", "wp-admin/css/x.php", "gate.php", "dl/invoice.zip")
_INVALID_DOMAINS = ("bad domain.example", "multi\nline.example", "tab\tdomain.top")
_INVALID_URLS = ("http://exa mple.com/pa th", "http://evil.example/\nSet-Cookie: x=1", "ht tp://x")
_SOURCE_COUNTRIES = ("US", "DE", "RU", "CN", "BR", "IN", "FR", "GB", None)


@dataclass(slots=True)
class _NewFile:
    """A unique file while the corpus is generated (its hashes come once all are known)."""

    index: int
    file_type: FileType
    layout: SampleLayout
    seen: int
    hostile: bool
    ruleset: HuntingRuleset
    used_rules: list[str]


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


def _snippet(header: bytes) -> str:
    """A hunting snippet as VT shows it: hex bytes, then their printable rendering."""
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in header)
    return " ".join(f"{b:02X}" for b in header) + "  " + text


class _Generator:
    """The steps of ``generate_corpus``; every random draw comes from one seeded RNG."""

    def __init__(self, seed: int, start: int, end: int) -> None:
        self.seed, self.start, self.end = seed, start, end
        self.rng = random.Random(f"vt-corpus:{seed}")
        self.rulesets = hunting_rulesets(self.rng)
        self.network_ruleset = next(r for r in self.rulesets if r.imports)
        self.yara_rulesets = crowdsourced_rulesets(self.rng)
        self.notification_ids: set[str] = set()
        self.files: list[_NewFile] = []

    def build(self, count: int) -> Corpus:
        rng = self.rng
        dates = sorted(self.start + rng.randrange(self.end - self.start) for _ in range(count))
        kinds = self._kinds(count)
        file_positions = [i for i, kind in enumerate(kinds) if kind == "file"]
        repeats = _pick_positions(rng, file_positions[1:], 0.06)
        edited = _pick_positions(rng, range(count), 0.01)
        invalid = _pick_positions(
            rng, [i for i, k in enumerate(kinds) if k in ("url", "domain")], 0.03
        )
        plan = self._file_plan(len(file_positions) - len(repeats))
        drafts: list[_Draft] = []
        network: dict[str, dict[str, int]] = {kind: {} for kind in _NETWORK_SHARES}
        for position, (date, kind) in enumerate(zip(dates, kinds, strict=True)):
            if kind == "file":
                file, rule = self._file_for(position in repeats, date, plan)
                context = self._context(date, file.ruleset, rule, position in edited, file.layout)
                drafts.append((kind, file.index, context))
            else:
                value = self._network_value(kind, position in invalid)
                network[kind].setdefault(value, date)
                rule = _NET_RULES[kind]
                context = self._context(date, self.network_ruleset, rule, position in edited, None)
                drafts.append((kind, value, context))
        return self._corpus(drafts, network)

    def _kinds(self, count: int) -> list[str]:
        kinds: list[str] = []
        for kind, share in _NETWORK_SHARES.items():
            kinds += [kind] * exact_count(count, share)
        kinds += ["file"] * (count - len(kinds))
        self.rng.shuffle(kinds)
        return kinds

    def _file_plan(self, unique_files: int) -> list[tuple[str, bool]]:
        """(size class, hostile) for each unique file, in creation order, with exact shares."""
        classes = ["huge"] * exact_count(unique_files, 0.005)
        classes += ["mb"] * exact_count(unique_files, 0.02)
        classes += ["tiny"] * exact_count(unique_files, 0.10)
        classes += ["normal"] * (unique_files - len(classes))
        self.rng.shuffle(classes)
        hostile = _pick_positions(self.rng, range(unique_files), 0.03)
        return [(size_class, i in hostile) for i, size_class in enumerate(classes)]

    def _file_for(
        self, repeat: bool, date: int, plan: list[tuple[str, bool]]
    ) -> tuple[_NewFile, str]:
        """A new file, or an earlier one matched again by another rule of its ruleset."""
        if repeat:
            file = self.rng.choice(self.files)
            while len(file.used_rules) == len(file.ruleset.rules):
                file = self.rng.choice(self.files)
        else:
            size_class, hostile = plan[len(self.files)]
            file = self._new_file(date, size_class, hostile)
            self.files.append(file)
        rule = self.rng.choice([r for r in file.ruleset.rule_names if r not in file.used_rules])
        file.used_rules.append(rule)
        return file, rule

    def _new_file(self, seen: int, size_class: str, hostile: bool) -> _NewFile:
        rng = self.rng
        types = [t for t in FILE_TYPES if t.can_be_huge or size_class != "huge"]
        file_type = rng.choices(types, [t.weight for t in types])[0]
        size = self._size(size_class, file_type)
        tail = min(size - len(file_type.header), rng.randint(64, 1024))
        filler = size - len(file_type.header) - tail
        index = len(self.files)
        layout = SampleLayout(index, file_type.header, filler, tail)
        ruleset = next(r for r in self.rulesets if file_type.type_tag in r.matches)
        return _NewFile(index, file_type, layout, seen, hostile, ruleset, [])

    def _size(self, size_class: str, file_type: FileType) -> int:
        rng = self.rng
        if size_class == "tiny":
            return rng.randint(len(file_type.header) + 100, 999)
        if size_class == "mb":
            return rng.randint(MIB, 8 * MIB)
        if size_class == "huge":
            return 50 * MIB + rng.randint(1, 14 * MIB)
        return int(math.exp(rng.uniform(math.log(1024), math.log(256 * 1024))))

    def _notification_id(self) -> str:
        while True:
            candidate = str(self.rng.randint(10**18, 10**19 - 1))
            if candidate not in self.notification_ids:
                self.notification_ids.add(candidate)
                return candidate

    def _context(
        self,
        date: int,
        ruleset: HuntingRuleset,
        rule: str,
        edited: bool,
        layout: SampleLayout | None,
    ) -> dict[str, Any]:
        """context_attributes; an edited notification names a rule its ruleset no longer has."""
        rng = self.rng
        rule = ruleset.legacy_rule if edited else rule
        return {
            "notification_id": self._notification_id(),
            "notification_date": date,
            "origin": "hunting",
            "sources": [{"type": "hunting_ruleset", "id": ruleset.id, "label": ruleset.name}],
            "tags": [_slug(ruleset.name), rule.lower()],
            "hunting_info": {
                "rule_name": rule,
                "snippet": _snippet(layout.header) if layout else "",
                "source_country": rng.choice(_SOURCE_COUNTRIES),
                "source_key": f"{rng.getrandbits(32):08x}",
            },
        }

    def _domain(self) -> str:
        rng = self.rng
        first, second = rng.sample(_WORDS, 2)
        return f"{first}-{second}{rng.randint(1, 999)}.{rng.choice(_TLDS)}"

    def _ip(self) -> str:
        rng = self.rng
        return vtobjects.random_ipv6(rng) if rng.random() < 0.2 else vtobjects.random_ipv4(rng)

    def _network_value(self, kind: str, invalid: bool) -> str:
        rng = self.rng
        if kind == "ip_address":
            return self._ip()
        if kind == "domain":
            return rng.choice(_INVALID_DOMAINS) if invalid else self._domain()
        if invalid:
            return rng.choice(_INVALID_URLS)
        host = self._domain() if rng.random() < 0.8 else vtobjects.random_ipv4(rng)
        return f"{rng.choice(('http', 'https'))}://{host}/{rng.choice(_URL_PATHS)}"

    def _c2_pool(self, size: int) -> list[C2]:
        pool = []
        for _ in range(size):
            host = self._domain() if self.rng.random() < 0.7 else vtobjects.random_ipv4(self.rng)
            port = self.rng.choice((80, 443, 8080, 2404))
            pool.append(C2(host, f"http://{host}:{port}/{self.rng.choice(_URL_PATHS)}"))
        return pool

    def _corpus(self, drafts: list[_Draft], network: dict[str, dict[str, int]]) -> Corpus:
        """Hash the samples, then assemble the corpus from the drafts and lazy builders."""
        seed = self.seed
        synthetic = SyntheticSamples(seed)
        hashes = synthetic.hash_all(file.layout for file in self.files)
        waiting = _unanalysed(seed, "file", range(len(self.files)), UNANALYSED_FILES)
        specs = {
            hashes[f.index].sha256: FileSpec(
                f.index,
                hashes[f.index],
                f.layout.size,
                f.file_type,
                f.seen,
                f.hostile,
                analysed=f.index not in waiting,
            )
            for f in self.files
        }
        stream = [
            StreamEntry(kind, _object_id(kind, subject, hashes), context)
            for kind, subject, context in drafts
        ]
        c2s = self._c2_pool(max(3, len(drafts) // 250))
        domains, ips, urls = _network_subjects(network, c2s, self.end)
        queued = _unanalysed(seed, "url", sorted(urls), UNANALYSED_URLS)
        yara = self.yara_rulesets
        aliases = {
            alias: sha
            for sha, spec in specs.items()
            for alias in (spec.hashes.md5, spec.hashes.sha1)
        }
        return Corpus(
            stream=stream,
            files=LazyObjects(
                specs,
                lambda spec: with_detections(
                    vtobjects.file_object(spec, seed, yara, c2s), seed, c2s
                ),
            ),
            urls=LazyObjects(
                urls,
                lambda spec: vtobjects.url_object(
                    spec[0], seed, spec[1], analysed=vtobjects.url_id(spec[0]) not in queued
                ),
            ),
            domains=LazyObjects(
                domains, lambda spec: vtobjects.domain_object(spec[0], seed, spec[1])
            ),
            ip_addresses=LazyObjects(ips, lambda spec: vtobjects.ip_object(spec[0], seed, spec[1])),
            resolutions=LazyObjects(
                domains, lambda spec: vtobjects.resolution_objects(spec[0], seed, spec[1])
            ),
            hunting_rulesets={
                r.id: hunting_ruleset_object(r, self.rng, self.start) for r in self.rulesets
            },
            yara_rulesets={ruleset["id"]: ruleset for ruleset in yara},
            samples=_GeneratedSamples(
                synthetic, {sha: self.files[s.index].layout for sha, s in specs.items()}
            ),
            file_aliases=aliases,
            assess_gti=gti_assessment,
        )


def _object_id(kind: str, subject: int | str, hashes: Mapping[int, Hashes]) -> str:
    """A notification's object id: the SHA-256 of a file (by index), of a URL, or the value."""
    if isinstance(subject, int):
        return hashes[subject].sha256
    return vtobjects.url_id(subject) if kind == "url" else subject


def _network_subjects(
    network: dict[str, dict[str, int]], c2s: list[C2], end: int
) -> tuple[_Specs, _Specs, _Specs]:
    """Specs (value, first seen) of the domains, IPs and URLs the lookups know, by object id.

    They are the notified network objects, the hosts of notified URLs and the C2 endpoints of
    malware configs (seen at the end of the range).
    """
    domains: _Specs = {}
    ips: _Specs = {}
    urls: _Specs = {}

    def add_host(host: str, seen: int) -> None:
        target = ips if _is_ip(host) else domains
        target.setdefault(host, (host, seen))

    for domain, seen in network["domain"].items():
        domains.setdefault(domain, (domain, seen))
    for address, seen in network["ip_address"].items():
        ips.setdefault(address, (address, seen))
    for url, seen in network["url"].items():
        urls.setdefault(vtobjects.url_id(url), (url, seen))
        host = urlsplit(url).hostname
        if host and not any(char.isspace() for char in url):
            add_host(host, seen)
    for c2 in c2s:
        add_host(c2.host, end)
        urls.setdefault(vtobjects.url_id(c2.url), (c2.url, end))
    for c2 in c2s:  # hostnames (a subdomain) for Hostname lookups, after every other domain
        if not _is_ip(c2.host):
            add_host(f"{_HOST_PREFIXES[len(c2.host) % len(_HOST_PREFIXES)]}.{c2.host}", end)
    return domains, ips, urls


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
