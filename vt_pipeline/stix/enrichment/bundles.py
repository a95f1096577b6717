"""The bundles an enrichment answers with: the work's bundle and a playbook step's."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from vt_pipeline.stix import common


def enrichment_bundle(
    context_objects: Sequence[dict[str, Any]], result_objects: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The bundle to send: the objects OpenCTI exported with the entity (its markings, its
    author; pycti's `stix_objects`) with the entity replaced by its edited version, plus the new
    objects. An object of `result_objects` replaces the context object of the same id."""
    replaced = {str(obj.get("id")) for obj in result_objects}
    kept = [obj for obj in context_objects if str(obj.get("id")) not in replaced]
    return common.make_bundle([*copy.deepcopy(kept), *copy.deepcopy(list(result_objects))])


def playbook_bundle(incoming: dict[str, Any], result_objects: Sequence[dict[str, Any]]) -> dict:
    """The answer to a playbook step (pycti's way): the incoming bundle with the entity replaced
    by its edited version, plus the new objects."""
    return enrichment_bundle(incoming.get("objects") or [], result_objects)


def unchanged_playbook_bundle(incoming: dict[str, Any]) -> dict[str, Any]:
    """The incoming bundle passed through untouched (out-of-scope entity in a playbook)."""
    return copy.deepcopy(incoming)
