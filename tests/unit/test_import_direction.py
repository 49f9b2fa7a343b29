"""Imports go one way: schemas <- streams <- store <- processors, gateway <- morgan; no code
outside tests/ imports tests.

Every ``.py`` file of the packages below is parsed with ``ast`` (nothing is
imported), and each ``import``/``from ... import`` names the first-party package
it reaches, relative imports included. Imports inside functions count too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = (
    "schemas",
    "streams",
    "store",
    "processors",
    "gateway",
    "morgan",
    "bench",
    "examples",
    "testbed",
)
FORBIDDEN: dict[str, frozenset[str]] = {
    "schemas": frozenset(
        {"streams", "store", "processors", "gateway", "morgan", "testbed", "bench"}
    ),
    "streams": frozenset({"store", "processors", "gateway", "morgan", "testbed", "bench"}),
    "store": frozenset({"processors", "gateway", "morgan", "testbed", "bench"}),
    "processors": frozenset({"gateway", "morgan", "testbed", "bench"}),
    "gateway": frozenset({"processors", "morgan", "testbed", "bench"}),
    "morgan": frozenset({"testbed", "bench"}),
    "testbed": frozenset({"bench"}),
    "bench": frozenset(),
    "examples": frozenset(),
}
"""Packages each checked package must not import (``tests`` is forbidden to all of them)."""


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Full names of the modules ``source`` (module ``module``) imports, relative ones
    resolved against its package."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


def imported_by(path: Path, root: Path = ROOT) -> set[str]:
    is_package = path.name == "__init__.py"
    return imported(path.read_text(), module_name(path, root), is_package=is_package)


def violations(package: str, root: Path = ROOT) -> list[str]:
    """``<file> imports <package>`` for each import ``package`` must not make."""
    banned = FORBIDDEN[package] | {"tests"}
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for top in sorted({name.split(".")[0] for name in imported_by(path, root)}):
            if top in banned:
                found.append(f"{path.relative_to(root)} imports {top}")
    return found


def outside_tests(root: Path = ROOT) -> list[Path]:
    """Every .py file of the repository outside tests/ (virtualenvs and caches left out)."""
    return [
        path
        for path in sorted(root.rglob("*.py"))
        if not any(
            p.startswith(".") or p in ("tests", "build", "dist")
            for p in path.relative_to(root).parts
        )
    ]


@pytest.mark.parametrize("package", CHECKED)
def test_package_imports_only_packages_below_it(package: str) -> None:
    assert (ROOT / package).is_dir(), package
    assert violations(package) == []


def test_nothing_outside_tests_imports_tests() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in outside_tests()
        for name in sorted(imported_by(path))
        if name.split(".")[0] == "tests"
    ]
    assert found == []


def test_schemas_imports_only_the_standard_library_and_itself() -> None:
    outside = []
    for path in sorted((ROOT / "schemas").rglob("*.py")):
        for name in imported_by(path):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("schemas", "__future__"):
                outside.append(f"{path.relative_to(ROOT)} imports {name}")
    assert outside == []


def test_relative_imports_resolve_against_the_importing_package() -> None:
    source = "from processors import runtime\nfrom ..gateway import app\nfrom . import x\n"
    assert imported(source, "streams.sub.mod") == {"processors", "streams.gateway", "streams.sub"}
    assert imported("from .codec import decode\n", "schemas", is_package=True) == {"schemas.codec"}


def test_a_reverse_import_is_reported_with_its_file(tmp_path: Path) -> None:
    (tmp_path / "streams" / "sub").mkdir(parents=True)
    (tmp_path / "streams" / "ok.py").write_text("from schemas import codec\nimport json\n")
    (tmp_path / "streams" / "sub" / "bad.py").write_text(
        "def later() -> None:\n    from gateway import app\n    import tests.fakes\n"
    )
    assert violations("streams", tmp_path) == [
        "streams/sub/bad.py imports gateway",
        "streams/sub/bad.py imports tests",
    ]
