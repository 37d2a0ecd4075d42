"""The package's import structure (docs/design.md §1): no import cycles between modules, and
every arrow points down the layers. Imports inside functions count as arrows too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

#: Layers from the bottom up: a module may import its own layer and the layers below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kernels", "data", "config", "runs"),  # foundations: formulas, the world, configs, run dirs
    ("models", "guard"),  # the VLM, score models, judges; the guard and filter-and-regenerate
    ("train",),  # trainers: SFT, preference models, guard training, PPO-Lagrangian, λ
    ("eval",),  # metrics, trade-off figures, the report, the analysis of trained systems
    ("stages", "pipeline"),  # one declared stage per module; the pipeline runs them
    ("views", "demo", "bench"),  # notebook companions, the Gradio demo, benchmarks
    ("cli", "__main__", ""),  # the command line and the package's own __init__ on top
)


def module_graph(package: Path) -> dict[str, set[str]]:
    """``module -> modules it imports`` within ``package`` (dotted names relative to it).

    A package's ``__init__`` importing its own children is not an arrow (re-exports); every
    other import, at module level or inside a function, is."""
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name not in modules and name:
            name = name.rpartition(".")[0]
        return name if name in modules else None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        here = mod.split(".") if mod else []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
                targets = [_member(stem, a.name, modules) for a in node.names]
            elif (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] == package.name
            ):
                stem = (node.module or "").partition(".")[2]
                targets = [_member(stem, a.name, modules) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [
                    a.name.partition(".")[2]
                    for a in node.names
                    if a.name.split(".")[0] == package.name
                ]
            for target in targets:
                found = resolve(target)
                if (
                    found is not None
                    and found != mod
                    and not (mod == "" or found.startswith(mod + "."))
                ):
                    graph[mod].add(found)
    return graph


def _member(stem: str, name: str, modules: dict[str, Path]) -> str:
    """``from stem import name``: the submodule ``stem.name`` when it is one, else ``stem``."""
    full = f"{stem}.{name}".lstrip(".")
    return full if full in modules else stem


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(layers):
        if top in names:
            return rank
    raise AssertionError(f"module {module!r} is in no layer: add its package to LAYERS")


def upward_arrows(
    graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS
) -> list[str]:
    """Every import from a lower layer into a higher one, as ``a -> b``."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if layer_of(b, layers) > layer_of(a, layers)
    )


def test_the_package_has_no_import_cycle():
    assert cycles(module_graph(PACKAGE)) == []


def test_every_import_points_down_the_layers():
    assert upward_arrows(module_graph(PACKAGE)) == []


def test_every_stage_lives_in_the_stages_package():
    """One module per stage under ``stages/`` declares it; the pipeline lists them in order."""
    from workbench.stages import STAGE_NAMES, STAGES

    assert STAGE_NAMES == ("data", "sft", "reward", "cost", "guard", "ppo", "analyze")
    assert {s.run.__module__.rpartition(".")[0] for s in STAGES} == {"workbench.stages"}
    assert len(set(STAGE_NAMES)) == len(STAGES)


def test_every_folder_is_a_package_that_ships():
    """A folder without ``__init__.py`` imports from a checkout but is left out of a wheel."""
    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert (
        sorted(str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").is_file())
        == []
    )


# --- the checks above, on planted trees: they must catch what they are for ---------------------
def _plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "planted"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_a_planted_cycle_is_found_even_through_a_function_local_import(tmp_path):
    package = _plant(
        tmp_path,
        {
            "data/__init__.py": "",
            "data/a.py": "from .b import x\n",
            "data/b.py": "def x():\n    from .c import y\n    return y\n",
            "data/c.py": "from planted.data import a\ny = 1\n",
            "data/d.py": "from . import b\n",  # imports the cycle, is not part of it
        },
    )
    assert cycles(module_graph(package)) == [["data.a", "data.b", "data.c"]]


def test_a_planted_upward_arrow_is_found(tmp_path):
    package = _plant(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/m.py": "def f():\n    from ..views.v import show\n    return show\n",
            "views/__init__.py": "",
            "views/v.py": "from ..models.m import f\nshow = f\n",
        },
    )
    layers = (("models",), ("views",), ("",))
    assert upward_arrows(module_graph(package), layers) == ["models.m -> views.v"]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("unknown.module", layers)
