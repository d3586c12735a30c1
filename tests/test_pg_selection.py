"""Which PostgreSQL the tests get: local binaries, or testcontainers when a Docker engine answers."""

from __future__ import annotations

import pytest

import tests.conftest as C


@pytest.mark.parametrize("env, engine, expected", [
    (None, True, True),          # a Docker engine answers: testcontainers
    (None, False, False),        # none: the local binaries
    ("1", True, True),
    ("1", False, False),         # asked for, but no engine: fall back to the local binaries
    ("0", True, False),          # forced off
    ("off", True, False),
])
def test_use_docker(monkeypatch, env, engine, expected):
    if env is None:
        monkeypatch.delenv("PGWARDEN_TEST_DOCKER", raising=False)
    else:
        monkeypatch.setenv("PGWARDEN_TEST_DOCKER", env)
    monkeypatch.setattr(C, "docker_engine_answers", lambda timeout=5.0: engine)
    assert C.use_docker() is expected


def test_no_engine_without_a_docker_binary(monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    assert C.docker_engine_answers() is False
