"""The walls between the gateway's layers, read from the code itself.

The layer map is the table under "## Layers" in docs/ARCHITECTURE.md (one place: this test parses it, so the page
cannot drift from the code). Every module's imports are read with ``ast``, at the top of the module and inside
functions alike (a lazy import is still a dependency), and three rules are enforced (``python tests/test_layers.py``
lists what breaks them):

* every module of the package belongs to exactly one layer of the table;
* a module imports only from its own layer and the layers below it; the tooling is imported by no product module,
  except by ``gateway.cli`` (the entry point), inside its command functions, so ``gateway serve`` never loads it;
* no import cycle between modules.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
TOOLING = "tooling"  # the layer no product module may import
ENTRY_POINT = "gateway.cli"  # the one product module that reaches the tooling, lazily


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]  # packages or modules (a package holds its submodules); "gateway" alone: the root only


@dataclass(frozen=True)
class Import:
    source: str
    target: str  # a module of the package
    line: int
    in_function: bool


def read_layers(markdown: str) -> list[Layer]:
    """The layer table of ARCHITECTURE.md, top layer first: ``| name | `gateway.x`, `gateway.y` | what |``."""
    section = markdown.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or cells[0] in ("Layer", "") or set(cells[0]) <= set("-: "):
            continue
        names = tuple(re.findall(r"`(gateway(?:\.\w+)*)`", cells[1]))
        layers.append(Layer(cells[0].strip("*"), names))
    return layers


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Every module under ``package_dir`` (the ``gateway`` folder) by dotted name; a package is its ``__init__``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


class _Reader(ast.NodeVisitor):
    def __init__(self, source: str, is_package: bool, modules: dict[str, Path]) -> None:
        self.source, self.modules, self.depth = source, modules, 0
        self.package = source if is_package else source.rpartition(".")[0]
        self.found: list[Import] = []

    def _add(self, target: str | None, node: ast.AST) -> None:
        if target is not None and target != self.source:
            self.found.append(Import(self.source, target, node.lineno, self.depth > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "gateway" or alias.name.startswith("gateway."):
                self._add(_resolve(alias.name, self.modules), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module != "gateway" and not module.startswith("gateway."):
            return
        for alias in node.names:
            submodule = f"{module}.{alias.name}"
            self._add(submodule if submodule in self.modules else _resolve(module, self.modules), node)


def read_imports(modules: dict[str, Path]) -> list[Import]:
    """Every import of a package module by a package module, top level and inside functions."""
    found = []
    for name, path in modules.items():
        reader = _Reader(name, path.name == "__init__.py", modules)
        reader.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found += reader.found
    return found


def layer_of(module: str, layers: list[Layer]) -> int | None:
    """The index of the module's layer (0: the top one), by the longest name of the table that holds it."""
    best: tuple[int, int] | None = None
    for index, layer in enumerate(layers):
        for name in layer.modules:
            holds = module == name or (name != "gateway" and module.startswith(name + "."))
            if holds and (best is None or len(name) > best[1]):
                best = (index, len(name))
    return None if best is None else best[0]


def wall_violations(modules: list[str], imports: list[Import], layers: list[Layer]) -> list[str]:
    """What breaks the map, one line each: a module in no layer, an import upwards, the tooling imported by the
    product (other than lazily by the entry point)."""
    problems = [f"{m}: in no layer of the table in docs/ARCHITECTURE.md"
                for m in modules if layer_of(m, layers) is None]
    tooling = next(i for i, layer in enumerate(layers) if layer.name == TOOLING)
    for imp in imports:
        source, target = layer_of(imp.source, layers), layer_of(imp.target, layers)
        if source is None or target is None:
            continue
        where = f"{imp.source} (line {imp.line}) imports {imp.target}"
        if target == tooling and source != tooling:
            if not (imp.source == ENTRY_POINT and imp.in_function):
                problems.append(f"{where}: the product imports the tooling"
                                + (" (the entry point may, inside a command function only)"
                                   if imp.source == ENTRY_POINT else ""))
        elif target < source:
            problems.append(f"{where}: {layers[source].name} imports the higher layer {layers[target].name}")
    return problems


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def check(package_dir: Path, layers: list[Layer]) -> list[str]:
    """Everything wrong with the package at ``package_dir`` under ``layers``: the walls, then the cycles."""
    modules = package_modules(package_dir)
    imports = read_imports(modules)
    return wall_violations(list(modules), imports, layers) + [
        "import cycle: " + " <-> ".join(group) for group in import_cycles(imports)]


LAYERS = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- the map


