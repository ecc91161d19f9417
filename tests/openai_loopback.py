"""A fault-injecting server on 127.0.0.1 that speaks the OpenAI wire format, for the offline
tests and the bench of the query stage (modelled on ``tests/crawl_loopback.py``).

Routes (OpenAI paths under ``/v1``, Azure paths under ``/openai`` with ``?api-version=``):
chat completions (``/v1/chat/completions``, ``/openai/deployments/<name>/chat/completions``),
files (``POST /files`` multipart, ``GET /files/<id>/content``) and batches (``POST /batches``,
``GET /batches``, ``GET /batches/<id>``). A batch completes after ``batch_polls`` retrieves
(never while ``batch_hold`` is set); its output and error files follow OpenAI's layout.

The answer to a prompt comes from ``answer(transcript) -> kind`` (default
:func:`answer_by_hash`), or from ``replies`` (kinds queued for the next answers). Kinds:
``yes`` / ``yes_fenced`` / ``yes_prose`` / ``no`` / ``no_fenced`` / ``garbage`` /
``nousage:<kind>`` (no ``usage`` object) / ``raw:<text>`` / ``error`` (batch only: a line in
the error file). Faults for chat requests are queued in ``faults`` and consumed one per request:

* ``"429"`` or ``"429:<ms>"`` -- rate limited, with ``retry-after-ms`` (default 0) and an
  OpenAI error body;
* ``"500"`` / ``"503"`` -- that status;
* ``"drop"`` -- close the connection without a response;
* ``"slow:<s>"`` -- wait ``s`` seconds, then answer (a client timeout shorter than that fails);
* ``"ok"`` -- answer normally.

``key``: the API key every request must carry (``Authorization: Bearer`` or Azure's
``api-key``); a wrong one gets a 401 that echoes it masked, as OpenAI does. ``latency_s``
delays every chat answer. Run it by hand with ``python -m tests.openai_loopback --port 8000``.
"""
from __future__ import annotations

import argparse
import email.parser
import hashlib
import itertools
import json
import socket
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

QUERY = "Please provide real-time commentary on what happens in this video."
_PROMPT_START = 'from a video clip:\n\n"'
_PROMPT_END = '"\n\nAnalyze this transcription'


@dataclass
class Hit:
    """One request as the server saw it; ``t`` is ``time.monotonic()`` at arrival."""
    t: float
    method: str
    route: str                  # "chat", "files.create", "files.content", "batches.create", ...
    path: str
    status: int = 0
    auth: str | None = None     # the key the request carried
    body: dict[str, Any] = field(default_factory=dict)


def transcript_of(prompt: str) -> str:
    """The transcript quoted in a prompt built from the reference template (else the prompt)."""
    a = prompt.find(_PROMPT_START)
    b = prompt.rfind(_PROMPT_END)
    return prompt[a + len(_PROMPT_START):b] if a >= 0 and b > a else prompt


