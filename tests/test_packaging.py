"""The adapters ship as ``guard.adapters``: PyPI's ``adapters`` is an unrelated project, so
nothing may import, or install, a top-level package of that name."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RESOLVE = """
import importlib, json, sys
from guard.stores import STORES
out = {}
for scheme, target in [(s, t) for s, kind in STORES.items() for t in (kind.store, kind.reindex)]:
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)
    out[scheme + " " + target] = module
print(json.dumps({"modules": out, "bare": sorted(m for m in sys.modules
                  if m == "adapters" or m.startswith("adapters."))}))
"""


def test_every_registry_entry_resolves_under_guard_adapters(tmp_path: Path) -> None:
    """Run away from the checkout (not on sys.path) so that a bare ``adapters`` import
    could only come from the installed package, and none happens."""
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(done.stdout)
    assert found["bare"] == []
    outside = {k: m for k, m in found["modules"].items() if not m.startswith("guard.adapters.")}
    assert outside == {}
    assert len(found["modules"]) >= 12


def test_wheel_ships_the_adapters_folder_as_guard_adapters(tmp_path: Path) -> None:
    """guard/adapters is a symlink to the top-level adapters/; the wheel must hold the
    files themselves under guard/adapters/ and no top-level adapters package."""
    src = tmp_path / "src"
    keep = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("guard", "adapters", "migrations"):
        shutil.copytree(ROOT / folder, src / folder, symlinks=True, ignore=keep)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    expected = sorted(f"guard/adapters/{p.name}" for p in (ROOT / "adapters").glob("*.py"))
    assert expected == sorted(n for n in names if n.startswith("guard/adapters/"))
    assert [n for n in names if n.startswith("adapters/")] == []


def _foreign_private_uses(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (``self._store._name`` included),
    and ``from m import _name``: reaching into another object's or module's privates."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            if node.attr.startswith("__") or (
                isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            ):
                continue
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            found += [
                f"{path.name}:{node.lineno} {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.startswith("_") and alias.name != "__future__"
            ]
    return found


def test_adapters_translate_errors_through_public_names_only() -> None:
    """Each store module offers ``translate_errors``; its re-index module and the others
    use that, not the store's private helpers (``_errors``, ``_one_line``)."""
    uses = [
        use
        for path in sorted((ROOT / "adapters").glob("*.py"))
        for use in _foreign_private_uses(path)
    ]
    assert uses == []
