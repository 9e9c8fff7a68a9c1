"""pytest fixtures for the loopback upstreams.  Load with ``pytest_plugins = ["turnout.testing.fixtures"]``.

* ``openai_upstream_server`` / ``anthropic_fake_server`` -- one subprocess per test session
  (a :class:`~turnout.testing.procs.Proc`).
* ``openai_upstream`` / ``anthropic_fake`` -- the same servers, reset (queue, default, log)
  before each test; use these in tests.

``Proc.url`` is the base URL (``http://127.0.0.1:PORT``); OpenAI clients want ``url + "/v1"``.
The Anthropic fake wants the key ``FAKE_ANTHROPIC_KEY``; the OpenAI upstream takes any key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from turnout.testing.procs import Proc, control, start_server

FAKE_ANTHROPIC_KEY = "sk-ant-fake"


@pytest.fixture(scope="session")
def openai_upstream_server() -> Iterator[Proc]:
    with start_server("turnout.testing.upstream") as proc:
        yield proc


@pytest.fixture(scope="session")
def anthropic_fake_server() -> Iterator[Proc]:
    with start_server("turnout.testing.anthropic_fake", "--api-key", FAKE_ANTHROPIC_KEY) as proc:
        yield proc


@pytest.fixture
def openai_upstream(openai_upstream_server: Proc) -> Proc:
    control(openai_upstream_server.url, "reset", {})
    return openai_upstream_server


@pytest.fixture
def anthropic_fake(anthropic_fake_server: Proc) -> Proc:
    control(anthropic_fake_server.url, "reset", {})
    return anthropic_fake_server
