"""The layering docs/architecture.md describes holds in the code: one room per concern, imports one way."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _documented_order() -> list[str]:
    """The aggregator's modules in the order of the document's table (top imports from below)."""
    return re.findall(r"^\| `aggregator/([a-z_/]+\.py)` \|", ARCHITECTURE.read_text(), re.MULTILINE)


def _modules() -> dict[str, Path]:
    return {
        str(path.relative_to(ROOT / "aggregator")): path
        for path in (ROOT / "aggregator").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }


def _aggregator_imports(path: Path) -> set[str]:
    """The aggregator modules `path` imports, as paths relative to aggregator/."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aggregator."):
            relative = node.module.removeprefix("aggregator.").replace(".", "/")
            if (ROOT / "aggregator" / f"{relative}.py").exists():
                found.add(f"{relative}.py")
            else:
                found.update(f"{relative}/{alias.name}.py" for alias in node.names)
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("aggregator") for alias in node.names), path
    return found


def test_every_module_is_in_the_table_once_with_a_one_line_docstring() -> None:
    """A newcomer finds every module in docs/architecture.md, and its first line says what it owns."""
    order = _documented_order()
    assert sorted(order) == sorted(_modules())
    for name, path in _modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, name
        assert "\n" not in docstring.strip(), f"{name}: the module docstring is one line"


def test_imports_run_down_the_table() -> None:
    """Each module imports only modules listed below it: no cycles, no reaching back up the layers."""
    order = _documented_order()
    rank = {name: index for index, name in enumerate(order)}
    upward = []
    for name, path in _modules().items():
        for imported in _aggregator_imports(path):
            if rank[imported] <= rank[name]:
                upward.append(f"{name} imports {imported}")
    assert upward == []


def test_the_service_does_not_import_the_benchmarks_or_the_producers() -> None:
    """The benchmark harness and the emitters are outside the service's import graph."""
    for name, path in _modules().items():
        text = path.read_text()
        assert "from producers" not in text, name
        assert re.search(r"^from benchmarks", text, re.MULTILINE) is None, name
