"""The architecture, checked: imports go one way, from the top floor down, with no cycles.

DESIGN.md's boundaries as tests. Every .py file of mylm_jax, mylm_torch and scripts is
parsed with `ast` (nothing is imported, so a broken module cannot hide its imports), and
every import of a project module is collected: at the top of a file, inside functions, in
`if` branches, `from pkg import submodule`, relative imports and
`importlib.import_module("literal")`. What is checked:

1. mylm_jax's module graph has no cycles.
2. Layering: each module belongs to one part of LAYERS and imports only from its own
   part or the parts below it. A new top-level module must be added to the table.
3. No module imports another module's private name (`from a.b import _x`, or `b._x`).
4. No code imports `tests` or `parity_tests`.
5. The twin (mylm_torch) imports from mylm_jax only the jax-free parts.
6. The jax-free parts import no jax library, directly or through other project modules,
   and `import mylm_jax` alone imports no jax.

How an import becomes graph edges. `import a.b.c` runs a/__init__, a/b/__init__ and
a/b/c; `from a.b import c` runs a/b/__init__ and, if c is a submodule, a/b/c. A package's
__init__ is the package's module (`mylm_jax.tokenizer` is mylm_jax/tokenizer/__init__.py).
A module's own enclosing packages are left out: Python always runs them before the module,
so an edge to them says nothing, and every package whose __init__ re-exports its
submodules would look cyclic. They are kept when the import takes a *name* from them
(`from mylm_jax.tokenizer import Tokenizer` inside the tokenizer package is a real cycle).
Imports under `if TYPE_CHECKING:` count too: a type is a dependency.
Not seen: `importlib.import_module(variable)` (e.g. a table of command modules).

Run: python -m pytest -q -n 0 tests/test_architecture.py   (about 2 s; nothing is imported
but `mylm_jax` itself, in a subprocess)
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("mylm_jax", "mylm_torch", "scripts")  # the code these rules govern
TEST_PACKAGES = ("tests", "parity_tests")              # code must never import these

# The parts of mylm_jax, bottom to top: a module may import from its own part and the parts
# below it, never above. `mylm_jax` itself (the root __init__) imports nothing. A part that
# does not exist (yet) matches nothing; a module that matches no part fails the test.
LAYERS = (
    ("mylm_jax.config", "mylm_jax.variants", "mylm_jax.fileio", "mylm_jax.allocator",
     "mylm_jax.startup", "mylm_jax.ownership"),                               # 0 no jax
    ("mylm_jax.tokenizer",),                                                  # 1 no jax
    ("mylm_jax.data",),                                                       # 2
    ("mylm_jax.model", "mylm_jax.parallel"),                                  # 3
    ("mylm_jax.optim", "mylm_jax.generate"),                                  # 4
    ("mylm_jax.train",),                                                      # 5
    ("mylm_jax.studies", "mylm_jax.api", "mylm_jax.interop", "mylm_jax.serve",
     "mylm_jax.quickstart"),                                                  # 6
    ("mylm_jax.cli", "mylm_jax.launch", "mylm_jax.__main__"),                 # 7 the `mylm` command
)
JAX_FREE_PARTS = ("mylm_jax.config", "mylm_jax.variants", "mylm_jax.fileio", "mylm_jax.allocator", "mylm_jax.startup",
                  "mylm_jax.ownership", "mylm_jax.tokenizer")
JAX_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax", "grain")
TWIN_MAY_IMPORT = JAX_FREE_PARTS  # the twin shares the config schema (and tokenizer), nothing else


# --- collecting imports ----------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    line: int
    module: str                         # absolute: "a.b" in `import a.b` / `from a.b import c`
    names: tuple[str, ...] | None = None  # the names of `from a.b import ...`; None for `import a.b`


@dataclass
class Module:
    name: str                # "mylm_jax.tokenizer" for mylm_jax/tokenizer/__init__.py
    path: str                # relative to the repository root, for messages
    is_package: bool
    imports: list[Import] = field(default_factory=list)
    private_uses: list[tuple[int, str, str]] = field(default_factory=list)  # (line, module, name) of `mod._x`


def module_name(relative: Path) -> tuple[str, bool]:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def collect_imports(source: str, name: str, is_package: bool, path: str = "<string>") -> Module:
    """Every import statement anywhere in `source` (a module called `name`)."""
    tree = ast.parse(source, filename=path)
    module = Module(name, path, is_package)
    package = name if is_package else name.rpartition(".")[0]  # what `from . import x` means
    for node in ast.walk(tree):  # walks into functions, classes and `if` blocks too
        if isinstance(node, ast.Import):
            module.imports += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .` is this module's package, `from ..` its parent, ...
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            module.imports.append(Import(node.lineno, base, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Call) and _called_name(node.func) in ("import_module", "__import__") \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and not node.args[0].value.startswith("."):
            module.imports.append(Import(node.lineno, node.args[0].value))
    module.private_uses = _private_attribute_uses(tree)
    return module


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` as written, or None for anything that is not a chain of names."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return inner and f"{inner}.{node.attr}"
    return None


def _private_attribute_uses(tree: ast.AST) -> list[tuple[int, str, str]]:
    """`mod._x` where `mod` names an imported module: a private name reached without a
    `from ... import _x`. Which local names denote modules comes from the import statements."""
    aliases: dict[str, str] = {}  # local dotted name -> module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:  # `import a.b.c` binds `a`; `a.b.c` is then how the module is written
                    parts = alias.name.split(".")
                    aliases.update({".".join(parts[:i]): ".".join(parts[:i]) for i in range(1, len(parts) + 1)})
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:  # may be a submodule; resolved against known modules later
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = aliases.get(_dotted(node.value) or "")
            if owner:
                uses.append((node.lineno, owner, node.attr))
    return uses


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.cache
def project() -> dict[str, Module]:
    """Every module of SOURCE_DIRS, by name (scripts/x.py is `scripts.x`)."""
    modules = {}
    for directory in SOURCE_DIRS:
        for file in sorted((ROOT / directory).rglob("*.py")):
            if "__pycache__" in file.parts:
                continue
            relative = file.relative_to(ROOT)
            name, is_package = module_name(relative)
            modules[name] = collect_imports(file.read_text(encoding="utf-8"), name, is_package, str(relative))
    return modules


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def is_project(name: str) -> bool:
    return name.split(".")[0] in SOURCE_DIRS + TEST_PACKAGES


def modules_run(imp: Import, importer: Module, known) -> set[str]:
    """The project modules that `imp`, written in `importer`, runs (see the docstring)."""
    if not is_project(imp.module):
        return set()
    if imp.names is None:
        named = {imp.module}
    else:
        submodules = {f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in known}
        takes_a_name = len(submodules) < len(imp.names)  # e.g. a class, or `*`, from the __init__
        named = submodules | ({imp.module} if takes_a_name else set())
    enclosing = set(ancestors(importer.name)) | ({importer.name} if importer.is_package else set())
    implicit = {a for n in named for a in ancestors(n)} | ({imp.module} if imp.names is not None else set())
    return (named | (implicit - enclosing)) - {importer.name}


def third_party(imp: Import) -> str | None:
    top = imp.module.split(".")[0]
    return None if not top or is_project(imp.module) or top == "__future__" else top


@functools.cache
def project_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """importer -> the project modules it runs, and where each edge is written ("path:line")."""
    known = project()
    graph: dict[str, set[str]] = {name: set() for name in known}
    where: dict[tuple[str, str], str] = {}
    for module in known.values():
        for imp in module.imports:
            for target in modules_run(imp, module, known):
                graph[module.name].add(target)
                where.setdefault((module.name, target), f"{module.path}:{imp.line}")
    return graph, where


def in_part(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


# --- the checks, as functions of a graph (so the self-test can feed them a fake one) -----


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected set of modules (Tarjan's algorithm), each
    as [a, b, ..., a]; the set's other members follow after a "|" when the loop misses them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a component: pop it
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        # Breadth-first from `start` back to itself, inside the component: a shortest loop.
        parent: dict[str, str] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            if start in graph.get(v, ()):
                loop = [v]
                while loop[-1] != start:
                    loop.append(parent[loop[-1]])
                cycle = [*reversed(loop), start]
                rest = sorted(component - set(cycle))
                cycles.append(cycle + (["|", *rest] if rest else []))
                break
            for w in sorted(graph.get(v, ())):
                if w in component and w not in parent and w != start:
                    parent[w] = v
                    queue.append(w)
    return cycles


def floor(name: str, layers=LAYERS) -> int | None:
    """The index of the part of `layers` that holds `name` (the longest matching part)."""
    matches = [(len(part), level) for level, parts in enumerate(layers) for part in parts if in_part(name, part)]
    return max(matches)[1] if matches else None


def upward_imports(graph: dict[str, set[str]], layers=LAYERS, root: str = "mylm_jax") -> list[tuple[str, str]]:
    """Edges (a, b) within `root` where b sits on a higher floor than a; the root module
    imports nothing, and any module may import it (it is below every part)."""
    bad = []
    for a, targets in graph.items():
        if not in_part(a, root):
            continue
        for b in sorted(targets):
            if not in_part(b, root) or b == root:
                continue
            if a == root:
                bad.append((a, b))
                continue
            fa, fb = floor(a, layers), floor(b, layers)
            if fa is not None and fb is not None and fb > fa:
                bad.append((a, b))
    return bad


def deepest(names) -> list[str]:
    """`names` without the packages of other names: one statement that runs mylm_jax.data
    and mylm_jax.data.readers is reported once, as mylm_jax.data.readers."""
    return sorted(n for n in names if not any(other != n and in_part(other, n) for other in names))


def fail(title: str, violations: list[str]) -> None:
    if violations:  # one line per violation, no repr of the list
        pytest.fail(f"{title} ({len(violations)}):\n  " + "\n  ".join(violations))


def part_name(name: str) -> str:
    level = floor(name)
    return f"{next(p for p in LAYERS[level] if in_part(name, p))} (floor {level})"


# --- the tests ---------------------------------------------------------------------------


def test_the_checks_catch_a_synthetic_violation():
    # A fake graph: a -> b -> c -> a is a cycle, d -> a is not; e -> e is.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    # Layering: a low module importing a high one is caught; the other way round is fine.
    layers = (("p.low",), ("p.high", "p.side"))
    graph = {"p.low.x": {"p.high.y"}, "p.high.y": {"p.low.x", "p.side"}, "p": set()}
    assert upward_imports(graph, layers, root="p") == [("p.low.x", "p.high.y")]
    assert floor("p.new", layers) is None  # a module outside the table: reported by its own test
    # The collector sees imports inside functions, relative ones, and submodules taken by `from`.
    source = ("from . import errors\nimport mylm_jax.data.readers as r\n"
              "def f():\n    from mylm_jax.tokenizer import train, _secret\n    return r._skip\n")
    module = collect_imports(source, "mylm_jax.tokenizer.tokenizer", is_package=False)
    known = {"mylm_jax.tokenizer.train", "mylm_jax.tokenizer.errors", "mylm_jax.data.readers"}
    runs = set().union(*(modules_run(imp, module, known) for imp in module.imports))
    # `_secret` is a name, not a submodule, so the package's __init__ is an edge (a cycle risk).
    assert runs == {"mylm_jax.tokenizer.errors", "mylm_jax.data", "mylm_jax.data.readers",
                    "mylm_jax.tokenizer.train", "mylm_jax.tokenizer"}
    assert module.private_uses == [(5, "mylm_jax.data.readers", "_skip")]


def test_mylm_jax_has_no_import_cycles():
    graph, where = project_graph()
    jax_graph = {a: {b for b in targets if in_part(b, "mylm_jax")} for a, targets in graph.items()
                 if in_part(a, "mylm_jax")}
    messages = []
    for cycle in find_cycles(jax_graph):
        loop = cycle[:cycle.index("|")] if "|" in cycle else cycle
        steps = ", ".join(f"{a} -> {b} ({where[a, b]})" for a, b in zip(loop, loop[1:]))
        others = f"; the cycle's set also holds {', '.join(cycle[len(loop) + 1:])}" if "|" in cycle else ""
        messages.append(f"{' -> '.join(loop)}: {steps}{others}")
    fail("import cycles in mylm_jax", messages)


def test_every_mylm_jax_module_belongs_to_a_part():
    missing = [f"{name} ({module.path})" for name, module in project().items()
               if in_part(name, "mylm_jax") and name != "mylm_jax" and floor(name) is None]
    fail("modules in no part of LAYERS: add each to LAYERS in tests/test_architecture.py, "
         "on the floor of the lowest part it imports from or below the parts that use it", missing)


def test_imports_go_down_the_layers():
    graph, where = project_graph()
    by_statement: dict[tuple[str, str], list[str]] = {}  # (importer, "path:line") -> what it imports upward
    for a, b in upward_imports(graph):
        by_statement.setdefault((a, where[a, b]), []).append(b)
    messages = []
    for (a, location), targets in sorted(by_statement.items()):
        for b in deepest(targets):
            if a == "mylm_jax":
                messages.append(f"mylm_jax/__init__.py imports {b} ({location}); the package root imports nothing")
            else:
                messages.append(f"{a} [{part_name(a)}] imports {b} [{part_name(b)}] ({location})")
    fail("imports from a higher part (move the code down, or the importer up)", messages)


def test_no_private_names_across_modules():
    known = project()
    messages = []
    for module in known.values():
        for imp in module.imports:
            if imp.names and is_project(imp.module):
                for n in imp.names:
                    if _is_private(n) and imp.module != module.name:
                        messages.append(f"{module.path}:{imp.line}: from {imp.module} import {n}")
        for line, owner, n in module.private_uses:
            if is_project(owner) and owner in known and owner != module.name:
                messages.append(f"{module.path}:{line}: uses {owner}.{n}")
    fail("private names used across modules (make them public, or move the code)", messages)


def test_code_does_not_import_the_tests():
    messages = [f"{module.path}:{imp.line}: imports {imp.module}" for module in project().values()
                for imp in module.imports if imp.module.split(".")[0] in TEST_PACKAGES]
    fail("code importing tests (move what it needs into the package)", messages)


def test_twin_imports_only_the_jax_free_parts_of_mylm_jax():
    known = project()
    messages = []
    for module in known.values():
        if not in_part(module.name, "mylm_torch"):
            continue
        for imp in module.imports:
            forbidden = [t for t in modules_run(imp, module, known) if in_part(t, "mylm_jax") and t != "mylm_jax"
                         and not any(in_part(t, part) for part in TWIN_MAY_IMPORT)]
            messages += [f"{module.path}:{imp.line}: imports {target}" for target in deepest(forbidden)]
    fail(f"the twin imports more of mylm_jax than {', '.join(TWIN_MAY_IMPORT)}", messages)


def test_jax_free_parts_import_no_jax_even_indirectly():
    graph, where = project_graph()
    known = project()
    # Breadth-first from every module of the jax-free parts: the first path to each module reached.
    starts = sorted(n for n in known if any(in_part(n, part) for part in JAX_FREE_PARTS))
    came_from: dict[str, str | None] = dict.fromkeys(starts)
    queue = deque(starts)
    messages = []
    while queue:
        v = queue.popleft()
        jax_imports = [imp for imp in known[v].imports if third_party(imp) in JAX_LIBRARIES]
        if jax_imports:  # report the first module on the way that imports jax; not what lies beyond it
            path = [v]
            while came_from[path[-1]] is not None:
                path.append(came_from[path[-1]])
            path.reverse()  # from a module of a jax-free part to v
            via = "".join(f"{a} imports {b} ({where[a, b]}), " for a, b in zip(path, path[1:]))
            libraries = ", ".join(sorted({third_party(imp) for imp in jax_imports}))
            messages.append(f"{via}{v} imports {libraries} ({known[v].path}:{jax_imports[0].line})")
            continue
        for w in sorted(graph[v]):
            if w in known and w not in came_from:
                came_from[w] = v
                queue.append(w)
    fail(f"{', '.join(JAX_FREE_PARTS)} reach a jax library", messages)


def test_importing_mylm_jax_imports_no_jax():
    code = ("import sys, mylm_jax; loaded = sorted(m for m in " + repr(JAX_LIBRARIES)
            + " if m in sys.modules); assert not loaded, loaded")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"`import mylm_jax` loads a jax library:\n{result.stderr}"
