"""Static figures of lmforge's shape: import cycles (between packages and inside them), own imports inside
functions, branches on a task's name outside tasks/, functions over 80 lines, functions returning tuples of
more than 3, and the places that implement a shared data rule (the block-size default, the hold-out split,
the row caps), each of which should be one.

    python benchmarks/arch_stats.py            # prints the figures and the offenders

Module- and function-level imports both count as edges of the import graph (an import hidden in
a function is still a dependency). A cycle is a strongly connected component of more than one
module. Reads the source only; imports nothing of lmforge.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "lmforge"
TASK_BRANCH = re.compile(r"""task\w*\s*(==|!=)\s*['"]|task\w*\s+(not\s+)?in\s*[\(\[\{]\s*['"]""")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PKG]
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != PKG:
        return []
    # `from pkg import sub` depends on pkg.sub when sub is a module, else on pkg itself
    return [target, *(f"{target}.{a.name}" for a in node.names)]


def collect():
    modules = {}
    for p in SRC.rglob("*.py"):
        modules[module_name(p)] = p
    edges = defaultdict(set)
    inner = []
    long_fns = []
    branches = []
    for mod, p in modules.items():
        text = p.read_text()
        tree = ast.parse(text)
        is_pkg = p.name == "__init__.py"
        fn_lines = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = n.end_lineno - n.lineno + 1
                if length > 80:
                    long_fns.append(f"{mod}.{n.name} ({length} lines)")
                for sub in ast.walk(n):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        fn_lines.add(sub.lineno)
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                found = resolve(mod, is_pkg, n)
                subs = [t for t in found[1:] if t in modules]
                targets = subs if isinstance(n, ast.ImportFrom) and subs and len(subs) == len(n.names) else \
                    [t for t in found if t in modules]
                for t in targets:
                    if t != mod:
                        edges[mod].add(t)
                if targets and n.lineno in fn_lines:
                    inner.append(f"{mod}:{n.lineno} -> {', '.join(sorted(set(targets)))}")
        if not mod.startswith(f"{PKG}.tasks"):
            for i, line in enumerate(text.splitlines(), 1):
                if TASK_BRANCH.search(line):
                    branches.append(f"{mod}:{i}: {line.strip()}")
    return modules, edges, inner, long_fns, branches


def _own_nodes(fn):
    """The nodes of a function's body, not descending into nested functions or classes."""
    todo = list(fn.body)
    while todo:
        n = todo.pop()
        yield n
        todo.extend(c for c in ast.iter_child_nodes(n)
                    if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)))


# A data rule and how to recognise code that applies it by itself (a call of the helper that *is* the rule,
# or the config key it reads): the rule's own module is where it may appear.
RULES = {
    "block size (default length)": (re.compile(r"default_length\("), ("lmforge.models.load",)),
    "hold-out split": (re.compile(r"hold_out\(|split_items\("), ("lmforge.data.split", "lmforge.data.pipeline")),
    "row caps (max_train/eval_samples)": (re.compile(r"max_(train|eval)_samples"), ("lmforge.data.pipeline",
                                                                                   "lmforge.config")),
}


def shape_figures(modules) -> tuple[list[str], dict[str, list[str]]]:
    """(functions returning tuples of more than 3, {rule: functions outside its module that apply it})."""
    tuples, rules = [], {name: [] for name in RULES}
    for mod, p in modules.items():
        tree = ast.parse(p.read_text())
        lines = p.read_text().splitlines()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            widths = [len(n.value.elts) for n in _own_nodes(fn)
                      if isinstance(n, ast.Return) and isinstance(n.value, ast.Tuple)]
            if fn.name == "backward" and "autograd.Function" in p.read_text():
                widths = []  # torch's API: an autograd Function's backward returns one gradient per input
            if widths and max(widths) > 3:
                tuples.append(f"{mod}.{fn.name} ({max(widths)})")
            # code, not text: the names a function calls or reads (messages that name a key are not uses of it)
            used = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
                    for n in ast.walk(fn) if isinstance(n, ast.Call)}
            used |= {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
            for name, (pattern, home) in RULES.items():
                if mod not in home and any(pattern.fullmatch(u + "(") or pattern.fullmatch(u) for u in used):
                    rules[name].append(f"{mod}.{fn.name}")
    # a function nested in another is reported once, by the outermost one
    for name, found in rules.items():
        rules[name] = sorted(set(f for f in found if not any(f.startswith(g + ".") for g in found if g != f)))
    return tuples, rules


def cycles(nodes, edges) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    modules, edges, inner, long_fns, branches = collect()
    # a package's __init__ re-exporting its children is not a cycle of code; drop parent->child edges
    # from __init__ modules only when the child does not import back through the package
    cyc = cycles(modules, edges)
    print(f"modules: {len(modules)}")
    print(f"import cycles (strongly connected components): {len(cyc)}")
    for c in cyc:
        print("   ", " <-> ".join(c))
    print(f"own-module imports inside functions: {len(inner)}")
    for line in inner:
        print("   ", line)
    print(f"task-name branches outside tasks/: {len(branches)}")
    for line in branches:
        print("   ", line)
    print(f"functions over 80 lines: {len(long_fns)}")
    for line in long_fns:
        print("   ", line)
    tuples, rules = shape_figures(modules)
    print(f"functions returning tuples of more than 3: {len(tuples)}")
    for line in tuples:
        print("   ", line)
    for name, found in rules.items():
        print(f"places outside its module that apply the {name} rule: {len(found)}")
        for line in found:
            print("   ", line)


if __name__ == "__main__":
    main()
