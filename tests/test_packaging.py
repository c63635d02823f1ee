"""pyproject.toml declares ranges; constraints.txt pins the exact versions the suite runs on, inside them."""
from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def test_every_pin_is_inside_the_declared_range_and_is_what_runs_here():
    declared = {canonicalize_name(r.name): r for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned.strip()
    assert set(pins) == set(declared)
    for name, pinned in pins.items():
        assert declared[name].specifier.contains(pinned, prereleases=True), (name, pinned)
        assert not any(spec.operator == "==" for spec in declared[name].specifier), f"{name} is pinned in pyproject"
        try:
            installed = version(name).split("+")[0]
        except PackageNotFoundError:  # an optional piece this environment lacks (the tests needing it skip)
            continue
        assert installed == pinned, (name, installed)
