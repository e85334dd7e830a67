"""The package's layers, read from every module's imports (function-level ones included).

core (types, registry, utils, errors, adapters) <- components (data, encoders, indexes, retrievers,
hashing, rerankers, query_rewriting, llm, generative, pipeline, distributed) <- evals, training
<- recipes <- apps (cli, service, demo, integrations). A module may import its own layer or a lower
one, never a higher one, and no chain of imports may lead back to where it started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vistrieve

PACKAGE = Path(vistrieve.__file__).parent

LAYERS: dict[str, int] = {
    "vistrieve.types": 0,
    "vistrieve.registry": 0,
    "vistrieve.utils": 0,
    "vistrieve.errors": 0,
    "vistrieve.adapters": 0,
    "vistrieve.data": 1,
    "vistrieve.encoders": 1,
    "vistrieve.indexes": 1,
    "vistrieve.retrievers": 1,
    "vistrieve.hashing": 1,
    "vistrieve.rerankers": 1,
    "vistrieve.query_rewriting": 1,
    "vistrieve.llm": 1,
    "vistrieve.generative": 1,
    "vistrieve.pipeline": 1,
    "vistrieve.distributed": 1,
    "vistrieve.evals": 2,
    "vistrieve.training": 2,
    "vistrieve.recipes": 3,
    "vistrieve.cli": 4,
    "vistrieve.service": 4,
    "vistrieve.demo": 4,
    "vistrieve.integrations": 4,
    "vistrieve": 4,  # the package's own __init__: the curated public API
}
NAMES = {0: "core", 1: "components", 2: "evals/training", 3: "recipes", 4: "apps"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports_of(path: Path) -> set[str]:
    """Every vistrieve module ``path`` imports, at any depth of its code."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vistrieve"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name == "vistrieve" or name.startswith("vistrieve."):
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        # An import of a name inside a module counts as an import of that module.
        targets = set()
        for imported in imports_of(path):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def test_every_module_has_a_layer() -> None:
    for name in graph():
        assert layer_of(name) in NAMES, name


def test_nothing_imports_upward() -> None:
    upward = [
        f"{src} ({NAMES[layer_of(src)]}) imports {dst} ({NAMES[layer_of(dst)]})"
        for src, targets in graph().items()
        for dst in targets
        if layer_of(dst) > layer_of(src)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_there_is_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    # The checks themselves: a component importing the training layer, and a 3-cycle.
    assert layer_of("vistrieve.encoders.lit") < layer_of("vistrieve.training.tasks")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(
    "allowed",
    [("encoders/__init__.py", "encoders/embedded.py", "recipes/", "cli/train.py", "demo.py")],
)
def test_only_registry_recipes_and_apps_name_the_shapes_model(allowed: tuple[str, ...]) -> None:
    """No library module hard-wires the shapes world's model (``shapes-clip``)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(allowed):
            continue
        if '"shapes-clip"' in path.read_text(encoding="utf-8"):
            offenders.append(rel)
    assert not offenders, f"modules that hard-wire shapes-clip: {offenders}"


def test_argparse_lives_only_in_the_cli_package() -> None:
    users = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "import argparse" in path.read_text(encoding="utf-8")
        and not path.relative_to(PACKAGE).as_posix().startswith("cli/")
    ]
    assert not users, f"argparse outside vistrieve.cli: {users}"
    mains = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8")
    ]
    assert not mains, f"modules with a __main__ block: {mains}"
