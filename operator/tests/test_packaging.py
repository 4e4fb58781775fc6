"""Every Python package in the tree is named by the distribution that ships it (wheels list packages
explicitly, so a forgotten one would be missing from an image while editable installs still find it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages(pyproject: Path) -> set[str]:
    return set(tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"])


def _found(base: Path, top: str) -> set[str]:
    return {
        ".".join((top, *p.parent.relative_to(base / top).parts)).rstrip(".")
        for p in (base / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_every_package_is_shipped() -> None:
    root, worker = _packages(ROOT / "pyproject.toml"), _packages(ROOT / "workloads" / "pyproject.toml")
    assert _found(ROOT / "operator", "agentscale") <= root
    assert _found(ROOT / "workloads", "agentscale_harness") <= root
    assert _found(ROOT / "workloads", "agentscale_worker") <= worker
