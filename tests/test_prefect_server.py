"""The early-started temporary Prefect server (pipeline/prefect_server.py).

Each case runs in a child interpreter: this test process has imported Prefect already, and
the server must be started before Prefect is imported.
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


def test_server_starts_before_prefect_serves_a_flow_and_stops(tmp_path):
    code = textwrap.dedent("""
        import os, sys, urllib.request
        from pipeline.prefect_server import start_local_server
        server = start_local_server()
        assert server is not None and os.environ["PREFECT_API_URL"] == server.api_url
        server.wait_ready(240)
        from prefect import flow
        @flow
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        import json
        req = urllib.request.Request(server.api_url + "/flow_runs/filter", data=b'{"limit": 10}',
                                     headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        print("URL", server.api_url, "PID", server.process.pid, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("URL"))
    url, pid = line.split()[1], int(line.split()[3])
    # stopped at interpreter exit, after Prefect flushed its logs to it
    assert "Error logging to API" not in proc.stderr
    assert not _answers(f"{url}/health")
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the server outlived its parent"


def test_server_dies_with_a_sigkilled_parent(tmp_path):
    code = textwrap.dedent("""
        import time
        from pipeline.prefect_server import start_local_server
        server = start_local_server()
        server.wait_ready(240)
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
        from pipeline.prefect_server import start_local_server
        server = start_local_server()
        try:
            server.wait_ready(120)
        except RuntimeError as exc:
            print("ERROR", exc)
    """)
    env = {**_env(tmp_path), "PREFECT_SERVER_DATABASE_CONNECTION_URL": "notadb://nowhere"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=200,
                          cwd=REPO)
    assert "ERROR the local Prefect server exited with status" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert "notadb" in proc.stdout  # the server's own message is quoted


def test_an_existing_api_url_is_used_as_is(tmp_path):
    code = ("import os; from pipeline.prefect_server import start_local_server; "
            "assert start_local_server() is None; print(os.environ['PREFECT_API_URL'])")
    env = {**_env(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "http://127.0.0.1:1/api"