def says_no(text: str) -> bool:
    """The default rule for NO: a third of transcripts, by hash (tests recompute it)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 3 == 0


def answer_by_hash(text: str) -> str:
    """NO for :func:`says_no` transcripts, else YES, fenced or bare by hash."""
    if says_no(text):
        return "no_fenced" if len(text) % 2 else "no"
    return "yes_fenced" if len(text) % 2 else "yes"


def reply_text(kind: str) -> str:
    yes = json.dumps({"result": "YES", "query": QUERY})
    no = json.dumps({"result": "NO", "query": ""})
    return {"yes": yes, "yes_fenced": f"```json\n{yes}\n```", "no": no, "no_fenced": f"```json\n{no}\n```",
            "yes_prose": f"Here is my analysis.\n{yes}\nHope this helps.",
            "garbage": "I am not sure what you mean; the transcription seems fine though!"}.get(kind, kind)


class OpenAILoopback:
    """Run with ``with OpenAILoopback() as srv:``; ``srv.base_url`` is the OpenAI base URL
    (``.../v1``), ``srv.azure_endpoint`` the Azure resource endpoint."""

    def __init__(self, key: str | None = None, latency_s: float = 0.0,
                 answer: Callable[[str], str] = answer_by_hash, batch_polls: int = 2,
                 reject_response_format: bool = False):
        self.key, self.latency_s, self.answer = key, latency_s, answer
        self.batch_polls, self.batch_hold = batch_polls, False
        self.reject_response_format = reject_response_format
        self.faults: deque[str] = deque()
        self.replies: deque[str] = deque()
        self.hits: list[Hit] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._polls: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()  # a batch finishes under it and answers each line
        self._server: ThreadingHTTPServer | None = None

    # -- addresses and counts -------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "start the server first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, route: str) -> int:
        with self._lock:
            return sum(1 for h in self.hits if h.route == route)

    def chat_hits(self) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.route == "chat"]

    def fail(self, *faults: str) -> None:
        with self._lock:
            self.faults.extend(faults)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "OpenAILoopback":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="openai-loopback").start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- answers -----------------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def completion(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, JSON) for one chat request body (no faults)."""
        prompt = "".join(m.get("content") or "" for m in body.get("messages", []) if isinstance(m, dict))
        with self._lock:
            kind = self.replies.popleft() if self.replies else None
        kind = kind or self.answer(transcript_of(prompt))
        usage = True
        if kind.startswith("nousage:"):
            usage, kind = False, kind.split(":", 1)[1]
        if kind == "error":
            return 500, {"error": {"message": "The server had an error processing your request.", "type": "server_error"}}
        content = kind[4:] if kind.startswith("raw:") else reply_text(kind)
        out: dict[str, Any] = {
            "id": self._next_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "?"), "system_fingerprint": "fp_loopback",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "finish_reason": "stop", "logprobs": None}]}
        if usage:
            p, c = max(1, len(prompt) // 4), max(1, len(content) // 4)
            out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return 200, out

    def _finish_batch(self, b: dict[str, Any]) -> None:
        out_lines, err_lines = [], []
        for line in self.files[b["input_file_id"]].decode("utf-8").splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            status, body = self.completion(req["body"])
            item = {"id": self._next_id("batch_req_"), "custom_id": req["custom_id"],
                    "response": {"status_code": status, "request_id": self._next_id("req_"), "body": body},
                    "error": None}
            (out_lines if status == 200 else err_lines).append(json.dumps(item))
        for lines, key in ((out_lines, "output_file_id"), (err_lines, "error_file_id")):
            if lines:
                fid = self._next_id("file-")
                self.files[fid] = ("\n".join(lines) + "\n").encode()
                b[key] = fid
        b.update(status="completed", completed_at=int(time.time()),
                 request_counts={"total": len(out_lines) + len(err_lines), "completed": len(out_lines),
                                 "failed": len(err_lines)})


def _make_handler(srv: OpenAILoopback):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None, hit: Hit | None = None) -> None:
            data = json.dumps(obj).encode()
            if hit is not None:
                hit.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            path = url.path
            for prefix in ("/v1", "/openai"):
                if path.startswith(prefix + "/"):
                    path = path[len(prefix):]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            auth = self.headers.get("api-key") or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            parts = path.strip("/").split("/")
            if method == "POST" and (path == "/chat/completions" or (parts[0] == "deployments" and parts[2:] == ["chat", "completions"])):
                route = "chat"
            elif method == "POST" and path == "/files":
                route = "files.create"
            elif method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                route = "files.content"
            elif method == "POST" and path == "/batches":
                route = "batches.create"
            elif method == "GET" and path == "/batches":
                route = "batches.list"
            elif method == "GET" and len(parts) == 2 and parts[0] == "batches":
                route = "batches.retrieve"
            else:
                route = "unknown"
            body: dict[str, Any] = {}
            if raw and "json" in (self.headers.get("Content-Type") or ""):
                body = json.loads(raw)
            hit = Hit(time.monotonic(), method, route, self.path, auth=auth or None, body=body)
            with srv._lock:
                srv.hits.append(hit)
            if srv.key is not None and auth != srv.key:
                shown = f"{auth[:6]}{'*' * 8}{auth[-4:]}" if len(auth) > 10 else "***"
                return self._json(401, {"error": {"message": f"Incorrect API key provided: {shown}.",
                                                  "type": "invalid_request_error", "code": "invalid_api_key"}}, hit=hit)
            if route == "chat":
                return self._chat(body, hit)
            if route == "files.create":
                return self._files_create(raw, hit)
            if route == "files.content":
                data = srv.files.get(parts[1])
                if data is None:
                    return self._json(404, {"error": {"message": "No such file"}}, hit=hit)
                hit.status = 200
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if route == "batches.create":
                with srv._lock:
                    bid = srv._next_id("batch_")
                    b = {"id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                         "input_file_id": body.get("input_file_id"), "completion_window": body.get("completion_window"),
                         "status": "validating", "output_file_id": None, "error_file_id": None,
                         "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                    srv.batches[bid] = b
                return self._json(200, b, hit=hit)
            if route == "batches.list":
                with srv._lock:
                    data = list(srv.batches.values())[::-1]
                return self._json(200, {"object": "list", "data": data, "has_more": False,
                                        "first_id": data[0]["id"] if data else None,
                                        "last_id": data[-1]["id"] if data else None}, hit=hit)
            if route == "batches.retrieve":
                with srv._lock:
                    b = srv.batches.get(parts[1])
                    if b is not None and b["status"] not in ("completed", "failed", "expired", "cancelled"):
                        srv._polls[b["id"]] = srv._polls.get(b["id"], 0) + 1
                        if srv.batch_hold:
                            b["status"] = "in_progress"
                        elif srv._polls[b["id"]] >= srv.batch_polls:
                            srv._finish_batch(b)
                        else:
                            b["status"] = "in_progress"
                if b is None:
                    return self._json(404, {"error": {"message": "No such batch"}}, hit=hit)
                return self._json(200, b, hit=hit)
            return self._json(404, {"error": {"message": f"no route {method} {self.path}"}}, hit=hit)

        def _chat(self, body: dict[str, Any], hit: Hit) -> None:
            with srv._lock:
                fault = srv.faults.popleft() if srv.faults else None
            if srv.latency_s:
                time.sleep(srv.latency_s)
            if fault and fault.startswith("slow:"):
                time.sleep(float(fault.split(":", 1)[1]))
                fault = None
            if fault == "drop":
                hit.status = -1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault and fault.split(":")[0].isdigit():
                status = int(fault.split(":")[0])
                headers = {}
                if status == 429:
                    headers["retry-after-ms"] = fault.split(":")[1] if ":" in fault else "0"
                    msg = "Rate limit reached for requests"
                else:
                    msg = "The server had an error while processing your request."
                return self._json(status, {"error": {"message": msg, "type": "server_error" if status >= 500 else
                                                     "requests", "code": None}}, headers, hit=hit)
            if srv.reject_response_format and "response_format" in body:
                return self._json(400, {"error": {"message": "response_format json_schema is not supported by this model",
                                                  "type": "invalid_request_error", "param": "response_format"}}, hit=hit)
            status, out = srv.completion(body)
            return self._json(status, out, hit=hit)

        def _files_create(self, raw: bytes, hit: Hit) -> None:
            ctype = self.headers.get("Content-Type", "")
            msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
            data, filename, purpose = b"", "upload.jsonl", None
            for part in msg.walk():
                name = part.get_param("name", header="content-disposition")
                if name == "file":
                    data = part.get_payload(decode=True) or b""
                    filename = part.get_filename() or filename
                elif name == "purpose":
                    purpose = (part.get_payload(decode=True) or b"").decode()
            with srv._lock:
                fid = srv._next_id("file-")
                srv.files[fid] = data
            hit.body = {"filename": filename, "purpose": purpose, "lines": data.count(b"\n")}
            return self._json(200, {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                                    "filename": filename, "purpose": purpose or "batch", "status": "processed"}, hit=hit)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description="An OpenAI-compatible loopback server for offline query-stage runs.")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--key", default=None, help="API key every request must carry (default: any)")
    ap.add_argument("--latency-s", type=float, default=0.0)
    args = ap.parse_args()
    srv = OpenAILoopback(key=args.key, latency_s=args.latency_s)
    srv._server = ThreadingHTTPServer(("127.0.0.1", args.port), _make_handler(srv))
    print(f"serving the OpenAI wire format at http://127.0.0.1:{srv.port}/v1 (Ctrl-C stops)", flush=True)
    try:
        srv._server.serve_forever(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        chats = srv.count("chat")
        print(f"chat requests: {chats}; batches: {len(srv.batches)}", flush=True)


if __name__ == "__main__":
    main()
