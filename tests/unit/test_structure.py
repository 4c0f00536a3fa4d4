"""The package's shape: imports run one way (docs/architecture.md), with no cycles.

What importing a module loads at run time: tests/integration/test_imports.py (a fresh interpreter each)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "gpt2_lightning"
CORE = {"config", "model", "attention", "rope", "lm_loss"}
DATA = {"tokenizer", "corpus", "token_cache", "data"}


def _name(path: Path) -> str:
    """gpt2_lightning/checkpoints/hf.py → checkpoints.hf; a package's __init__.py → the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py") if _name(p) not in ("", "__main__")}


def _imports(path: Path) -> set[str]:
    """The package's modules `path` imports anywhere: top level, inside functions, under TYPE_CHECKING alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2_lightning."):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("gpt2_lightning.")]
        found |= {name.removeprefix("gpt2_lightning.") for name in names}
    return found - {_name(path)}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_every_module_and_its_imports():
    assert {"model", "generate", "checkpoints", "checkpoints.lightning", "train.module", "cli"} <= GRAPH.keys()
    assert "checkpoints.strict" in GRAPH["checkpoints"] and "model" in GRAPH["checkpoints.strict"]  # a live probe


def test_no_module_imports_one_that_imports_it_back():
    state = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " → ".join(trail + [module])
        state[module] = "open"
        for imported in GRAPH.get(module, ()):
            visit(imported, trail + [module])
        state[module] = "done"

    for module in GRAPH:
        visit(module, [])


def test_the_core_imports_nothing_else_from_the_package():
    for module in CORE:
        assert GRAPH[module] <= CORE, f"{module} imports {sorted(GRAPH[module] - CORE)}: the core reads no files"


def test_nothing_but_the_command_imports_the_command():
    importers = {module for module, imported in GRAPH.items() if "cli" in imported}
    assert importers == set(), importers  # (__main__.py runs it; it is not a library module)


def test_the_training_package_is_imported_by_no_core_data_or_checkpoint_module():
    lower = CORE | DATA | {"checkpoints", "hub", "errors", "files", "generate", "quantize"}
    for module, imported in GRAPH.items():
        if _top(module) in lower:
            assert not {m for m in imported if _top(m) == "train"}, f"{module} imports the training package"


def test_the_library_never_imports_the_analysis_package():
    """The one-way rule (issue 22): gpt2_lightning/analysis/ imports the library, no library module imports it."""
    assert {"analysis", "analysis.run", "analysis.statistics", "analysis.probes"} <= GRAPH.keys()
    assert "model" in GRAPH["analysis.probes"]  # the analysis does import the library
    for module, imported in GRAPH.items():
        if _top(module) != "analysis" and module != "cli":
            assert not {m for m in imported if _top(m) == "analysis"}, f"{module} imports the analysis package"


def test_the_command_imports_the_analysis_only_inside_analyze():
    """cli.py needs the analysis only for `analyze` (and its `analysis` extra only then): a lazy import there."""
    tree = ast.parse(MODULES["cli"].read_text())
    inside = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
              and function.name == "analyze" for node in ast.walk(function)}
    found = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and (node.module or "").startswith("gpt2_lightning.analysis")]
    assert found and all(id(node) in inside for node in found)
