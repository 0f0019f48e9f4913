"""The layer order written in docs/architecture.md, enforced on every import in the package."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "provenance"


def _layers() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    table: dict[str, int] = {}
    for line in block.group(1).splitlines():
        level, _, modules = line.partition(":")
        for module in modules.split():
            table[module] = int(level.split()[0])
    return table


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every provenance module imported anywhere in the file (lazy imports included)."""
    found: set[str] = set()
    module = _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "provenance")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "provenance":
                found.add(target)
                # `from provenance.x import y` may import the submodule provenance.x.y
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def _layer_of(module: str, table: dict[str, int]) -> int | None:
    best = None
    for prefix, level in table.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, level)
    return best[1] if best else None


def _existing(module: str) -> bool:
    rel = Path(*module.split("."))
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def test_every_module_has_a_layer() -> None:
    table = _layers()
    missing = [_module_name(p) for p in PACKAGE.rglob("*.py") if _layer_of(_module_name(p), table) is None]
    assert not missing, f"modules without a layer in docs/architecture.md: {missing}"


def test_no_import_reaches_a_higher_layer() -> None:
    table = _layers()
    bad = []
    for path in PACKAGE.rglob("*.py"):
        src = _module_name(path)
        level = _layer_of(src, table)
        for target in _imports(path):
            if not _existing(target):
                continue
            tl = _layer_of(target, table)
            if tl is not None and level is not None and tl > level:
                bad.append(f"{src} (layer {level}) imports {target} (layer {tl})")
    assert not bad, "\n".join(sorted(bad))


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        src = _module_name(path)
        if src == "provenance":
            continue  # the facade re-exports; nothing below imports it
        for target in _imports(path):
            if _existing(target) and target != "provenance" and _package(target) != _package(src):
                graph[_package(src)].add(_package(target))
    cycles = []

    def visit(node: str, stack: list[str], seen: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert not cycles, "import cycles between packages:\n" + "\n".join(sorted(set(cycles)))


def test_nothing_imports_the_package_facade() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        src = _module_name(path)
        if src == "provenance":
            continue
        if "provenance" in _imports(path):
            offenders.append(src)
    assert not offenders, f"import provenance.<module> instead of the facade: {offenders}"
