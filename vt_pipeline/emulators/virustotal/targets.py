"""Enrichment test targets picked from a corpus: one value per scenario, always the same.

    targets = corpus.targets()
    opencti.create_observable("StixFile", hashes={"SHA-256": targets.malicious_file})
    opencti.create_observable("IPv4-Addr", targets.ip)

Each is the first object (in sorted id order) that fits, so a corpus generated with the same
seed and range gives the same targets on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vt_pipeline.emulators.virustotal.gti import gti_kind
from vt_pipeline.emulators.virustotal.objects import DAY, is_analysed

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.corpus import Corpus

MALICIOUS = 10  # upstream's default *_INDICATOR_CREATE_POSITIVES
UNKNOWN_FILE_CONTENT = b"vt_pipeline: a file VirusTotal has never seen\n"
UNKNOWN_URL = "http://never-seen.vt-pipeline.invalid/path?q='quoted'"


@dataclass(frozen=True)
class EnrichmentTargets:
    """Values the corpus knows (or deliberately does not), one per enrichment scenario.

    Files are SHA-256s; `*_gti` files carry a scored (`file_gti`) or an empty (`file_no_gti`)
    GTI assessment when asked with the `x-tool` header by a GTI key. Every target but the
    `unanalysed_*` ones has an analysis (engine results), which may be years old.
    """

    malicious_file: str  # malicious >= 10
    clean_file: str  # no malicious, no suspicious verdict
    yara_file: str  # detected (>= 1), has crowdsourced_yara_results (served by /yara_rulesets)
    file_gti: str  # scored gti_assessment
    file_no_gti: str  # empty gti_assessment ({}): the score is the detection ratio
    ip: str  # IPv4 with asn, as_owner, country
    domain: str  # with A records in last_dns_records
    hostname: str  # a subdomain, looked up as /domains/{hostname}, with A records
    url: str  # a URL the corpus knows (GET /urls/{id} answers)
    unknown_file: str  # SHA-256 of UNKNOWN_FILE_CONTENT: 404 until uploaded
    unknown_file_content: bytes
    unknown_url: str  # 404 until submitted
    old_file: str  # last analysed over a year before the newest notification
    unanalysed_file: str  # known, just submitted, not analysed: zero stats, no results
    unanalysed_url: str  # a URL known the same way

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _stats(obj: Mapping[str, Any]) -> Mapping[str, int]:
    return obj["attributes"].get("last_analysis_stats") or {}


def _first(objects: Mapping[str, dict], keep: Callable[[str, dict], bool], what: str) -> str:
    for key in sorted(objects):
        if keep(key, objects[key]):
            return key
    raise LookupError(f"the corpus has no {what}; generate a larger one")


def _has_a_records(obj: Mapping[str, Any]) -> bool:
    return any(r.get("type") == "A" for r in obj["attributes"].get("last_dns_records") or ())


def _is_hostname(name: str) -> bool:
    return name.count(".") >= 2


def enrichment_targets(corpus: Corpus) -> EnrichmentTargets:
    """The targets of a corpus (LookupError if it is too small to hold one of them).

    The file targets are distinct files (each the first that fits and is no earlier target),
    so that scenarios enriched together do not share an observable.
    """
    files = corpus.files
    taken: set[str] = set()

    def file(keep: Callable[[dict], bool], what: str) -> str:
        found = _first(
            files, lambda key, obj: key not in taken and is_analysed(obj) and keep(obj), what
        )
        taken.add(found)
        return found

    def no_verdict(obj: dict) -> bool:
        stats = _stats(obj)
        return not stats.get("malicious") and not stats.get("suspicious")

    malicious_file = file(lambda o: _stats(o).get("malicious", 0) >= MALICIOUS, "bad file")
    clean_file = file(no_verdict, "clean file")
    yara_file = file(
        lambda o: (
            bool(o["attributes"].get("crowdsourced_yara_results"))
            and _stats(o).get("malicious", 0) >= 1
        ),
        "detected file with crowdsourced YARA",
    )
    file_gti = file(lambda o: gti_kind(o) == "full", "file with a GTI score")
    file_no_gti = file(lambda o: gti_kind(o) == "empty", "file with an empty GTI")
    old_file = file(lambda o: _analysed_before(o, _newest(corpus) - 365 * DAY), "old file")
    domains = corpus.domains
    return EnrichmentTargets(
        malicious_file=malicious_file,
        clean_file=clean_file,
        yara_file=yara_file,
        file_gti=file_gti,
        file_no_gti=file_no_gti,
        ip=_first(
            corpus.ip_addresses,
            lambda key, o: ":" not in key and bool(o["attributes"].get("asn")),
            "IPv4 address",
        ),
        domain=_first(domains, lambda k, o: not _is_hostname(k) and _has_a_records(o), "domain"),
        hostname=_first(domains, lambda k, o: _is_hostname(k) and _has_a_records(o), "hostname"),
        url=_url(corpus, lambda o: is_analysed(o) and "://" in o["attributes"]["url"], "url"),
        unknown_file=hashlib.sha256(UNKNOWN_FILE_CONTENT).hexdigest(),
        unknown_file_content=UNKNOWN_FILE_CONTENT,
        unknown_url=UNKNOWN_URL,
        old_file=old_file,
        unanalysed_file=_first(files, lambda _, o: not is_analysed(o), "unanalysed file"),
        unanalysed_url=_url(corpus, lambda o: not is_analysed(o), "unanalysed url"),
    )


def _url(corpus: Corpus, keep: Callable[[dict], bool], what: str) -> str:
    key = _first(corpus.urls, lambda _, obj: keep(obj), what)
    return str(corpus.urls[key]["attributes"]["url"])


def _newest(corpus: Corpus) -> int:
    if not corpus.stream:
        raise LookupError("the corpus has no notifications to date its reports by")
    return corpus.stream[0].date


def _analysed_before(obj: Mapping[str, Any], moment: int) -> bool:
    date = obj["attributes"].get("last_analysis_date")
    return isinstance(date, int) and date < moment


def known_values(corpus: Corpus) -> Iterable[str]:
    """Every file hash and network value the corpus serves (to check a value is unknown)."""
    yield from corpus.files
    yield from corpus.domains
    yield from corpus.ip_addresses
    yield from (o["attributes"]["url"] for o in corpus.urls.values())