def test_the_layer_map_is_the_table_in_architecture_md():
    names = [layer.name for layer in LAYERS]
    assert names[0] == "entry" and TOOLING in names and names[-1] == "base", names
    modules = package_modules(ROOT / "gateway")
    listed = [name for layer in LAYERS for name in layer.modules]
    assert len(listed) == len(set(listed)), "a name in two layers"
    # Every name in the table is a module or package that exists: the page names no stale path.
    assert [name for name in listed if name not in modules] == []


def test_the_top_level_shows_the_architecture():
    """``ls gateway/``: the packages by layer and a few loose modules (the entry point, settings), no more."""
    loose = sorted(p.stem for p in (ROOT / "gateway").glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 5, loose


# ---------------------------------------------------------------------------------------------------- the rules


def test_every_module_keeps_to_its_layer_and_none_imports_the_tooling():
    modules = package_modules(ROOT / "gateway")
    assert wall_violations(list(modules), read_imports(modules), LAYERS) == []


def test_serving_loads_none_of_the_tooling():
    """The entry point imports a tooling module only for the tooling command being run (its options included)."""
    code = ("import sys, gateway.cli as cli, gateway.server.serve, gateway.server.workers\n"
            "status = cli.main(['serve', '--workers', '0'])  # parsed, then refused: nothing is served\n"
            "print(status, sorted(m for m in sys.modules if m.startswith('gateway.tooling')))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.stdout.strip() == "2 []", (done.stdout, done.stderr)


def test_no_import_cycle():
    assert import_cycles(read_imports(package_modules(ROOT / "gateway"))) == []


def test_the_whole_check_passes():
    assert check(ROOT / "gateway", LAYERS) == []


# ---------------------------------------------------------------------------------------------------- it can fail


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__", "*.wav"))
    return tmp_path / "gateway"


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + code + "\n", encoding="utf-8")


def test_a_product_module_importing_the_tooling_fails(tmp_path):
    package = _copy(tmp_path)
    _append(package / "server" / "app.py",
            "def _plot():\n    from gateway.tooling.replay.plot import write_timeline_png")
    problems = check(package, LAYERS)
    assert len(problems) == 1 and "gateway.server.app" in problems[0] and "imports the tooling" in problems[0], problems


def test_the_entry_point_importing_the_tooling_at_the_top_fails(tmp_path):
    package = _copy(tmp_path)
    _append(package / "cli.py", "from gateway.tooling import fuzz")
    problems = check(package, LAYERS)
    assert len(problems) == 1 and "gateway.cli" in problems[0] and "inside a command function" in problems[0], problems


def test_an_import_upwards_fails(tmp_path):
    package = _copy(tmp_path)
    _append(package / "call" / "core.py", "import gateway.media_stream.direct")
    problems = check(package, LAYERS)
    assert problems == [f"gateway.call.core (line {len((package / 'call' / 'core.py').read_text().splitlines())}) "
                        "imports gateway.media_stream.direct: core imports the higher layer shell"], problems


def test_an_import_cycle_fails_even_through_a_function(tmp_path):
    package = _copy(tmp_path)
    _append(package / "twilio" / "sids.py", "def _later():\n    from gateway.twilio import media")
    problems = check(package, LAYERS)
    assert problems == ["import cycle: gateway.twilio.media <-> gateway.twilio.sids"], problems


def test_a_module_in_no_layer_fails(tmp_path):
    package = _copy(tmp_path)
    (package / "helpers.py").write_text('"""A loose module nobody placed."""\n', encoding="utf-8")
    assert check(package, LAYERS) == ["gateway.helpers: in no layer of the table in docs/ARCHITECTURE.md"]


def test_relative_and_submodule_imports_are_resolved():
    layers = [Layer("entry", ("gateway.cli",)), Layer(TOOLING, ("gateway.tooling",)), Layer("base", ("gateway.audio",))]
    modules = {"gateway.cli": Path("cli.py"), "gateway.tooling": Path("__init__.py"),
               "gateway.tooling.fuzz": Path("fuzz.py"), "gateway.audio": Path("__init__.py"),
               "gateway.audio.convert": Path("convert.py")}
    reader = _Reader("gateway.tooling.fuzz", False, modules)
    reader.visit(ast.parse("from . import fuzz\nfrom ..audio import convert\nimport gateway.audio.convert as c\n"
                           "def f():\n    from gateway.cli import main\n"))
    assert [(i.target, i.in_function) for i in reader.found] == [
        ("gateway.audio.convert", False), ("gateway.audio.convert", False), ("gateway.cli", True)]
    assert wall_violations(list(modules), reader.found, layers) == [
        "gateway.tooling.fuzz (line 5) imports gateway.cli: tooling imports the higher layer entry"]


if __name__ == "__main__":  # `python tests/test_layers.py`: every module's layer problem and every cycle, one a line
    found = check(ROOT / "gateway", LAYERS)
    print("\n".join(found) or "no problem: every import keeps to the layer map, no cycle")
    sys.exit(1 if found else 0)
