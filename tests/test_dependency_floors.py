"""Dependency floors (issue 23, L12): every requirement of pyproject.toml that a published
advisory concerns has its floor at or above the first fixed release, the installed versions
meet the floors, and scripts/install.sh upgrades setuptools (a new venv's bundled copy is old).

The table is the record of why each floor is where it is; add a row when an advisory appears."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# package: (first release without the advisories, the advisories)
ADVISORIES: dict[str, tuple[str, str]] = {
    # the functions' templates rely on its sandbox
    "jinja2": ("3.1.6", "CVE-2024-56201, CVE-2024-56326 (sandbox breakout via str.format, 3.1.5), "
                        "CVE-2025-27516 (sandbox breakout via |attr, 3.1.6)"),
    "starlette": ("1.3.1", "CVE-2024-47874 (multipart DoS, 0.40), CVE-2025-54121 (0.47.2), CVE-2025-62727 "
                           "(Range DoS, 0.49.1), CVE-2026-48710 (BadHost, Host header poisons request.url, "
                           "1.0.1), CVE-2026-48817/-48818 (1.1.0), CVE-2026-54282 (request.url authority, "
                           "1.3.0), CVE-2026-54283 (urlencoded form limits ignored, 1.3.1)"),
    "aiohttp": ("3.14.4", "CVE-2024-52304 (3.10.11), CVE-2025-53643 (3.12.14), CVE-2025-69223..69230 "
                          "(3.13.3), the 3.13.4-3.14.1 batch (CVE-2026-34993, CVE-2026-47265, ...), "
                          "GHSA-2g87-pp6c-29x5 and PYSEC-2026-4371 / CVE-2026-111750 (3.14.4)"),
    "setuptools": ("78.1.1", "CVE-2022-40897 (65.5.1), CVE-2024-6345 (70.0), CVE-2025-47273 (78.1.1)"),
}


def _floors() -> dict[str, Version]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    reqs = [Requirement(r) for r in doc["project"]["dependencies"] + doc["build-system"]["requires"]]
    floors: dict[str, Version] = {}
    for r in reqs:
        for spec in r.specifier:
            if spec.operator in (">=", "=="):
                floors[r.name.lower()] = Version(spec.version)
    return floors


@pytest.mark.parametrize("package", ADVISORIES)
def test_each_floor_excludes_the_known_advisories(package: str) -> None:
    fixed, why = ADVISORIES[package]
    floor = _floors().get(package)
    assert floor is not None and floor >= Version(fixed), \
        f"{package}: pyproject.toml allows {floor}; {fixed} is the first release without {why}"


@pytest.mark.parametrize("package", [p for p in ADVISORIES if p != "setuptools"])
def test_the_installed_versions_meet_the_floors(package: str) -> None:
    assert Version(version(package)) >= Version(ADVISORIES[package][0])


def test_install_script_upgrades_setuptools() -> None:
    script = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    upgrades = [line for line in script.splitlines() if "pip install" in line and "--upgrade" in line]
    assert any("setuptools" in line.split() for line in upgrades), upgrades
