"""`components/` imports in one direction and stays pure library code.

Every import counts, the ones inside functions included: a lazy import only postpones a cycle
to the first call. Imports under `if TYPE_CHECKING:` count too (none is needed to break a
cycle today); a cycle found here is named module by module.
"""


from tests.code.import_walk import REPO, imported, module_name

PACKAGE = REPO / "components"
# the runtime pieces: components/ is the library the flows and jobs call, never the reverse
RUNTIME = ("prefect", "mlflow", "ray", "flows")


def import_graph() -> dict[str, set[str]]:
    """Module -> the components modules it imports (a package importing its own submodules
    names itself in `from package import sub`: that is no edge)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported(path, set(files)) & files.keys() - {name}
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node] & graph.keys()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "x"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_components_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in components/: " + " -> ".join(cycle)


def test_components_are_pure_library_code():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    runtime = {f"{name} imports {m}" for name, path in files.items()
               for m in imported(path, set(files)) if m.split(".")[0] in RUNTIME}
    assert not runtime, "components/ is library code, free of the runtime: " + "; ".join(
        sorted(runtime))
