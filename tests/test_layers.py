"""The floors of ``src/fiqa`` import only downwards (CONTRIBUTING.md), and no module is over 400 lines
unless listed here with its reason. Static: every ``import fiqa...`` / ``from fiqa... import`` in the
source, lazy ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fiqa"

#: higher imports lower; a package may import its own floor's packages (sideways) but never a higher one
FLOORS = {
    "tasks": 5,
    "methods": 4,
    "quality": 3,
    "interop": 3,
    "export": 3,
    "data": 2,
    "detect": 2,
    "heads": 2,
    "backbones": 2,
    "callbacks": 2,
    "eval": 1,
    "utils": 1,
    "types": 0,
}
#: the only import running upwards, and why
ALLOWED_UP = {
    # the public facade ``fiqa.quality.score(images, "<checkpoint>")`` (DESIGN.md's stable API) takes a path:
    # loading a checkpoint rebuilds a method, so it calls the methods floor's loader, lazily, at that call only
    ("quality/scoring.py", "fiqa.methods.loading"),
}
#: modules allowed over MAX_LINES, and why (each a split still to do, where it would cut)
LONG = {
    "data/recordio.py": "one file format: mxnet.recordio's API, the stable fiqa.data.recordio names",
}
MAX_LINES = 400


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("fiqa."):
                yield node.lineno, name


def _floor(part: str) -> int:
    part = part.removesuffix(".py")
    assert part in FLOORS or part == "__init__", f"src/fiqa/{part} has no floor: add it to FLOORS in {__file__}"
    return FLOORS.get(part, 99)


def test_every_package_has_a_floor():
    for p in SRC.iterdir():
        if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py"):
            _floor(p.name)


def test_imports_run_only_downwards():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "__init__.py":
            continue
        mine = _floor(rel.parts[0])
        for line, name in _imports(path):
            target = name.split(".")[1]
            if _floor(target) > mine and (rel.as_posix(), name) not in ALLOWED_UP:
                where = f"src/fiqa/{rel}:{line} ({rel.parts[0]}, floor {mine})"
                bad.append(f"{where} imports {name} (floor {_floor(target)})")
    assert not bad, "imports running upwards:\n" + "\n".join(bad)


def test_the_allowed_exceptions_still_exist():
    # an exception nobody needs any more is removed, not kept
    for rel, name in ALLOWED_UP:
        assert name in {n for _, n in _imports(SRC / rel)}, f"{rel} no longer imports {name}: drop it from ALLOWED_UP"


def test_no_module_over_400_lines():
    long = {
        p.relative_to(SRC).as_posix(): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    unexplained = {k: v for k, v in long.items() if k not in LONG}
    assert not unexplained, f"modules over {MAX_LINES} lines (split them, or give the reason in LONG): {unexplained}"
