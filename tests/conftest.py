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

# Ray 2.60 enables token auth by default and caches the auth settings the first time it is
# used; one token for the whole session, set before anything imports Ray, keeps every Ray in
# this session (the services head, any local ray.init) consistent and separate from other
# Ray instances on the machine (which share ~/.ray/auth_token).
if "RAY_AUTH_TOKEN" not in os.environ:
    import secrets as _secrets

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = _secrets.token_hex(32)

# A fake API key for the query-stage tests, random per session and set before the services
# fixture starts the Ray head, so Ray workers (which take the head's environment, not a CLI
# client's) find it too; the tests then look for it in every output and log.
os.environ.setdefault("LIVECC_TEST_OPENAI_KEY", "sk-test-" + __import__("secrets").token_hex(16))

# Hypothesis example budgets (tests/test_caption_fuzz.py): small in the normal suite; a deeper
# search with `pytest --hypothesis-profile=long`. Wall time per document is bounded in the tests.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("default", max_examples=40, deadline=None)
    _hypothesis_settings.register_profile("long", max_examples=3000, deadline=None)
    _hypothesis_settings.load_profile("default")
except ImportError:  # the test extra is not installed: the fuzz tests skip themselves
    pass

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


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """One Ray head and one Prefect server for the whole session, on loopback.

    Starting either costs 10-20 s on a loaded 2-core machine; CLI subprocesses (and in-process
    flows) connect through ``RAY_ADDRESS`` and ``PREFECT_API_URL`` -- the documented way to
    run on a cluster with a Prefect server.
    """
    from tests.services import running_services

    tmp = tmp_path_factory.mktemp("services")
    auth = {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"], "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}
    env = {**os.environ, **auth, "PREFECT_HOME": str(tmp / "prefect"), "RAY_USAGE_STATS_ENABLED": "0"}
    with running_services(tmp, env, num_cpus=2, object_store_bytes=400_000_000) as urls:
        out = {**urls, "PREFECT_HOME": str(tmp / "prefect"), **auth}
        saved = {k: os.environ.get(k) for k in out}
        os.environ.update(out)
        try:
            yield out
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# -- shared by the crawl tests: real info.json fixtures and the fault-injecting loopback server --
@pytest.fixture(scope="module")
def ted():
    import json

    return json.loads(fixture_path("infojson", "ytdlp_TEDEd_emyi4z-O0ls.info.json").read_text())


@pytest.fixture(scope="module")
def pinchflat():
    import json

    return json.loads(fixture_path("infojson", "pinchflat_example_postdownload.info.json").read_text())


@pytest.fixture
def srv():
    from tests.crawl_loopback import Loopback

    with Loopback() as s:
        yield s
