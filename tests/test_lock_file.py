"""The dependency ranges and the lock file (constraints.txt) that `make setup` installs from."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [Requirement(line) for line in lines]


def _locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_runtime_dependencies_are_ranges_except_ultralytics_and_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    exact = {canonicalize_name(r.name) for r in map(Requirement, project["dependencies"])
             if any(s.operator == "==" for s in r.specifier)}
    assert exact == {"ultralytics", "torch", "torchvision"}


def test_every_requirement_is_locked_to_a_version_it_allows():
    pins = _locked()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req}")


def test_this_environment_is_the_locked_one():
    """`make setup` installed what the lock file says (the reproducibility CI relies on)."""
    pins = _locked()
    wrong = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in pins and dist.version != pins[name]:
            wrong[name] = (dist.version, pins[name])
    assert not wrong, f"installed vs locked: {wrong}"
