"""The package's shape: stages import only earlier stages, no private names cross modules."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "clipdetect"
#: data flows down this list; a module may import its own stage and the stages before it
STAGES = ["core", "data", "features", "models", "distill", "eval", "serve", "cli"]


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> ast.Module:
    """The syntax tree of ``path``, parsed once for every test of this module (never changed)."""
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path: Path):
    """(imported module, imported names) for every import statement, at any depth."""
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield "." * node.level + (node.module or ""), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _stage(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "clipdetect" and parts[1] in STAGES else None


def test_every_module_lives_in_a_stage():
    loose = [m for m, _ in _modules() if m.count(".") >= 1 and _stage(m) is None and m != "clipdetect.__main__"]
    assert loose == [], f"modules outside the stage subpackages {STAGES}: {loose}"


def test_imports_point_down_the_pipeline():
    bad = []
    for module, path in _modules():
        here = _stage(module)
        if here is None:  # clipdetect/__init__.py, __main__.py: the public facade
            continue
        for target, _ in _imports(path):
            assert not target.startswith("."), f"{module}: relative import {target!r}; use absolute imports"
            there = _stage(target)
            if there is not None and STAGES.index(there) > STAGES.index(here):
                bad.append(f"{module} imports {target} ({here} -> {there})")
    assert bad == [], "imports that point up the pipeline:\n" + "\n".join(bad)


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for module, path in _modules():
        for target, names in _imports(path):
            if target.startswith("clipdetect") and target != module:
                bad += [f"{module}: from {target} import {n}" for n in names if n.startswith("_")
                        and not n.startswith("__")]
    assert bad == [], "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph = {m: set() for m, _ in _modules()}
    for module, path in _modules():
        for target, names in _imports(path):
            for cand in [target] + [f"{target}.{n}" for n in names]:
                if cand in graph and cand != module:
                    graph[module].add(cand)
    # a cycle exists iff some strongly connected component has more than one module
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    assert cycles == [], f"import cycles: {cycles}"


ROOT = PKG.parent
#: the trees whose imports of clipdetect names must name the module that defines them
IMPORTERS = [PKG, ROOT / "tests", ROOT / "experiments"]


def _names_used(tree: ast.AST) -> set:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _module_names(path: Path):
    """(names the module defines at top level, names it imports at top level, its ``__all__``)."""
    tree = _parse(path)
    defined, imported, exported = set(), set(), []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                defined |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
                if isinstance(t, ast.Name) and t.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                    exported = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {a.asname or a.name.split(".")[0] for a in node.names}
    return defined, imported - defined, exported


def test_no_module_imports_a_name_only_to_expose_it_or_for_its_side_effects():
    """Every clipdetect name a module imports is used there: no re-exports (import from the
    defining module instead) and no imports run for their side effects (call a function)."""
    bad = []
    for module, path in _modules():
        tree = _parse(path)
        used = _names_used(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clipdetect"):
                bad += [f"{module}: from {node.module} import {a.name}" for a in node.names
                        if (a.asname or a.name) not in used]
            elif isinstance(node, ast.Import):
                bad += [f"{module}: import {a.name}" for a in node.names
                        if a.name.startswith("clipdetect") and (a.asname or a.name.split(".")[0]) not in used]
        defined, _, exported = _module_names(path)
        bad += [f"{module}: __all__ lists {n!r}, which it does not define" for n in exported if n not in defined]
    assert bad == [], "\n".join(bad)


def test_names_are_imported_from_the_module_that_defines_them():
    modules = dict(_modules())
    imported = {m: _module_names(p)[1] for m, p in modules.items()}
    bad = []
    for tree_root in IMPORTERS:
        for path in sorted(tree_root.rglob("*.py")):
            for target, names in _imports(path):
                if target in imported and target != "clipdetect":
                    bad += [f"{path.relative_to(ROOT)}: from {target} import {n}" for n in names
                            if n in imported[target] and f"{target}.{n}" not in modules]
    assert bad == [], "import these from the module that defines them:\n" + "\n".join(bad)
