"""The backend's layout (docs/architecture.md): layers that import only downward, no cycles, sizes.

Every import of every module under src/tskd is read with ``ast`` - module-level, inside
functions and under ``TYPE_CHECKING`` alike, since a lazy import is still a dependency - and
checked against ``LAYERS``, lowest first: a module may import modules of its own layer and of
the layers below it, never one above. Sizes: no module over ``MAX_LINES``, no function or
method (of the backend or the frontend) over ``MAX_FUNCTION_LINES``, argument-parser builders
aside. The top-level modules are one layer each (``errors`` < ``temp_files`` < ``atomic`` <
``checkpoint`` < ``safe_regex`` < ``lora_targets`` < ``config_compat`` < ``config_io`` <
``config`` < ``distributed`` < ``device`` < ``callbacks`` < ``stopping`` < ``engine``); each
package is one layer.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
BACKEND = SRC / "tskd"

# lowest first; keep in step with the table in docs/architecture.md
LAYERS = (
    "tskd.errors",
    "tskd.temp_files",
    "tskd.atomic",
    "tskd.checkpoint",
    "tskd.safe_regex",
    "tskd.lora_targets",
    "tskd.config_compat",
    "tskd.config_io",
    "tskd.config",
    "tskd.distributed",
    "tskd.device",
    "tskd.callbacks",
    "tskd.stopping",
    "tskd.engine",
    "tskd.data",
    "tskd.models",
    "tskd.inference",
    "tskd.training",
    "tskd.pipeline",
    "tskd.apps",
)
ROOT_INIT_IMPORTS = {"tskd.errors"}  # ``import tskd`` stays cheap: only the error classes
MAX_LINES = 400
OVER_MAX_LINES: set[str] = set()  # modules allowed over MAX_LINES, each with its reason: none
MAX_FUNCTION_LINES = 60  # a whole definition: decorators, signature, docstring, body
PARSER_BUILDERS = {"build_parser"}  # argument-parser builders: one flat list of options, exempt
# functions allowed over MAX_FUNCTION_LINES, each with its reason ("module:qualified name")
OVER_MAX_FUNCTION_LINES: set[str] = set()


def module_name(path: Path) -> str:
    """``src/tskd/data/io.py`` -> ``tskd.data.io``; a package's ``__init__`` -> the package."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def backend_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(BACKEND.rglob("*.py"))}


def imports_of(name: str, source: str, known: set[str]) -> set[str]:
    """The tskd modules (of ``known``) that the source of module ``name`` imports, anywhere."""
    is_package = name in known and (BACKEND / Path(*name.split(".")[1:]) / "__init__.py").is_file()
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            for alias in node.names:  # ``from pkg import module`` names a module
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m == "tskd" or m.startswith(("tskd.", "napari_tskd"))}


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the layer holding ``module``; ``tskd.__main__`` is above all."""
    if module == "tskd.__main__":
        return len(LAYERS)
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and the docs")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs upward or reaches the frontend; what the root ``tskd`` imports."""
    out = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            if dst.startswith("napari_tskd"):
                out.append(f"{src} imports the frontend {dst}")
            elif src == "tskd":
                if dst not in ROOT_INIT_IMPORTS:
                    out.append(f"tskd/__init__.py imports {dst}")
            elif dst == "tskd":  # ``tskd.__version__``: the root imports only tskd.errors
                continue
            elif layer_of(dst) > layer_of(src):
                out.append(f"{src} (layer {LAYERS[layer_of(src)]}) imports {dst} "
                           f"(layer {LAYERS[layer_of(dst)]}, above)")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def backend_graph() -> dict[str, set[str]]:
    modules = backend_modules()
    known = set(modules)
    return {name: imports_of(name, path.read_text(), known) - {name}
            for name, path in modules.items()}


def test_every_module_belongs_to_a_documented_layer() -> None:
    unplaced = []
    for name in backend_modules():
        if name in ("tskd", "tskd.__main__"):
            continue
        try:
            layer_of(name)
        except AssertionError as exc:
            unplaced.append(str(exc))
    assert unplaced == []
    docs = (ROOT / "docs" / "architecture.md").read_text()
    assert [layer for layer in LAYERS if f"`{layer}`" not in docs] == []


def test_imports_run_only_downward() -> None:
    assert violations(backend_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(backend_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    """The checker itself: an upward import, a frontend import and a cycle are each reported."""
    known = {"tskd.data.io", "tskd.pipeline.stages", "tskd.models.student"}
    graph = {"tskd.data.io": imports_of("tskd.data.io",
                                        "def f():\n    from tskd.pipeline import stages\n", known),
             "tskd.models.student": imports_of("tskd.models.student",
                                               "import napari_tskd._jobs\n", known)}
    assert graph["tskd.data.io"] == {"tskd.pipeline.stages"}
    assert violations(graph) == [
        "tskd.data.io (layer tskd.data) imports tskd.pipeline.stages (layer tskd.pipeline, above)",
        "tskd.models.student imports the frontend napari_tskd._jobs",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", [layer for layer in LAYERS if "." in layer
                                     and (BACKEND / layer.split(".")[1] / "__init__.py").is_file()])
def test_package_inits_hold_only_a_docstring(package: str) -> None:
    """Importing ``tskd.pipeline.run_folder`` must not run ``pipeline.stages`` (torch) first."""
    tree = ast.parse((BACKEND / package.split(".")[1] / "__init__.py").read_text())
    assert ast.get_docstring(tree)
    assert len(tree.body) == 1, f"{package}/__init__.py holds more than its docstring"


def test_relative_imports_resolve() -> None:
    known = {"tskd.data.phantoms", "tskd.data.phantoms.util", "tskd.data.io"}
    assert imports_of("tskd.data.phantoms", "from .util import grid\nfrom ..io import x\n",
                      known) == {"tskd.data.phantoms.util", "tskd.data.io"}


def test_no_module_exceeds_the_line_limit() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in backend_modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES and n not in OVER_MAX_LINES} == {}
    assert set(sizes) >= OVER_MAX_LINES  # an exception names a module that exists
    assert max(sizes.values()) > 0


