"""The package's shape: stages import only earlier stages, no private names cross modules."""
from __future__ import annotations

import ast
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


def _imports(path: Path):
    """(imported module, imported names) for every import statement, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
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
