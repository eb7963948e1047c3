"""The package's layers, read from the import graph (issue #14's target layout).

Each module belongs to a layer and imports only from its own layer or the layers below. The
graph is read with ``ast`` from every ``import`` in ``gateway/``, including imports inside
functions and under ``TYPE_CHECKING``: a lazy import still ties two modules together.

``KNOWN_UPWARD`` and ``KNOWN_LARGE`` list what the redesign still has to remove. They are a
ratchet: a new upward import, a new cycle or a new module over 300 lines fails here, and so does
an entry that no longer holds (delete it from the list once it is fixed).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"
MAX_LINES = 300

# Most specific prefix wins. 1 core, 2 settings, 3 stores and engines, 4 the policy contract,
# 5 policies, 6 the bundle, 7 the request pipeline, 8 HTTP, 9 command line and development tools.
LAYERS: dict[str, int] = {
    "gateway": 1,
    "gateway.errors": 1,
    "gateway.sse": 1,
    "gateway.yamlsrc": 1,
    "gateway.logs": 1,
    "gateway.metrics": 1,
    "gateway.jurisdictions": 1,
    "gateway.identity": 1,
    "gateway.forgetting": 1,
    "gateway.openai_schema": 1,
    "gateway.openai_plan": 1,
    "gateway.responses_schema": 1,
    "gateway.validation": 1,
    "gateway.layering": 1,
    "gateway.config": 2,
    "gateway.egress": 2,
    "gateway.store": 3,
    "gateway.migrations": 3,
    "gateway.pii": 3,
    "gateway.rag": 3,
    "gateway.accounting": 3,
    "gateway.tokens": 3,
    "gateway.tokenids": 3,
    "gateway.responses": 3,
    "gateway.upstreams": 3,
    "gateway.auth": 3,
    "gateway.oidc": 3,
    "gateway.policy": 4,
    "gateway.services": 4,
    "gateway.chain": 4,
    "gateway.audit": 4,
    "gateway.policies": 5,
    "gateway.bundle": 6,
    "gateway.router": 7,
    "gateway.pipeline": 7,
    "gateway.policytest": 7,
    "gateway.policycases": 7,
    "gateway.subjects": 7,
    "gateway.retention": 7,
    "gateway.http": 8,
    "gateway.app": 8,
    "gateway.cli": 9,
    "gateway.cli_main": 9,
    "gateway.rag.cli": 9,
    "gateway.docgen": 9,
    "gateway.policyshow": 9,
    "gateway.dev": 9,
}

# Imports that still point up (importer, imported): each is work for the redesign.
KNOWN_UPWARD: set[tuple[str, str]] = set()

# Pairs of modules that import each other, directly or through others.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Modules over MAX_LINES lines: each is to be split.
KNOWN_LARGE: set[str] = set()


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gateway")
        ):
            module = node.module or ""
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def placed(module: str) -> str:
    """The most specific LAYERS prefix of ``module``."""
    parts = module.split(".")
    return next(p for i in range(len(parts), 0, -1) if (p := ".".join(parts[:i])) in LAYERS)


def layer(module: str) -> int:
    return LAYERS[placed(module)]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if m != "gateway" and placed(m) == "gateway")
    assert unplaced == [], "place new top-level modules and packages in LAYERS"


def test_imports_point_down_the_layers() -> None:
    upward = {(a, b) for a, deps in graph().items() for b in deps if layer(b) > layer(a)}
    assert upward - KNOWN_UPWARD == set(), "new imports from a higher layer"
    assert KNOWN_UPWARD - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_there_are_no_new_import_cycles() -> None:
    edges = graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    cyclic = {frozenset({a, b}) for a, deps in edges.items() for b in deps if reaches(b, a)}
    assert cyclic - KNOWN_CYCLES == set(), "new import cycles"
    assert KNOWN_CYCLES - cyclic == set(), "fixed: remove these from KNOWN_CYCLES"


def test_modules_stay_under_the_size_limit() -> None:
    large = {
        name
        for name, path in modules().items()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    }
    assert large - KNOWN_LARGE == set(), f"new modules over {MAX_LINES} lines"
    assert KNOWN_LARGE - large == set(), "now under the limit: remove these from KNOWN_LARGE"


def test_policies_hold_no_shadow_branches_and_no_untyped_configs() -> None:
    """Shadow mode is the chain's (gateway/chain.py); a policy's config is typed by ``Policy[C]``."""
    for path in (ROOT / "gateway" / "policies").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        # (`mode` alone is also a pydantic validator's and a RAG query's argument, so the policy's own is looked for)
        found = re.findall(r"\bshadow\b|\bself\.mode\b|\bmode\s*[!=]=", text, flags=re.IGNORECASE)
        assert found == [], f"{path.name} mentions {found}"
        assert "type: ignore" not in text, path.name
        assert not re.search(r"assert isinstance\([^)]*config", text), path.name
