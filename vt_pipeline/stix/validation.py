"""Check a STIX bundle before it is sent: OpenCTI rejects (or half-imports) what fails here.

Objects are parsed one by one with stix2 (allow_custom) so that one bad object does not hide the
others, and stix2's own bug on an empty bundle (`max()` of an empty list) is avoided. References
(`*_ref`, `*_refs`, at any depth) must name an object of the bundle: pycti resolves them inside
the bundle, and a dangling one makes OpenCTI drop the object.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Iterator, Mapping
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


# Below this many objects a second process does not pay for itself (fork, results back).
PARALLEL_MIN_OBJECTS = 1000
# A forked validator that has not answered by then is stopped; its share is validated here.
CHILD_TIMEOUT_SECONDS = 300.0


def validate_bundles(
    bundles: Mapping[str, Any], min_parallel_objects: int = PARALLEL_MIN_OBJECTS
) -> dict[str, list[str]]:
    """`validate_bundle` of each bundle, by key.

    stix2 parses ~8,000 objects a second on one core, a third of a Livehunt run's CPU. With a
    second core and enough objects, a forked copy of this process validates about half of the
    bundles while this one validates the rest: the same function on the same objects, so
    nothing is less strict. If the fork fails, dies or does not answer, its share is validated
    here. Nothing but the problem lists comes back (as JSON through a pipe).
    """
    keys = sorted(bundles)
    sizes = {key: _object_count(bundles[key]) for key in keys}
    if (
        sum(sizes.values()) < min_parallel_objects
        or len(keys) < 2
        or not hasattr(os, "fork")
        or _usable_cpus() < 2
    ):
        return {key: validate_bundle(bundles[key]) for key in keys}
    mine: list[str] = []
    theirs: list[str] = []
    loads = [0, 0]
    for key in sorted(keys, key=lambda k: -sizes[k]):  # largest first, to the lighter share
        share = 0 if loads[0] <= loads[1] else 1
        (mine if share == 0 else theirs).append(key)
        loads[share] += sizes[key]
    child = _ForkedValidator.start(bundles, theirs)
    results = {key: validate_bundle(bundles[key]) for key in mine}
    answered = child.answer() if child else {}
    for key in theirs:
        problems = answered.get(key)
        results[key] = problems if problems is not None else validate_bundle(bundles[key])
    return {key: results[key] for key in keys}


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _object_count(bundle: Any) -> int:
    objects = bundle.get("objects") if isinstance(bundle, dict) else None
    return len(objects) if isinstance(objects, list) else 0


class _ForkedValidator:
    """A forked copy of this process validating some bundles; its answer comes as JSON."""

    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid, self.read_fd = pid, read_fd

    @classmethod
    def start(cls, bundles: Mapping[str, Any], keys: list[str]) -> _ForkedValidator | None:
        """Fork a child validating `keys`; None when no child could be started."""
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            return None
        if pid == 0:  # the child: validate, answer, and leave without the parent's exit hooks
            try:
                os.close(read_fd)
                answer = json.dumps({key: validate_bundle(bundles[key]) for key in keys})
                view = memoryview(answer.encode())
                while view:
                    view = view[os.write(write_fd, view) :]
            finally:
                os._exit(0)
        os.close(write_fd)
        return cls(pid, read_fd)

    def answer(self) -> dict[str, list[str]]:
        """The child's problem lists by key; {} if it died, answered garbage or timed out
        (it is then stopped). Always reaps the child."""
        chunks: list[bytes] = []
        complete = False
        deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                if not select.select([self.read_fd], [], [], remaining)[0]:
                    break
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    complete = True
                    break
                chunks.append(chunk)
        finally:
            os.close(self.read_fd)
            if not complete:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        try:
            answer = json.loads(b"".join(chunks)) if complete else {}
        except ValueError:
            return {}
        if not isinstance(answer, dict):
            return {}
        return {
            str(key): [str(problem) for problem in problems]
            for key, problems in answer.items()
            if isinstance(problems, list)
        }


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
