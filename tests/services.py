"""A Ray head and a Prefect server on loopback, for the test session and the warm build bench.

Each runs in its own process group and is stopped by signalling that group (``ray stop``
would kill every Ray on the machine).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_services(tmp: Path, env: dict[str, str], num_cpus: int = 2,
                     object_store_bytes: int | None = None, timeout_s: float = 240) -> Iterator[dict[str, str]]:
    """Start both, wait until the Prefect server answers, and yield ``RAY_ADDRESS`` and
    ``PREFECT_API_URL`` for clients. ``env`` is the services' environment (Ray auth
    variables, ``PREFECT_HOME``); logs go to ``tmp/ray.log`` and ``tmp/prefect.log``.

    Raises:
        RuntimeError: the Prefect server did not answer within ``timeout_s`` seconds.
    """
    bindir = Path(sys.executable).parent
    ray_port, prefect_port = free_port(), free_port()
    env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    store = [f"--object-store-memory={object_store_bytes}"] if object_store_bytes else []
    procs = [
        subprocess.Popen(
            [str(bindir / "ray"), "start", "--head", "--block", f"--port={ray_port}", f"--num-cpus={num_cpus}",
             "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *store,
             f"--temp-dir={tmp / 'ray'}"],
            stdout=open(tmp / "ray.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True),
        subprocess.Popen(
            [str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            stdout=open(tmp / "prefect.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True),
    ]
    api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or procs[1].poll() is not None:
                    raise RuntimeError(f"Prefect server did not start: {(tmp / 'prefect.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"RAY_ADDRESS": f"127.0.0.1:{ray_port}", "PREFECT_API_URL": api}
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
