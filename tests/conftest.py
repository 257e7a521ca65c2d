"""Shared fixtures: bundled specs loaded once per session."""

from __future__ import annotations

import pytest

from planner.loading import load_hardware, load_model


@pytest.fixture(scope="session")
def tiny_spec():
    return load_model("tiny")


@pytest.fixture(scope="session")
def engram27b():
    return load_model("engram-27b")


@pytest.fixture(scope="session")
def h100():
    return load_hardware("h100-sxm")
