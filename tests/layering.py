"""The import rules of the project, checked over source text (used by tests/test_provider_contract.py).

Why a checker of its own: imports hidden inside functions and reads of another module's private
names keep a package acyclic on paper while its modules still depend on each other both ways. So
every import counts, wherever it stands in a module (the whole tree is walked, not only the top
level), and three things are reported:

- a module importing a package its rules do not allow (`package_violations`);
- an import circle among the project's modules (`import_circles`);
- a private name of another project module reached from outside it: `from m import _x`, or
  `m._x` where `m` is a name bound to a project module (`private_reach_ins`). Private names of
  third parties (`ray._raylet`, `ray.autoscaler._private`) are not the project's business.

Every function takes the modules as `{dotted name: source text}`, so a test can feed it a
synthetic source and see that a violation is caught (the rules are only worth anything if they
can fail).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_TOPS = ("skyward_ray", "node_providers", "catalog")


@dataclass(frozen=True)
class Import:
    """One import statement's effect: `target` (a dotted module) loaded by `module`, at `line`."""

    module: str
    target: str
    line: int
    names: tuple[str, ...] = ()  # for `from target import a, b`: the names that are not modules
    typing_only: bool = False  # under `if TYPE_CHECKING:`: for annotations, never run


def read_modules(repo: Path, tops: Iterable[str] = PROJECT_TOPS) -> dict[str, str]:
    """`{dotted module name: source}` of every .py file below the given top-level packages."""
    found = {}
    for top in tops:
        for path in sorted((repo / top).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.read_text()
    return found


def _is_package(module: str, modules: Mapping[str, str]) -> bool:
    return any(other.startswith(module + ".") for other in modules)


def _absolute(module: str, node: ast.ImportFrom, modules: Mapping[str, str]) -> str:
    """The module a (possibly relative) `from ... import` names."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`): a block that never runs."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement at any depth, with whether it sits in an `if TYPE_CHECKING:` body."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, typing_only
        elif _type_checking(child):
            assert isinstance(child, ast.If)
            for statement in child.body:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]), True)
            for statement in child.orelse:
                yield from _import_nodes(ast.Module(body=[statement], type_ignores=[]), typing_only)
        else:
            yield from _import_nodes(child, typing_only)


def imports(module: str, source: str, modules: Mapping[str, str]) -> Iterator[Import]:
    """Every import in `source`, at any depth (module level, functions, classes, conditionals)."""
    for node, typing_only in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, typing_only=typing_only)
            continue
        base = _absolute(module, node, modules)
        plain = []
        for alias in node.names:  # `from package import module` imports the module
            name = f"{base}.{alias.name}"
            if name in modules:
                yield Import(module, name, node.lineno, typing_only=typing_only)
            else:
                plain.append(alias.name)
        if plain:
            yield Import(module, base, node.lineno, tuple(plain), typing_only)


def _ours(target: str, tops: Iterable[str] = PROJECT_TOPS) -> bool:
    return target.split(".")[0] in tuple(tops)


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def package_violations(modules: Mapping[str, str], rules: Mapping[str, set[str]], base: set[str]) -> list[str]:
    """`module imports target` for each project import that `rules` (package → allowed packages) forbid.

    A module in no ruled package (`skyward_ray/__init__.py`, the base modules) is not checked by
    the table; the base modules may import only each other."""
    wrong: list[tuple[str, int, str]] = []
    for module, source in modules.items():
        layer = next((p for p in sorted(rules, key=len, reverse=True) if _within(module, [p])), None)
        for found in imports(module, source, modules):
            target = found.target
            if not _ours(target) or target == module:
                continue
            if module in base:
                allowed = _within(target, base)
            elif layer is None:
                continue
            else:
                allowed = _within(target, base) or _within(target, rules[layer])
            if not allowed:
                wrong.append((module, found.line, target))
    return [f"{module}:{line} imports {target}" for module, line, target in sorted(set(wrong))]


def import_graph(modules: Mapping[str, str]) -> dict[str, set[str]]:
    """Module → the project modules it imports when it runs (anywhere in it; annotation-only imports
    under `if TYPE_CHECKING:` never run, so they close no circle)."""
    return {module: {i.target for i in imports(module, source, modules)
                     if i.target in modules and i.target != module and not i.typing_only}
            for module, source in modules.items()}


def import_circles(modules: Mapping[str, str]) -> list[str]:
    """Each import circle, as `a → b → a`, each reported once (from its smallest module)."""
    graph = import_graph(modules)
    circles: set[tuple[str, ...]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                loop = stack[stack.index(target):]
                start = loop.index(min(loop))
                circles.add(tuple(loop[start:] + loop[:start]))
            elif not state.get(target):
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module)
    return sorted(" → ".join((*loop, loop[0])) for loop in circles)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _bound_modules(module: str, tree: ast.AST, modules: Mapping[str, str]) -> dict[str, str]:
    """Local name → the project module it is bound to by an import anywhere in the tree."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _ours(alias.name):
                    continue
                top = alias.name.split(".")[0]  # `import a.b.c` binds `a`; `import a.b.c as x` binds x to a.b.c
                bound[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, modules)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                if name in modules:
                    bound[alias.asname or alias.name] = name
    return bound


def _dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` → ["a", "b", "c"]; None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def private_reach_ins(modules: Mapping[str, str]) -> list[str]:
    """`module:line reads target._name` for each private name of another project module used here."""
    found = []
    for module, source in modules.items():
        tree = ast.parse(source)
        for statement in imports(module, source, modules):
            if _ours(statement.target) and statement.target != module:
                found += [f"{module}:{statement.line} imports {statement.target}.{name}"
                          for name in statement.names if _private(name)]
        bound = _bound_modules(module, tree, modules)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = _dotted(node)
            if not chain or chain[0] not in bound:
                continue
            target = bound[chain[0]]
            rest = chain[1:]
            while rest and f"{target}.{rest[0]}" in modules:  # walk down submodules: a.b.c._x
                target, rest = f"{target}.{rest[0]}", rest[1:]
            if rest and _private(rest[0]) and target != module:
                found.append(f"{module}:{node.lineno} reads {target}.{rest[0]}")
    return sorted(set(found))


def _own_names(tree: ast.AST) -> set[str]:
    """Names a module defines: its globals, its classes' members, and what its methods set on `self`/`cls`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            names.add(node.attr)
    return names


def private_attribute_reach_ins(modules: Mapping[str, str]) -> list[str]:
    """`module:line uses x._name (defined in other)` for a private attribute this module does not
    define but another project module does: another object's private state reached across modules
    (`keeper` writing `compute._name`). Third parties' private attributes are not the project's."""
    trees = {module: ast.parse(source) for module, source in modules.items()}
    own = {module: _own_names(tree) for module, tree in trees.items()}
    found = []
    for module, tree in trees.items():
        skip = {"self", "cls", *_bound_modules(module, tree, modules)}  # a module's names: `private_reach_ins`
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr) or node.attr in own[module]:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in skip:
                continue
            owners = sorted(m for m, names in own.items() if m != module and node.attr in names)
            if owners:
                found.append(f"{module}:{node.lineno} uses {ast.unparse(node)} (defined in {', '.join(owners[:3])})")
    return sorted(set(found))
