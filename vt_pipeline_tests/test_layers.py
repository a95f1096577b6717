"""The dependency arrows of the design: domains use the layers, never the other way round.

`livehunt/` and `enrichment/` may import `virustotal/`, `opencti/`, `storage/` and `stix/`;
those layers never import a domain, and the domains never import each other. Read from the
source with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vt_pipeline"
DOMAINS = ("livehunt", "enrichment", "quota", "hunting_rules")
LAYERS = ("virustotal", "opencti", "storage", "stix")


def imported_packages(folder: str) -> dict[str, set[str]]:
    """Each module of `vt_pipeline/<folder>` -> the vt_pipeline subpackages it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            for module in modules:
                parts = module.split(".")
                if parts[0] == "vt_pipeline" and len(parts) > 1:
                    names.add(parts[1])
        found[str(path.relative_to(PACKAGE))] = names
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_never_import_a_domain(layer: str) -> None:
    offending = {
        module: sorted(names & set(DOMAINS))
        for module, names in imported_packages(layer).items()
        if names & set(DOMAINS)
    }
    assert not offending, f"layer modules importing a domain: {offending}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_never_import_each_other(domain: str) -> None:
    others = set(DOMAINS) - {domain}
    offending = {
        module: sorted(names & others)
        for module, names in imported_packages(domain).items()
        if names & others
    }
    assert not offending, f"{domain} modules importing another domain: {offending}"


@pytest.mark.parametrize("folder", [*DOMAINS, *LAYERS])
def test_nothing_below_the_code_location_imports_the_assembly(folder: str) -> None:
    """`definitions.py`, `resources.py` and `cli.py` assemble everything; nothing imports up."""
    top = {"definitions", "resources", "cli", "emulators"}
    offending = {
        module: sorted(names & top)
        for module, names in imported_packages(folder).items()
        if names & top
    }
    assert not offending, f"{folder} modules importing the assembly: {offending}"
