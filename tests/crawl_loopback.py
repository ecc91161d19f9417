"""A fault-injecting HTTP server on 127.0.0.1 for the offline crawl tests and benches.

It serves real fixture files (captions, mp4 media) and rewritten real info.json files, with
HTTP Range support (yt-dlp resumes and ffmpeg seeks with it). Faults are queued per path
and consumed one per request, so a test says exactly which request fails and how:

* ``"429"`` / ``"500"`` / ``"503"`` / ``"403"`` / ``"404"`` -- that status, empty body
  (``429`` carries ``Retry-After: 0``);
* ``"slow:<s>"`` -- wait ``s`` seconds, then serve normally;
* ``"truncate"`` -- announce the full length, send half of the body, close the connection;
* ``"drop"`` -- close the connection without any response;
* ``"ok"`` -- serve normally (to aim a later fault at a later request).

``latency_s`` delays every response (a realistic round trip for the throughput bench);
``bandwidth_bps`` paces bodies so that a client which stops reading (ffmpeg seeking)
is not credited with bytes it never needed. A request whose target is an absolute URL
(``GET http://host/path``) is treated as proxied and logged as such.

Also :func:`rewrite_info`: a real yt-dlp info dict with its caption and format URLs
pointing at the server.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Hit:
    """One request as the server saw it; ``t`` is ``time.monotonic()`` at arrival."""
    t: float
    method: str
    path: str
    status: int
    range: str | None
    proxied: bool
    cookie: str | None
    sent_bytes: int = 0


class Loopback:
    """Run with ``with Loopback() as srv:``; ``srv.url(path)`` gives the address of a route."""

    def __init__(self, latency_s: float = 0.0, bandwidth_bps: float | None = None):
        self.routes: dict[str, tuple[str | None, bytes | None, str]] = {}
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.hits: list[Hit] = []
        self.latency_s = latency_s
        self.bandwidth_bps = bandwidth_bps
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- routes and faults ----------------------------------------------------------------
    def add_file(self, path: str, file: str | os.PathLike, ctype: str = "application/octet-stream") -> str:
        self.routes[path] = (os.fspath(file), None, ctype)
        return self.url(path)

    def add_bytes(self, path: str, data: bytes, ctype: str = "application/octet-stream") -> str:
        self.routes[path] = (None, data, ctype)
        return self.url(path)

    def fail(self, path: str, *faults: str) -> None:
        """Queue faults for the next requests of ``path`` (one per request, in order)."""
        with self._lock:
            self.faults[path].extend(faults)

    def url(self, path: str) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def hits_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def bytes_sent(self, prefix: str = "/") -> int:
        with self._lock:
            return sum(h.sent_bytes for h in self.hits if h.path.startswith(prefix))

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> "Loopback":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="loopback").start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(srv: Loopback):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            proxied = self.path.startswith("http://")
            path = urllib.parse.urlsplit(self.path).path if proxied else self.path.split("?", 1)[0]
            hit = Hit(time.monotonic(), self.command, path, 0, self.headers.get("Range"), proxied,
                      self.headers.get("Cookie"))
            with srv._lock:
                srv.hits.append(hit)
                fault = srv.faults[path].popleft() if srv.faults.get(path) else None
            if srv.latency_s:
                time.sleep(srv.latency_s)
            if fault == "ok":
                fault = None
            if fault and fault.startswith("slow:"):
                time.sleep(float(fault.split(":", 1)[1]))
                fault = None
            if fault == "drop":
                hit.status = -1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault and fault.isdigit():
                hit.status = int(fault)
                self.send_response(hit.status)
                if hit.status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            route = srv.routes.get(path)
            if route is None:
                hit.status = 404
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            file, data, ctype = route
            size = os.path.getsize(file) if file else len(data)
            start, end = 0, size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].split(",")[0].partition("-")
                if a:
                    start, end = int(a), (min(int(b), size - 1) if b else size - 1)
                else:  # suffix range: the last b bytes
                    start, end = max(0, size - int(b)), size - 1
                if start >= size:
                    hit.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            length = end - start + 1
            hit.status = status
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            if srv.bandwidth_bps:
                # A small send buffer keeps the count honest: bytes leave only when the client reads.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            to_send = length // 2 if fault == "truncate" else length
            chunk = 32 * 1024
            try:
                if file:
                    with open(file, "rb") as f:
                        f.seek(start)
                        self._pump(lambda n: f.read(n), to_send, chunk, hit)
                else:
                    view = memoryview(data)[start:start + to_send]
                    pos = [0]

                    def read(n):
                        out = view[pos[0]:pos[0] + n]
                        pos[0] += len(out)
                        return bytes(out)
                    self._pump(read, to_send, chunk, hit)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            if fault == "truncate":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _pump(self, read, remaining: int, chunk: int, hit: Hit) -> None:
            t0 = time.monotonic()
            sent = 0
            while remaining > 0:
                buf = read(min(chunk, remaining))
                if not buf:
                    break
                self.wfile.write(buf)
                sent += len(buf)
                hit.sent_bytes += len(buf)
                remaining -= len(buf)
                if srv.bandwidth_bps:
                    ahead = sent / srv.bandwidth_bps - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            self.wfile.flush()

    return Handler


# -- real info.json fixtures, pointed at the server -------------------------------------------

def rewrite_info(info: dict[str, Any], srv: Loopback, *, video_id: str | None = None,
                 captions: dict[tuple[str, str, str], str] | None = None,
                 media: dict[str, str] | None = None, duration: float | None = None) -> dict[str, Any]:
    """A copy of a real yt-dlp info dict whose URLs point at ``srv``.

    ``captions`` maps ``(kind, lang, ext)`` (kind ``"manual"``/``"auto"``) to a fixture file
    served at ``/captions/<id>.<lang>.<ext>``; every other caption track of the original is
    dropped from the kinds named there (a kind not named keeps no tracks either). ``media``
    maps a format_id of the original to a fixture file served at ``/media/<id>.<format_id>``;
    the other formats are dropped. ``video_id`` renames the video (for many videos from one
    fixture); ``duration`` overrides the info's duration (seconds) to match the served media.
    """
    out = copy.deepcopy(info)
    vid = video_id or out["id"]
    out["id"] = out["display_id"] = vid
    out["webpage_url"] = f"https://www.youtube.com/watch?v={vid}"
    if duration is not None:
        out["duration"] = duration
    subs: dict[str, dict[str, list]] = {"manual": {}, "auto": {}}
    for (kind, lang, ext), file in (captions or {}).items():
        path = f"/captions/{vid}.{lang}.{ext}"
        srv.add_file(path, file, "text/plain; charset=utf-8")
        subs[kind].setdefault(lang, []).append({"ext": ext, "url": srv.url(path), "name": lang})
    out["subtitles"], out["automatic_captions"] = subs["manual"], subs["auto"]
    formats = []
    by_id = {f["format_id"]: f for f in info.get("formats", [])}
    for fid, file in (media or {}).items():
        fmt = copy.deepcopy(by_id[fid])
        path = f"/media/{vid}.{fid}"
        srv.add_file(path, file, "video/mp4")
        for k in ("manifest_url", "fragments", "fragment_base_url", "filesize_approx", "downloader_options"):
            fmt.pop(k, None)
        fmt.update(url=srv.url(path), protocol="http", filesize=os.path.getsize(file))
        formats.append(fmt)
    out["formats"] = formats
    # Top-level fields of the originally chosen format would point at YouTube: drop them.
    for k in ("url", "format_id", "format", "protocol", "requested_formats", "requested_subtitles",
              "requested_downloads", "manifest_url", "fragments", "http_headers", "downloader_options"):
        out.pop(k, None)
    return out


def serve_info(srv: Loopback, info: dict[str, Any]) -> str:
    """Serve an info dict at ``/info/<id>.info.json``; returns its URL."""
    return srv.add_bytes(f"/info/{info['id']}.info.json", json.dumps(info).encode(), "application/json")


def fixture_video(srv: Loopback, base_info: dict[str, Any], video_id: str, **rewrite) -> dict[str, Any]:
    """Rewrite a real info dict for ``video_id`` (see :func:`rewrite_info`) and serve it."""
    info = rewrite_info(base_info, srv, video_id=video_id, **rewrite)
    serve_info(srv, info)
    return info


def make_ids(n: int, prefix: str = "lb") -> list[str]:
    """``n`` distinct valid 11-character ids (``lb000000001`` ...)."""
    return [f"{prefix}{i:0{11 - len(prefix)}d}" for i in range(1, n + 1)]

