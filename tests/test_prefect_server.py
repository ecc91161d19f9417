"""The one Prefect bring-up (pipeline/prefect_server.py): start, readiness and stop in a with-block.

Each case runs in a child interpreter, so that whether Prefect was imported before the block
is under the test's control (this test process has imported it already).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


FLOW_RUN = """
import json, logging, os, urllib.request
{imports_first}
from pipeline.prefect_server import PrefectServer

def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={{"Content-Type": "application/json"}})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())

with PrefectServer() as server:
    assert server.owned and os.environ["PREFECT_API_URL"] == server.api_url
    from prefect import flow, get_run_logger, task

    @task
    def square(x):
        return x * x

    @flow
    def add(a, b):
        get_run_logger().info("adding %s and %s", a, b)
        return square(a) + b

    assert add(2, 3) == 7
    url = server.api_url
    runs = post(url + "/flow_runs/filter", {{"limit": 10}})
    tasks = post(url + "/task_runs/filter", {{"limit": 10}})
print("URL", url, flush=True)
assert "PREFECT_API_URL" not in os.environ
print("FLOWS", [r["state_type"] for r in runs], "TASKS", [t["state_type"] for t in tasks], flush=True)
"""


@pytest.mark.parametrize("prefect_first", [False, True], ids=["server-first", "prefect-imported-first"])
def test_a_flow_runs_against_it_in_either_import_order_and_it_stops(tmp_path, prefect_first):
    code = FLOW_RUN.format(imports_first="import prefect, prefect.context" if prefect_first else "")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = next(ln for ln in proc.stdout.splitlines() if ln.startswith("URL")).split()[1]
    assert "FLOWS ['COMPLETED'] TASKS ['COMPLETED']" in proc.stdout, proc.stdout
    # the block flushed Prefect's logs and events before it stopped the server
    assert "Error logging to API" not in proc.stderr and "EventsWorker" not in proc.stderr, proc.stderr[-2000:]
    assert not _answers(f"{url}/health")


def test_logs_reach_the_server_before_it_stops(tmp_path):
    code = textwrap.dedent("""
        import json, urllib.request
        from pipeline.prefect_server import PrefectServer
        from prefect import flow, get_run_logger
        @flow
        def talk():
            for i in range(20):
                get_run_logger().info("line %d", i)
        with PrefectServer() as server:
            talk()
            url = server.api_url
        # a second server on the same database reads back what the first one stored
        with PrefectServer() as again:
            req = urllib.request.Request(again.api_url + "/logs/filter", data=b'{"limit": 200}',
                                         headers={"Content-Type": "application/json"})
            logs = json.loads(urllib.request.urlopen(req, timeout=10).read())
        print("LINES", sum(1 for l in logs if l["message"].startswith("line ")))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LINES 20" in proc.stdout, (proc.stdout, proc.stderr[-2000:])


def test_server_dies_with_a_sigkilled_parent(tmp_path):
    code = textwrap.dedent("""
        import time
        from pipeline.prefect_server import PrefectServer
        with PrefectServer() as server:
            print(server.api_url, flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path), stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert _answers(f"{url}/health")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 20
        while _answers(f"{url}/health") and time.time() < deadline:
            time.sleep(0.2)
        assert not _answers(f"{url}/health"), "the server kept running after its parent was killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path):
    code = textwrap.dedent("""
        from pipeline.prefect_server import PrefectServer
        try:
            with PrefectServer(timeout_s=120):
                pass
        except RuntimeError as exc:
            print("ERROR", exc)
    """)
    env = {**_env(tmp_path), "PREFECT_SERVER_DATABASE_CONNECTION_URL": "notadb://nowhere"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=200,
                          cwd=REPO)
    assert "ERROR the local Prefect server exited with status" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert "notadb" in proc.stdout  # the server's own message is quoted


def test_an_existing_api_url_is_used_as_is(tmp_path):
    code = ("import os; from pipeline.prefect_server import PrefectServer\n"
            "with PrefectServer() as s:\n"
            "    assert not s.owned and s.api_url == os.environ['PREFECT_API_URL']\n"
            "print(os.environ['PREFECT_API_URL'])")
    env = {**_env(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "http://127.0.0.1:1/api"
