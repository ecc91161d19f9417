"""A temporary local Prefect server, started before anything imports Prefect.

With no ``PREFECT_API_URL``, Prefect runs a flow on its ephemeral server: a child process
serving Prefect's API app on loopback, started when the flow is first called and stopped
when the process exits. Its start-up (importing the server app, opening the database) takes
5-8 s on a 2-core machine, and Prefect only begins it after the driver has imported
Prefect's server module itself (another 3-4 s). :class:`LocalPrefectServer` launches the
same app the same way (uvicorn, ``prefect.server.api.server:create_app``, UI off, marked
ephemeral) as the first thing a command does, and points ``PREFECT_API_URL`` at it, so it
boots while the driver imports Prefect and starts Ray. Nothing else changes: the flow talks
to a Prefect server on 127.0.0.1, and the child is stopped when the command ends.

This module imports nothing from Prefect: importing Prefect reads ``PREFECT_API_URL``
once, so the variable must be set first.
"""
from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("livecc")

def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the parent dies, so a SIGKILLed
    build does not leave its server running (Prefect's own ephemeral server would)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPrefectServer:
    """Prefect's API server as a child process on ``127.0.0.1:<free port>``.

    :meth:`start` returns at once; :meth:`wait_ready` blocks until ``/api/health`` answers.
    The server's stderr goes to a temporary file, quoted in the error if it fails to start.
    """

    def __init__(self) -> None:
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._stderr = None
        self._saved_url: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "LocalPrefectServer":
        """Launch the server and set ``PREFECT_API_URL`` for this process.

        Raises:
            RuntimeError: Prefect is not installed, or Prefect was already imported (it would
                not see the variable).
        """
        if "prefect" in sys.modules:
            raise RuntimeError("start the local Prefect server before importing prefect")
        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            raise RuntimeError("prefect is not installed")
        self._stderr = tempfile.TemporaryFile()
        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).resolve().parent.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.info("Starting temporary Prefect server on http://127.0.0.1:%d", self.port)
        self._saved_url = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = self.api_url
        atexit.register(self.stop)
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until the server answers ``GET /api/health`` with 200.

        Raises:
            RuntimeError: the server exited, or did not answer within ``timeout_s`` seconds
                (the message quotes the end of its stderr).
        """
        deadline = time.monotonic() + timeout_s
        url = f"{self.api_url}/health"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                # no relaunch on another port (uvicorn's status 3): Prefect, imported by now,
                # has read PREFECT_API_URL and would not see a new one
                raise RuntimeError(f"the local Prefect server exited with status {code}: {self._tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the local Prefect server did not answer within {timeout_s:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:].strip() or "(no output)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout_s``) and restore
        ``PREFECT_API_URL``. Safe to call more than once."""
        proc, self.process = self.process, None
        if proc is not None:
            log.info("Stopping temporary Prefect server on http://127.0.0.1:%d", self.port)
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if self._saved_url is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = self._saved_url
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def start_local_server() -> LocalPrefectServer | None:
    """Start a :class:`LocalPrefectServer` unless ``PREFECT_API_URL`` names a server already
    or Prefect is already imported (then Prefect's own ephemeral mode serves the flow)."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    try:
        return LocalPrefectServer().start()
    except (RuntimeError, OSError) as exc:
        log.warning("could not start a local Prefect server early (%s); Prefect's ephemeral server will be used", exc)
        return None
