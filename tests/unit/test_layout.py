"""The layout's rules, checked on the source: what may be imported or called where."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

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


def _imports_mlflow(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
              and n.level == 0]
    return any(name == "mlflow" or name.startswith("mlflow.") for name in names)


def test_only_tracking_imports_mlflow() -> None:
    """mixray.tracking owns the MLflow layout (tags, params, the store) and its records module
    reads it back; the analysis and the report read plain records from it, so another importer
    would drift from what it writes."""
    importers = sorted(str(p.relative_to(REPO)) for p in (REPO / "mixray").rglob("*.py")
                       if _imports_mlflow(p))
    assert all(i.startswith("mixray/tracking/") for i in importers), importers


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth of the file), relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = list(path.relative_to(REPO).with_suffix("").parts)[:-1]
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            base = package[: len(package) - n.level + 1] if n.level else []
            module = ".".join([*base, *([n.module] if n.module else [])])
            names |= {module} | {f"{module}.{a.name}" for a in n.names}
    return names


@pytest.mark.parametrize(("package", "upstream_of"), [
    ("problems", "mixray.evaluate"),  # the first stage: it reads datasets, evaluation uses that
    ("curate", "mixray.evaluate"),
    ("grading", "mixray.curate"),  # shared by curation and evaluation, before both
    ("grading", "mixray.evaluate"),
])
def test_data_flows_one_way(package: str, upstream_of: str) -> None:
    """problems -> generate -> curate -> mix -> train -> evaluate: a module never reaches back up
    that chain, so an earlier stage imports nothing from a later one."""
    reaching_back = sorted(
        f"{p.relative_to(REPO)}: {name}" for p in (REPO / "mixray" / package).rglob("*.py")
        for name in _imported_modules(p)
        if name == upstream_of or name.startswith(f"{upstream_of}."))
    assert reaching_back == []


MAX_MODULE_LINES = 400
STAGES = ("problems", "generate", "curate", "mix", "train", "evaluate")


def test_no_module_is_over_the_line_budget() -> None:
    """A module past a few hundred lines holds several things: split it where they part."""
    long = sorted(f"{p.relative_to(REPO)}: {n} lines" for p in (REPO / "mixray").rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES)
    assert long == []


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_their_own_config_not_the_sweeps(stage: str) -> None:
    """Each stage owns its section (mixray/<stage>/config.py); mixray.config composes them all,
    above every stage, so a stage importing it would close a circle."""
    importers = sorted(
        f"{p.relative_to(REPO)}: {name}" for p in (REPO / "mixray" / stage).rglob("*.py")
        for name in _imported_modules(p)
        if name == "mixray.config" or name.startswith("mixray.config."))
    assert importers == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """mixray module -> the mixray modules it imports, at module level or inside functions.
    ``from a import b`` is an edge to module a.b where that is a module, else to a."""
    paths = {_module_name(p): p for p in (REPO / "mixray").rglob("*.py")}

    def module_of(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    return {module: {m for name in _imported_modules(path)
                     if (m := module_of(name)) is not None and m != module}
            for module, path in paths.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as [a, b, ..., a], or None (an iterative depth-first search)."""
    done: set[str] = set()
    for root in sorted(graph):
        path, stack = [root], [iter(sorted(graph[root]))]
        while stack and root not in done:
            module = next(stack[-1], None)
            if module is None:
                done.add(path.pop())
                stack.pop()
            elif module in path:
                return path[path.index(module):] + [module]
            elif module not in done:
                path.append(module)
                stack.append(iter(sorted(graph[module])))
    return None


def test_find_cycle_names_one() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_mixray_modules() -> None:
    """Imports form a hierarchy (schema -> stage configs -> mixray.config -> runners), so no
    module needs a lazy import, a re-typed field or a module __getattr__ to break a circle.
    Function-level imports count too: they defer a circle, they do not remove it."""
    cycle = _find_cycle(_import_graph())
    assert cycle is None, " -> ".join(cycle or [])


LAYOUT = REPO / "docs" / "LAYOUT.md"
FOUNDATIONS = ("schema", "runroot", "artifacts", "models", "grading", "logs", "runtime",
               "cluster", "disk", "store", "metrics")
ROLES = ("science", "tracking", "cost", "sweep", "report", "propose")


def _layout_section(title: str) -> str:
    text = LAYOUT.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else None]


def test_the_top_level_holds_what_the_map_says() -> None:
    """docs/LAYOUT.md names the top level's entries (foundations, the sweep file, the stages,
    the role folders); a new file there is a new room the map must show first."""
    named = set(re.findall(r"`([a-z_]+(?:\.py|/))`", _layout_section("The top level")))
    named |= {f"{f}.py" for f in FOUNDATIONS if (REPO / "mixray" / f"{f}.py").exists()}
    named |= {f"{f}/" for f in FOUNDATIONS if (REPO / "mixray" / f).is_dir()}
    present = {p.name + ("/" if p.is_dir() else "") for p in (REPO / "mixray").iterdir()
               if p.name not in ("__init__.py", "__pycache__")}
    assert present == named, (f"not in the map: {sorted(present - named)}; "
                              f"in the map, not in mixray/: {sorted(named - present)}")


def test_every_module_is_named_on_the_map() -> None:
    named = set(re.findall(r"`([a-z_/]+\.py)`", LAYOUT.read_text()))
    modules = {str(p.relative_to(REPO / "mixray")) for p in (REPO / "mixray").rglob("*.py")
               if p.name != "__init__.py"}
    assert sorted(modules - named) == []


def _arrows_from(folder: str) -> list[str]:
    """Every mixray module the .py files under mixray/<folder> (or mixray/<folder>.py) import."""
    base = REPO / "mixray" / folder
    paths = list(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    return sorted(f"{p.relative_to(REPO)}: {name}" for p in paths
                  for name in _imported_modules(p) if name.startswith("mixray."))


def _into(arrows: list[str], packages: tuple[str, ...]) -> list[str]:
    return [a for a in arrows if any(a.split(": ")[1] == f"mixray.{p}"
                                     or a.split(": ")[1].startswith(f"mixray.{p}.")
                                     for p in packages)]


@pytest.mark.parametrize("foundation", FOUNDATIONS)
def test_foundations_import_no_stage_and_no_role(foundation: str) -> None:
    above = (*STAGES, *ROLES, "config", "search")
    assert _into(_arrows_from(foundation), above) == []


def test_tracking_imports_no_stage_and_no_sweep_config() -> None:
    """Tracking writes a Target with plain values: the stages, the sweep and the evaluate CLI
    write through it, so it may import none of them (nor the sweep's config)."""
    assert _into(_arrows_from("tracking"), (*STAGES, "config", "sweep", "cost", "report",
                                            "propose")) == []


def test_science_imports_no_stage_and_no_other_role() -> None:
    """The science is pure: trial records in, findings out (the evaluate stage scores with its
    statistics, so it sits below the stages)."""
    assert _into(_arrows_from("science"), (*STAGES, "config", *ROLES[1:])) == []
