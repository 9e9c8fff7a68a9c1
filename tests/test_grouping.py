"""The suite's parallel schedule keeps a module's shared fixture on one worker (tests/conftest.py groups the tests
that use a module- or class-scoped fixture of their own module; docs/testing.md). If grouping silently stops
working (pytest 9.2 with pytest-xdist 3.8 did: pytest-dev/pytest-xdist#1386), every such fixture — most of them
gateways with their models — starts once per worker. These tests fail when that happens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def started_on(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The worker this module's fixture started on, also written where every worker can read it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    shared = _shared(tmp_path_factory)
    shared.mkdir(exist_ok=True)
    (shared / worker).write_text("started")
    yield worker


def _shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this session's that every worker sees (each worker's base temp is a child of the session's)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "grouping-starts"


def _starts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return sorted(p.name for p in _shared(tmp_path_factory).iterdir())


def _grouped(request: pytest.FixtureRequest) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.getoption("dist", None) == "loadgroup":
        # xdist schedules by this suffix; without it the group mark is ignored
        assert request.node.nodeid.endswith("@tests/test_grouping.py"), request.node.nodeid


@pytest.mark.parametrize("n", range(4))
def test_a_module_fixture_starts_once(started_on: str, n: int, request: pytest.FixtureRequest,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    _grouped(request)
    assert _starts(tmp_path_factory) == [started_on]


def test_an_ungrouped_test_has_no_suffix(request: pytest.FixtureRequest) -> None:
    assert "@" not in request.node.nodeid
    assert request.node.get_closest_marker("xdist_group") is None


def test_the_group_mark_names_the_module(started_on: str, request: pytest.FixtureRequest) -> None:
    mark = request.node.get_closest_marker("xdist_group")
    assert mark is not None and mark.args == ("tests/test_grouping.py",)
    assert Path(request.node.path).name == "test_grouping.py"
