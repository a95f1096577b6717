"""Check a STIX bundle before it is sent: OpenCTI rejects (or half-imports) what fails here.

Objects are parsed one by one with stix2 (allow_custom) so that one bad object does not hide the
others, and stix2's own bug on an empty bundle (`max()` of an empty list) is avoided. References
(`*_ref`, `*_refs`, at any depth) must name an object of the bundle: pycti resolves them inside
the bundle, and a dangling one makes OpenCTI drop the object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pycti.utils.constants  # noqa: F401  (registers OpenCTI's custom observables with stix2)
import stix2


def validate_bundle(bundle: dict[str, Any]) -> list[str]:
    """Problems found in the bundle, one sentence each; an empty list means valid."""
    if not isinstance(bundle, dict):
        return [f"bundle is {type(bundle).__name__}, not an object"]
    problems: list[str] = []
    if bundle.get("type") != "bundle":
        problems.append(f"bundle type is {bundle.get('type')!r}, not 'bundle'")
    if not str(bundle.get("id", "")).startswith("bundle--"):
        problems.append(f"bundle id {bundle.get('id')!r} is not a bundle id")
    objects = bundle.get("objects")
    if not isinstance(objects, list):
        return [*problems, "bundle objects is not a list"]

    ids: set[str] = set()
    for index, obj in enumerate(objects):
        object_id = obj.get("id") if isinstance(obj, dict) else None
        if not isinstance(object_id, str):
            problems.append(f"objects[{index}] has no id")
            continue
        if object_id in ids:
            problems.append(f"{object_id}: appears more than once")
        ids.add(object_id)

    for index, obj in enumerate(objects):
        if not isinstance(obj, dict):
            problems.append(f"objects[{index}] is {type(obj).__name__}, not an object")
            continue
        name = obj.get("id", f"objects[{index}]")
        try:
            stix2.parse(obj, allow_custom=True)
        except Exception as exc:  # stix2 raises many types; each one is a finding here
            problems.append(f"{name}: does not parse: {type(exc).__name__}: {exc}")
        for path, ref in _references(obj, ""):
            if not isinstance(ref, str):
                problems.append(f"{name}: {path} is {type(ref).__name__}, not an id")
            elif ref not in ids:
                problems.append(f"{name}: {path} -> {ref} is not in the bundle")
    return problems


def _references(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, referenced id) under a value: keys ending in `_ref` or `_refs`."""
    if isinstance(value, dict):
        for key, item in value.items():
            item_path = f"{path}.{key}" if path else str(key)
            if str(key).endswith("_ref"):
                yield item_path, item
            elif str(key).endswith("_refs"):
                if not isinstance(item, list):
                    yield item_path, item
                    continue
                for position, ref in enumerate(item):
                    yield f"{item_path}[{position}]", ref
            else:
                yield from _references(item, item_path)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _references(item, f"{path}[{position}]")
