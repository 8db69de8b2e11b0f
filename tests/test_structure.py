"""The layout's rules, checked on the source: who may import whom, and what the wheel holds."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved against
    `package`, by default the file's own), at any depth of the file (imports inside
    functions count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    return files


def offending_imports(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sources(folder):
        for name in sorted(imported_modules(path)):
            if name.split(".")[0] in forbidden or name.startswith(forbidden):
                found.append(f"{path.relative_to(ROOT)}: {name}")
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("sam_core", ("apache_beam", "pipeline", "transforms", "exports", "training")),
        ("training", ("apache_beam", "pipeline", "transforms", "exports")),
        ("transforms", ("pipeline", "exports", "training")),
        ("schemas", ("apache_beam", "torch", "sam_core", "pipeline", "transforms")),
        ("pipeline", ("exports", "training")),
    ],
)
def test_layers_import_only_downwards(folder, forbidden):
    found = offending_imports(folder, forbidden)
    if folder == "pipeline":
        # The `maskmine` command dispatches `inspect` / `export` to exports/ (imported
        # only then): the worker image, which has no exports/, never runs those.
        found = [f for f in found if not f.startswith("pipeline/cli.py: exports.commands")]
    assert found == []


def test_no_test_module_imports_another():
    test_modules = {p.stem for p in sources("tests") if p.name.startswith("test_")}
    found = [
        f"{path.name}: {name}"
        for path in sources("tests")
        for name in imported_modules(path)
        if name.split(".")[-1] in test_modules
    ]
    assert found == []


def test_the_import_checker_sees_relative_and_nested_imports(tmp_path):
    # The checks above are only as good as imported_modules: it must see these.
    probe = tmp_path / "probe.py"
    probe.write_text("from .test_read import x\n\ndef f():\n    import apache_beam.io\n")
    names = imported_modules(probe, package="tests")
    assert {"tests.test_read", "tests.test_read.x", "apache_beam.io"} <= names
    assert offending_imports("sam_core", ("sam_core",)) != []  # it does find imports


def test_the_wheel_holds_the_bundled_model_and_samples(tmp_path):
    # Built from a copy: setuptools' build/ folder keeps files of earlier builds.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "out")
    shutil.copytree(ROOT, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300
    )
    (wheel,) = tmp_path.glob("maskmine-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sam_core/weights/sam_synthetic.pth" in names
    samples = {n for n in names if n.startswith("pipeline/samples/")}
    expected = {f"pipeline/samples/{p.name}" for p in (ROOT / "pipeline" / "samples").iterdir()}
    assert samples == expected
    # What a worker does not need stays out.
    top = {n.split("/")[0] for n in names}
    assert not top & {"training", "tests", "benchmarks", "scripts"}
    assert {"sam_core", "transforms", "schemas", "pipeline", "exports"} <= top
    assert not any(n.endswith(".pth") and "v1" in n for n in names)
