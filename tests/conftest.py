"""Shared test setup: offline environment and the real fixture files in ../shared/fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
#: Real files written by others; read-only, used in place (never copied into the project).
FIXTURES = Path(os.environ.get("LIVECC_FIXTURES", REPO.parent / "shared" / "fixtures")).resolve()


def fixture_path(*parts: str) -> Path:
    """Path of a real fixture file; skips the test with a visible reason when absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"fixture {path} is not present (set LIVECC_FIXTURES to ../shared/fixtures)")
    return path


@pytest.fixture
def fixtures() -> Path:
    if not FIXTURES.exists():
        pytest.skip(f"fixtures folder {FIXTURES} is not present")
    return FIXTURES
