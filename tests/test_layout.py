"""The shape of the code: no import cycle inside workshaper/, no oversized module, and the
runtime package never loading the tooling of tools/ (workshaper_tools)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (ROOT / "workshaper", ROOT / "tools" / "workshaper_tools")

#: Most lines a module may have.
MAX_LINES = 600
#: Modules allowed over MAX_LINES, each with the reason (none today).
OVERSIZED: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT / "workshaper").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["workshaper", *parts])


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The workshaper modules ``path`` imports, anywhere in it (lazy imports count too).
    ``from package import name`` counts as importing the submodule when ``name`` is one."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_inside_workshaper() -> None:
    paths = sorted((ROOT / "workshaper").rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, modules) for p in paths}
    assert graph["workshaper.cli.main"] >= {"workshaper.cli.ops", "workshaper.demo"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_over_the_size_limit() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for package in PACKAGES
        for p in package.rglob("*.py")
    }
    over = {p: n for p, n in sizes.items() if n > MAX_LINES and p not in OVERSIZED}
    assert not over, f"modules over {MAX_LINES} lines (split them, or say why here): {over}"


def test_the_runtime_never_imports_the_tooling() -> None:
    script = (
        "import sys, workshaper, workshaper.cli.worker, workshaper.cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'workshaper_tools'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_bench_without_the_tooling_says_what_to_install() -> None:
    script = (
        "import sys\n"
        "class NotInstalled:\n"  # finds no workshaper_tools, as when it is not installed
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'workshaper_tools':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "from workshaper.cli.main import main\n"
        "main(['bench', '--quick'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "workshaper-tools" in lines[0] and "pip install -e tools" in lines[0]
