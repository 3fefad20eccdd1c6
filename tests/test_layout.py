"""The layout follows the data flow: every import runs down the layers (or stays inside its own
package), and no modules import each other in a circle. Read from the source with `ast`, so
lazy imports inside functions count too."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "avsr"
# Lowest first. A module may import its own package and any lower layer, never a higher one.
LAYERS = [
    {"avsr.errors"},
    {"avsr.settings", "avsr.io", "avsr.paths", "avsr.text", "avsr.optimization"},
    {"avsr.data"},
    {"avsr.models", "avsr.synth", "avsr.preprocess"},  # side by side: none imports another
    {"avsr.training", "avsr.backbones"},  # side by side: neither imports the other
    {"avsr.evaluation"},
    {"avsr.transcription"},
    {"avsr.pipelines", "avsr.demo"},
    {"avsr.cli"},
    {"avsr.__main__"},
    {"avsr"},  # the package itself: the public API may gather anything
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("avsr"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("avsr")}
    return found


def layer(module: str) -> tuple[int, str]:
    for i, group in enumerate(LAYERS):
        for room in group:
            if module == room or (room != "avsr" and module.startswith(room + ".")):
                return i, room
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it")


GRAPH = {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_every_import_runs_down_the_flow():
    against = []
    for module, targets in GRAPH.items():
        level, room = layer(module)
        for target in targets:
            t_level, t_room = layer(target)
            if t_room != room and t_level >= level:
                against.append(f"{module} -> {target}")
    assert not against, "imports against the flow: " + "; ".join(sorted(against))


def test_no_import_circles():
    def resolve(target: str) -> str | None:  # "avsr.models.projectors" may be a package or a module
        return target if target in GRAPH else None

    edges = {m: {t for t in map(resolve, ts) if t and t != m} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            elif not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if not state.get(node):
            visit(node, [node])
    assert not cycles, "import circles: " + "; ".join(cycles)
