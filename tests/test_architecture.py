"""The shape of the package, checked from its source: no import cycles (imports
inside functions included), lazy imports only where they defer Keras, TensorFlow
or Ray, every artefact name spelled only in ``imgrec.layout``, and a training path
of short functions. Reads the files; imports nothing heavy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from imgrec import layout

PACKAGE = Path(__file__).resolve().parents[1] / "imgrec"
HEAVY = {"keras", "tensorflow", "ray"}  # the only packages whose import may be deferred
TRAINING_PATH = ("train.py", "loop.py", "loop_state.py", "hooks.py", "stages.py")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


MODULES = _modules()


def _targets(node: ast.AST) -> list[str]:
    """The imgrec modules (or, for ``from imgrec import __version__``, the package)
    one import statement loads. A package's own ``__init__`` always runs before its
    submodules, so ``from imgrec import storage`` counts as ``imgrec.storage`` only."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "imgrec"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "imgrec":
        subs = [f"{node.module}.{a.name}" for a in node.names]
        found = [s for s in subs if s in MODULES]
        return found + ([node.module] if len(found) < len(subs) else [])
    return []


def _graph(everywhere: bool) -> dict[str, set[str]]:
    """Module -> the imgrec modules it imports: at module level, or anywhere
    (function bodies and ``TYPE_CHECKING`` blocks included)."""
    graph = {}
    for name, tree in MODULES.items():
        nodes = ast.walk(tree) if everywhere else _top_level_imports(tree)
        graph[name] = {t for node in nodes for t in _targets(node) if t != name}
    return graph


def _top_level_imports(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try):
            yield from (n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_imgrec():
    assert set(MODULES) >= {"imgrec.train", "imgrec.loop", "imgrec.hooks", "imgrec.layout", "imgrec.runtime"}
    cycle = _cycle(_graph(everywhere=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _imports_heavy_at_load(module: str, graph: dict[str, set[str]], seen=frozenset()) -> bool:
    for node in _top_level_imports(MODULES[module]):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if any(n.split(".")[0] in HEAVY for n in names):
            return True
    return any(_imports_heavy_at_load(dep, graph, seen | {module}) for dep in graph[module] - seen - {module})


def test_lazy_imports_only_defer_keras_tensorflow_or_ray():
    """An imgrec module imported inside a function must be one that loads Keras,
    TensorFlow or Ray when imported; any other belongs at the top of the file."""
    top = _graph(everywhere=False)
    misplaced = []
    for name, tree in MODULES.items():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                for target in _targets(node):
                    if target in MODULES and not _imports_heavy_at_load(target, top):
                        misplaced.append(f"{name}:{node.lineno} imports {target} inside {fn.name}()")
    assert not misplaced, "\n".join(misplaced)


def _layout_names() -> set[str]:
    """File names (``x.json``) and the folder names that are not also common words
    ("predictions" is Keras' output layer name too)."""
    names = set()
    for cls in (layout.RunLayout, layout.CheckpointLayout, layout.SweepLayout, layout.PredictionLayout,
                layout.BaselineLayout):
        names |= {f.name for f in cls.files().values() if "." in f.name[1:]}
    return names | {layout.RunLayout.replicas.name, layout.RunLayout.tensorboard.name, layout.SweepLayout.trials.name}


def test_artefact_names_are_spelled_only_in_the_layout_module():
    names = _layout_names()
    assert {"history.json", "evaluation.json", "model.keras", "manifest.json", "sweep.json", "summary.json",
            "replicas", "tensorboard"} <= names
    found = []
    for name, tree in MODULES.items():
        if name == "imgrec.layout":
            continue
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings:
                found.append(f"{name}:{node.lineno} spells {node.value!r}")
    assert not found, "use imgrec.layout instead:\n" + "\n".join(found)


@pytest.mark.parametrize("filename", TRAINING_PATH)
def test_training_path_functions_are_short(filename):
    tree = ast.parse((PACKAGE / filename).read_text())
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, f"{filename}: " + ", ".join(long)


def test_train_module_holds_only_the_driver():
    """The worker loop lives in imgrec.loop; imgrec.train never defines a step, an
    epoch or a hook."""
    tree = MODULES["imgrec.train"]
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert "train" in defined
    assert not defined & {"train_loop_per_worker", "_train_loop_per_worker", "train_epoch", "validate",
                          "step_functions", "restore_or_build"}
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef) and any(
        isinstance(b, ast.Name) and b.id == "Hook" for b in n.bases)]
