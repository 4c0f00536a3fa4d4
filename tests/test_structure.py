"""The package's shape: no import cycles between its modules, and light modules that stay light."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "gpt2_lightning"


def _imports(path: Path) -> set[str]:
    """gpt2_lightning modules `path` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2_lightning."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("gpt2_lightning.")}
    return found - {path.stem}


def test_no_module_imports_one_that_imports_it_back():
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    state = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " → ".join(trail + [module])
        state[module] = "open"
        for imported in graph.get(module, ()):
            visit(imported, trail + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_light_modules_import_neither_torch_nor_lightning():
    """Tokenizing worker processes import these: they must not pay for torch."""
    code = ("import sys, gpt2_lightning.tokenizer, gpt2_lightning.corpus, gpt2_lightning.errors; "
            "print(sorted({'torch', 'lightning'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
