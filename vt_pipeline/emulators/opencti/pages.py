"""The OpenCTI emulator's web pages: the paths of OpenCTI's frontend that vt_pipeline links to.

The Dagster UI links a delivered window and its Incidents into OpenCTI with the URLs a real
platform answers (frontend routes, `opencti/opencti-platform/opencti-front/src/private/`):
- `/dashboard/id/{id}` resolves any id (internal, standard or STIX) to the object's page;
- `/dashboard/data/ingestion/connectors/{id}` is a connector's page, which lists its works
  (OpenCTI has no page of its own for one work; newer releases redirect this legacy path to
  the connector's integration page, so it keeps working).
Against the emulator those links must open something too: a small HTML page per entity and
per connector (with its works) is enough to check what a link names. No login, read-only,
every value escaped (entity values come from VirusTotal).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

ENTITY_PATH = "/dashboard/id/{id}"
CONNECTOR_PATH = "/dashboard/data/ingestion/connectors/{id}"

_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    ".error{color:#b00}"
)


def entity_url(entity_id: str) -> str:
    """The path of an entity's page (any of its ids)."""
    return ENTITY_PATH.format(id=quote(entity_id, safe=""))


def page(title: str, body: str) -> str:
    """A whole HTML document; `title` is plain text, `body` already HTML."""
    text = html.escape(title)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{text} | OpenCTI emulator"
        f"</title><style>{_STYLE}</style></head><body><p>OpenCTI emulator</p>"
        f"<h1>{text}</h1>{body}</body></html>"
    )


def not_found(what: str) -> str:
    return page("Not found", f"<p>{html.escape(what)}</p>")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; cells are HTML already (escape values with `_text`)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _link(href: str, text: Any) -> str:
    return f"<a href='{html.escape(href, quote=True)}'>{_text(text)}</a>"


def _name(stix: Mapping[str, Any]) -> str:
    for key in ("name", "value", "pattern"):
        if stix.get(key):
            return str(stix[key])
    hashes = stix.get("hashes") or {}
    return str(hashes.get("SHA-256") or next(iter(hashes.values()), "") or stix.get("id", ""))


def entity_page(summary: Mapping[str, Any]) -> str:
    """An entity's page from `OpenCTIEmulator.entity_summary`: what it is, its score, labels,
    markings, external references, relationships, notes and indicators."""
    stix = summary.get("stix") or {}
    title = f"{summary.get('entity_type')} {summary.get('observable_value') or _name(stix)}"
    facts = [
        ("Type", _text(summary.get("entity_type"))),
        ("Standard id", _text(summary.get("id"))),
        ("Score", _text(summary.get("score"))),
        ("Labels", _text(", ".join(summary.get("labels") or []))),
        ("Markings", _text(", ".join(summary.get("markings") or []))),
        ("Description", _text(stix.get("description"))),
        ("Created", _text(stix.get("created"))),
    ]
    body = _table(["Field", "Value"], [(label, value) for label, value in facts])
    references = summary.get("external_references") or []
    if references:
        body += "<h2>External references</h2>" + _table(
            ["Source", "Link"],
            [
                (_text(r.get("source_name")), _link(r["url"], r["url"]) if r.get("url") else "")
                for r in references
            ],
        )
    relationships = summary.get("relationships") or []
    if relationships:
        own = {str(summary.get("id")), str(stix.get("id"))}
        rows = []
        for r in relationships:
            other = r.get("target_ref") if r.get("source_ref") in own else r.get("source_ref")
            rows.append((_text(r.get("relationship_type")), _link(entity_url(str(other)), other)))
        body += "<h2>Relationships</h2>" + _table(["Type", "With"], rows)
    for heading, objects in (
        ("Indicators", summary.get("indicators") or []),
        ("Notes", summary.get("notes") or []),
    ):
        if objects:
            body += f"<h2>{heading}</h2>" + _table(
                ["Object"],
                [
                    (_link(entity_url(str(o.get("id"))), o.get("abstract") or _name(o)),)
                    for o in objects
                ],
            )
    return page(title, body)


def connector_page(connector: Mapping[str, Any], works: Sequence[Mapping[str, Any]]) -> str:
    """A connector's page: its identity and its works (newest first), each with its status,
    progress, messages and errors, as OpenCTI's connector page lists them."""
    scope = connector.get("scope")
    facts = [
        ("Id", _text(connector.get("id"))),
        ("Type", _text(connector.get("type"))),
        ("Scope", _text(", ".join(scope) if isinstance(scope, list) else scope)),
    ]
    body = _table(["Field", "Value"], facts)
    rows = []
    for work in sorted(works, key=lambda w: str(w.get("timestamp")), reverse=True):
        errors = "".join(f"<div class='error'>{_text(e)}</div>" for e in work.get("errors") or [])
        messages = "".join(f"<div>{_text(m)}</div>" for m in work.get("messages") or [])
        rows.append(
            (
                _text(work.get("name")),
                _text(work.get("status")) + (" (in error)" if work.get("in_error") else ""),
                _text(work.get("timestamp")),
                _text(f"{work.get('processed', 0)} / {work.get('expected', 0)}"),
                messages + errors,
                _text(work.get("id")),
            )
        )
    body += f"<h2>Works ({len(rows)})</h2>" + _table(
        ["Name", "Status", "Started", "Operations", "Messages", "Work id"], rows
    )
    return page(f"Connector {connector.get('name') or connector.get('id')}", body)
