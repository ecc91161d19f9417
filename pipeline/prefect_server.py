"""The one way this project brings up Prefect: :class:`PrefectServer`, a context manager.

Flows need a Prefect API. With ``PREFECT_API_URL`` set (a shared server, a scheduled build)
the block uses it as it is. Without it, the block runs ``prefect server start`` on
``127.0.0.1:<free port>`` as a child process (UI, scheduler and late-run service off: a
build needs neither; the task-run recorder and event services stay on so tasks, logs and
artifacts show), waits until ``/api/health`` answers, points Prefect at it, and on exit
flushes Prefect's log and event workers before stopping it. The CLI, the tests and the
benches all use it.

Import order does not matter: the API URL is set in the environment (for child processes)
and, when Prefect is already imported, its process-wide settings are refreshed
(``prefect.context.refresh_global_settings_context``). Booting takes 4-8 s on a 2-core
machine, so :meth:`start` returns at once and the caller starts Ray meanwhile;
:meth:`wait_ready` blocks. The server gets SIGTERM when its parent dies (Linux
``PR_SET_PDEATHSIG``), so a SIGKILLed build leaves no server behind.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("livecc")

#: Offline defaults for every command (analytics and usage stats off).
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the parent dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_prefect_at(url: str | None) -> None:
    """Set (or clear) ``PREFECT_API_URL`` for this process and its children."""
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:  # already imported: re-read the environment
        sys.modules["prefect.context"].refresh_global_settings_context()


class PrefectServer:
    """A temporary local Prefect server for the duration of a ``with`` block.

    ``wait``: block in ``__enter__`` until the server answers (``False``: call
    :meth:`wait_ready` yourself, after overlapping other start-up work). ``home``: its
    ``PREFECT_HOME`` (database); default Prefect's own. ``timeout_s``: readiness deadline.
    ``api_url`` is the API in use (ours, or the ``PREFECT_API_URL`` found set).
    """

    def __init__(self, wait: bool = True, home: str | os.PathLike | None = None, timeout_s: float = 180.0):
        self.wait, self.home, self.timeout_s = wait, home, timeout_s
        self.api_url: str | None = os.environ.get("PREFECT_API_URL") or None
        self.process: subprocess.Popen | None = None
        self._saved_url = self.api_url
        self._stderr = None
        self._ready = self.api_url is not None

    @property
    def owned(self) -> bool:
        """True when this block started the server (no ``PREFECT_API_URL`` was set)."""
        return self.process is not None

    def __enter__(self) -> "PrefectServer":
        self.start()
        if self.wait:
            self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "PrefectServer":
        """Launch the server (unless ``PREFECT_API_URL`` names one); returns at once.

        Raises:
            RuntimeError: the ``prefect`` command is not installed next to this Python.
        """
        if self._ready or self.process is not None:
            return self
        exe = Path(sys.executable).with_name("prefect")
        cmd = [str(exe)] if exe.exists() else [shutil.which("prefect") or ""]
        if not cmd[0]:
            raise RuntimeError("the prefect command is not installed (pip install prefect)")
        port = _free_port()
        env = {**os.environ, **{k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()}}
        env.pop("PREFECT_API_URL", None)
        if self.home is not None:
            env["PREFECT_HOME"] = str(self.home)
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            cmd + ["server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler",
                   "--no-late-runs", "--analytics-off", "--log-level", "WARNING"],
            env=env, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.api_url = f"http://127.0.0.1:{port}/api"
        log.info("Starting a temporary Prefect server on %s", self.api_url.removesuffix("/api"))
        return self

    def wait_ready(self) -> None:
        """Block until ``GET /api/health`` answers 200, then point Prefect at the server.

        Raises:
            RuntimeError: the server exited or did not answer within ``timeout_s`` seconds (it
                is stopped; the message quotes the end of its output).
        """
        if self._ready:
            return
        if self.process is None:
            raise RuntimeError("start() the Prefect server first")
        deadline = time.monotonic() + self.timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                tail = self._tail()
                self.stop()
                raise RuntimeError(f"the local Prefect server exited with status {code}: {tail}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                tail = self._tail()
                self.stop()
                raise RuntimeError(f"the local Prefect server did not answer within {self.timeout_s:.0f} s: {tail}")
            time.sleep(0.1)
        _point_prefect_at(self.api_url)
        self._ready = True

    def _tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:].strip() or "(no output)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush Prefect's log and event workers to the server, stop it (SIGTERM, then SIGKILL
        after ``timeout_s``) and restore ``PREFECT_API_URL``. Safe to call more than once."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if self._ready and "prefect" in sys.modules:
            # logs and events still queued would otherwise be retried against a dead server
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            for worker in (APILogWorker, EventsWorker):
                with contextlib.suppress(Exception):
                    worker.drain_all(timeout=10)
        log.info("Stopping the temporary Prefect server on %s", self.api_url.removesuffix("/api"))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._ready = False
        _point_prefect_at(self._saved_url)
        self.api_url = self._saved_url
