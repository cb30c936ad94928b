"""The layout's rules, checked on the source: what may be imported or called where."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _calls_ray_init(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "init" and isinstance(n.func.value, ast.Name)
               and n.func.value.id == "ray" for n in ast.walk(tree))


def test_ray_is_started_or_joined_in_one_module() -> None:
    """mixray.runtime.connect gives every driver's workers one environment; a second ray.init
    (the CLIs, the benchmarks and the test fixture each had their own) drifts from it."""
    sources = [*(REPO / "mixray").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"),
               *(REPO / "tests").rglob("*.py")]
    callers = sorted(str(p.relative_to(REPO)) for p in sources if _calls_ray_init(p))
    assert callers == ["mixray/runtime.py"]
