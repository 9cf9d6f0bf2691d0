"""Imports flow one way (cli -> app -> services -> store/engines -> model): no import circle
among oxyd's modules, and no function-level import of an oxyd module that only hides one.

The graph is read from the source with `ast`, without importing anything. Imports under
`if TYPE_CHECKING:` are annotations only and left out. A package's `__init__` that re-exports
its submodules (oxyd/config, oxyd/webhooks) is the package's face, not a circle: an import of
`oxyd.config.X` counts as an edge to oxyd.config only when X is not a module of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "oxyd"

# Function-level imports of oxyd modules that stay, and why. Anything else imported inside a
# function is either a circle in disguise (move the shared piece to a leaf module, or pass
# what the component needs) or belongs at the top of the module.
DEFERRED_ALLOWED = {
    ("oxyd.app", "oxyd.neonize.engine"): "the neonize engine loads only when the daemon builds"
    " it (make_engines, inside its ImportError guard: neonize's wheel exists for the common"
    " platforms only); apps built with their own engines (tests, benches) never load it",
    ("oxyd.app", "oxyd.neonize.pool"): "as oxyd.neonize.engine: engine hosts are the other"
    " way make_engines builds the neonize engine",
    ("oxyd.cli.main", "oxyd.daemon"): "CLI start-up: the commands that talk to a running daemon"
    " (tenant, send, pair, ...) do not load the daemon (aiohttp server, SQLite, engines)",
    ("oxyd.cli.main", "oxyd.preflight"): "as oxyd.daemon: only `check-config` needs it",
    ("oxyd.healthcheck", "oxyd.config"): "inside its try: a config that cannot be loaded must"
    " not hide whether the daemon answers (the healthcheck needs only the standard library)",
    ("oxyd.http.send_body", "oxyd.voice"): "PyAV (FFmpeg) loads only to convert a voice note,"
    " not at every start of the control port",
}

# The layers, highest first: a module never imports one of a higher layer (modules named in no
# layer, such as oxyd.clock or oxyd.config, are leaves anyone may use).
LAYERS = (
    ("entry", ("oxyd.__main__", "oxyd.cli", "oxyd.daemon", "oxyd.preflight", "oxyd.healthcheck")),
    ("front", ("oxyd.http", "oxyd.cluster")),
    ("app", ("oxyd.app",)),
    (
        "services",
        (
            "oxyd.supervision",
            "oxyd.webhooks",
            "oxyd.sender",
            "oxyd.send_attempt",
            "oxyd.people",
            "oxyd.media",
            "oxyd.jobs",
        ),
    ),
    ("store/engines", ("oxyd.store", "oxyd.engine", "oxyd.simulator", "oxyd.neonize")),
    ("model", ("oxyd.model", "oxyd.outgoing")),
)


def _layer(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module an imported name lives in (`oxyd.config.load` -> `oxyd.config`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{base}" if base else pkg
        return [f"{base}.{a.name}" for a in node.names]
    if (
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
        )
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]  # a dynamic import is a function-level import too
    return []


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> modules it imports at module level, [(module, imported, line)] of imports
    inside functions)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    deferred: list[tuple[str, str, int]] = []
    for module, path in MODULES.items():

        def visit(node: ast.AST, in_function: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    for sub in child.orelse:
                        visit(sub, in_function)
                    continue
                inner = in_function or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
                )
                for name in _targets(child, module):
                    target = _resolve(name) if name.startswith("oxyd") else None
                    if target is None or target == module:
                        continue
                    if inner or isinstance(child, ast.Call):
                        deferred.append((module, target, child.lineno))
                    else:
                        graph[module].add(target)
                visit(child, inner)

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return graph, deferred


GRAPH, DEFERRED = _imports()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as one path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def test_the_graph_is_read():
    # Guards the reader itself: a parser that saw no edge would pass every other test.
    assert "oxyd.supervision.runner" in GRAPH["oxyd.supervision.supervisor"]
    assert "oxyd.store.db" in GRAPH["oxyd.store.writer"]
    assert "oxyd.config" in GRAPH["oxyd.app"]


def test_no_import_circle_at_module_level():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_are_only_the_allowed_ones():
    seen = {(m, t) for m, t, _ in DEFERRED}
    unexplained = sorted(
        f"{m} -> {t} (line {n})" for m, t, n in DEFERRED if (m, t) not in DEFERRED_ALLOWED
    )
    assert unexplained == [], (
        "imports inside functions: move them to the top of the module, or if they dodge a "
        "circle, move the shared piece to a leaf module (or add them to DEFERRED_ALLOWED "
        "with the reason they must stay)"
    )
    stale = sorted(f"{m} -> {t}" for m, t in DEFERRED_ALLOWED if (m, t) not in seen)
    assert stale == [], "allowed function-level imports that no longer exist"


def test_no_circle_even_through_function_level_imports():
    # A deferred import that closes a circle hides it from the interpreter, not from readers.
    graph = {m: set(edges) for m, edges in GRAPH.items()}
    for module, target, _ in DEFERRED:
        graph[module].add(target)
    assert _cycles(graph) == []


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, edges in GRAPH.items():
        mine = _layer(module)
        for target in edges:
            theirs = _layer(target)
            if mine is not None and theirs is not None and theirs < mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) -> {target} ({LAYERS[theirs][0]})")
    assert sorted(wrong) == []