def function_sizes(source: str) -> dict[str, int]:
    """{qualified name: lines} of every function and method in ``source``, nested ones too.

    A definition's lines run from its first decorator to its last line, docstring included.
    """
    sizes: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    sizes[name] = child.end_lineno - first + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sizes


def all_function_sizes() -> dict[str, int]:
    """``function_sizes`` of every module of the backend and the frontend, keyed "path:name"."""
    sizes = {}
    for path in sorted([*BACKEND.rglob("*.py"), *(ROOT / "napari_tskd").rglob("*.py")]):
        where = path.relative_to(SRC if path.is_relative_to(SRC) else ROOT).as_posix()
        sizes |= {f"{where}:{name}": n for name, n in function_sizes(path.read_text()).items()}
    return sizes


def test_no_function_exceeds_the_line_limit() -> None:
    sizes = all_function_sizes()
    over = {name: n for name, n in sizes.items() if n > MAX_FUNCTION_LINES}
    assert {name: n for name, n in over.items()
            if name.rpartition(":")[2].rpartition(".")[2] not in PARSER_BUILDERS
            and name not in OVER_MAX_FUNCTION_LINES} == {}
    # every exception names a function that exists and is still over the limit
    assert {name for name in OVER_MAX_FUNCTION_LINES if name not in over} == set()
    assert any(name.endswith(":build_parser") for name in sizes)
    assert any(name.startswith("napari_tskd/") for name in sizes)


def test_function_sizes_count_decorators_docstrings_and_methods() -> None:
    source = (
        "class A:\n"
        "    @property\n"
        "    def p(self):\n"
        '        """Doc."""\n'
        "        return 1\n"
        "\n"
        "def f():\n"
        "    def g():\n"
        "        pass\n"
        "    return g\n"
    )
    assert function_sizes(source) == {"A.p": 4, "f": 4, "f.g": 2}


@pytest.mark.parametrize("section", ["packages"])
def test_setup_cfg_ships_every_package(section: str) -> None:
    """setup.cfg lists its packages by hand (tskd under src/, napari_tskd at the top): complete.

    A folder of the backend without ``__init__.py`` (``tskd.assets``: the built-in teacher's
    weights) is a data-only package, which setuptools also needs listed to ship its files.
    """
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"][section].split())
    on_disk = {module_name(p.parent / "__init__.py") for p in BACKEND.rglob("__init__.py")}
    on_disk |= {".".join(p.relative_to(SRC).parts) for p in BACKEND.rglob("*")
                if p.is_dir() and p.name != "__pycache__" and not (p / "__init__.py").exists()}
    on_disk |= {".".join(p.parent.relative_to(ROOT).parts)
                for p in (ROOT / "napari_tskd").rglob("__init__.py")}
    assert listed == on_disk


def undocumented_arguments(source: str) -> list[str]:
    """Public functions and methods of ``source`` that take arguments but have no ``Args:``.

    Public: the name and every enclosing class's name do not start with ``_``; functions nested
    in functions are not part of an interface and are skipped. A method's first argument
    (``self``/``cls``) does not count, nor does a ``staticmethod``'s lack of one.
    """
    found: list[str] = []

    def visit(node: ast.AST, prefix: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{prefix}{child.name}.", True)
            elif (isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                  and not child.name.startswith("_")):
                a = child.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                static = any(isinstance(d, ast.Name) and d.id == "staticmethod"
                             for d in child.decorator_list)
                if in_class and not static and names:
                    names = names[1:]  # self or cls
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                if names and "Args:" not in (ast.get_docstring(child) or ""):
                    found.append(f"{prefix}{child.name}")
            elif isinstance(child, ast.If | ast.Try):  # definitions under TYPE_CHECKING etc.
                visit(child, prefix, in_class)

    visit(ast.parse(source), "", False)
    return found


def test_public_functions_with_arguments_document_them() -> None:
    """Google style (docs/architecture.md, "Docstrings"): every argument under ``Args:``."""
    missing = {f"{name}:{fn}" for name, path in backend_modules().items()
               for fn in undocumented_arguments(path.read_text())}
    assert sorted(missing) == []


def test_the_args_check_sees_methods_and_skips_private_and_argumentless() -> None:
    source = (
        "def f(a):\n"
        '    """No section."""\n'
        "def g(a):\n"
        '    """Doc.\n\n    Args:\n        a: x.\n    """\n'
        "def h():\n"
        '    """No arguments."""\n'
        "def _p(a):\n"
        "    pass\n"
        "class C:\n"
        "    def m(self, x):\n"
        '        """No section."""\n'
        "    def n(self):\n"
        '        """Only self."""\n'
        "    @staticmethod\n"
        "    def s(x):\n"
        "        pass\n"
        "class _Hidden:\n"
        "    def m(self, x):\n"
        "        pass\n"
    )
    assert undocumented_arguments(source) == ["f", "C.m", "C.s"]
