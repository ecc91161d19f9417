"""A Ray head and a Prefect server on loopback, for the test session and the warm build bench.

The Prefect server is :class:`pipeline.prefect_server.PrefectServer`, the bring-up the CLI
uses. The Ray head runs in its own process group and is stopped by signalling that group
(``ray stop`` would kill every Ray on the machine).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.prefect_server import PrefectServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_services(tmp: Path, env: dict[str, str], num_cpus: int = 2,
                     object_store_bytes: int | None = None, timeout_s: float = 240) -> Iterator[dict[str, str]]:
    """Start both, wait until the Prefect server answers, and yield ``RAY_ADDRESS`` and
    ``PREFECT_API_URL`` for clients. ``env`` is the Ray head's environment (auth variables);
    the Prefect server's database lives in ``tmp/prefect``; Ray's log goes to ``tmp/ray.log``.

    Raises:
        RuntimeError: the Prefect server did not answer within ``timeout_s`` seconds.
    """
    bindir = Path(sys.executable).parent
    ray_port = free_port()
    env = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    store = [f"--object-store-memory={object_store_bytes}"] if object_store_bytes else []
    saved = os.environ.pop("PREFECT_API_URL", None)
    ray = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", f"--port={ray_port}", f"--num-cpus={num_cpus}",
         "--include-dashboard=false", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *store,
         f"--temp-dir={tmp / 'ray'}"],
        stdout=open(tmp / "ray.log", "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        with PrefectServer(home=tmp / "prefect", timeout_s=timeout_s) as prefect:
            yield {"RAY_ADDRESS": f"127.0.0.1:{ray_port}", "PREFECT_API_URL": prefect.api_url}
    finally:
        if saved is not None:
            os.environ["PREFECT_API_URL"] = saved
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ray.pid, signal.SIGTERM)
        try:
            ray.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ray.pid, signal.SIGKILL)
