"""A Hugging Face Hub stand-in on 127.0.0.1 for the offline release tests and bench.

It speaks the wire format ``huggingface_hub`` 0.3x uses (read from its ``hf_api.py``,
``_commit_api.py`` and ``lfs.py``), for dataset repos:

* ``POST /api/repos/create`` -- new repo with the Hub's ``.gitattributes`` (409 if it exists)
* ``GET  /api/datasets/{repo}[/revision/{rev}]`` -- repo info (``sha`` of the revision, siblings)
* ``POST /api/datasets/{repo}/preupload/{rev}`` -- upload mode per file: ``lfs`` when it is 10 MB
  or more, binary (a NUL in its sample) or matches an LFS pattern of ``.gitattributes``; the
  file's ``oid`` when the revision already holds it
* ``POST /datasets/{repo}.git/info/lfs/objects/batch`` -- git-LFS batch API: an object the
  server holds gets no ``actions`` (the client skips it); others get ``upload`` (single ``PUT``,
  or multipart parts plus a completion ``POST`` past ``multipart_threshold``) and ``verify``
* ``PUT /lfs/upload/{oid}``, ``PUT /lfs/part/{oid}/{n}``, ``POST /lfs/upload/{oid}`` (multipart
  completion), ``POST /lfs/verify/{repo}`` -- the object's sha256 and size are checked
* ``POST /api/validate-yaml`` -- the card's YAML: licence, task category and size category ids
* ``POST /api/datasets/{repo}/commit/{rev}`` -- ndjson: header (``parentCommit`` checked: 412),
  ``file`` (base64), ``lfsFile`` (object must be held: 422), ``deletedFile``/``deletedFolder``
* ``POST /api/datasets/{repo}/tag/{rev}``, ``POST .../branch/{branch}``, ``GET .../refs``
* ``GET  /api/datasets/{repo}/tree/{rev}[/{path}]`` -- listing (``recursive``), paginated with a
  ``Link: <...>; rel="next"`` header
* ``GET/HEAD /datasets/{repo}/resolve/{rev}/{path}`` -- a file; LFS files redirect (302) to
  ``/lfs/objects/{oid}``, which serves ``Range`` requests

Write calls need ``Authorization: Bearer <token>`` (401 otherwise). Received LFS objects are kept
as files under ``store``; ``received[oid]`` counts the body bytes the server read for an object,
``completed[oid]`` how many uploads of it completed.

Faults are queued per endpoint name (``create``, ``info``, ``preupload``, ``batch``, ``upload``,
``part``, ``complete``, ``verify``, ``validate``, ``commit``, ``tag``, ``branch``, ``refs``,
``tree``, ``resolve``, ``lfs-get``) and consumed one per request: ``"429"``/``"500"``/``"503"``
(with ``Retry-After: <retry_after>`` on 429 and 503), ``"drop"`` (close without an answer, body
unread), ``"drop-after"`` (do the work, then close without an answer), ``"hold"`` (set
:attr:`HubLoopback.held`, wait for :meth:`release_hold`, then close without reading the body:
a request in flight when its client is killed), ``"ok"``.

Run standalone (``python -m tests.hub_loopback --token T``) for a manual release against it.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

#: the LFS patterns of a new Hub dataset repo's .gitattributes (a subset, as the Hub writes them)
GITATTRIBUTES = "\n".join(f"{p} filter=lfs diff=lfs merge=lfs -text" for p in [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.gz", "*.h5", "*.lz4", "*.npy", "*.npz", "*.onnx", "*.parquet",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.safetensors", "*.tar", "*.tar.*", "*.tgz", "*.zip", "*.zst",
    "*.mp3", "*.wav", "*.flac", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.mp4", "*.webm"]) + "\n"
LFS_SIZE_BYTES = 10 * 1024 * 1024
LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc0-1.0",
            "odc-by", "odbl", "other", "unknown", "openrail"}
TASK_CATEGORIES = {"video-text-to-text", "text-generation", "automatic-speech-recognition", "video-classification"}
SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                   "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}


@dataclass
class Blob:
    size: int
    lfs_oid: str | None = None     # sha256 of an LFS file
    content: bytes | None = None   # a regular file

    @property
    def git_oid(self) -> str:
        data = self.content if self.lfs_oid is None else _pointer(self.lfs_oid, self.size)
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    tree: dict[str, Blob]
    summary: str
    description: str = ""


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        sha = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(sha) if sha else None


@dataclass
class Hit:
    endpoint: str
    method: str
    path: str
    status: int
    t: float
    body_bytes: int = 0


class HubLoopback:
    """``with HubLoopback(token="hf_x") as hub:``; ``hub.url`` is what ``HF_ENDPOINT`` takes."""

    def __init__(self, token: str | None = "hf_loopback_token", store: str | None = None, page_size: int = 50,
                 multipart_threshold: int = 1 << 62, multipart_chunk: int = 5 << 20, retry_after: str = "0",
                 port: int = 0):
        self.token, self.port = token, port
        self._tmp = None if store else tempfile.TemporaryDirectory(prefix="hub-loopback-")
        self.store = store or self._tmp.name
        os.makedirs(os.path.join(self.store, "lfs"), exist_ok=True)
        self.page_size, self.multipart_threshold, self.multipart_chunk = page_size, multipart_threshold, multipart_chunk
        self.retry_after = retry_after
        self.repos: dict[str, Repo] = {}
        self.received: dict[str, int] = defaultdict(int)
        self.completed: dict[str, int] = defaultdict(int)
        self.faults: dict[str, deque[str]] = defaultdict(deque)
        self.hits: list[Hit] = []
        self.held = threading.Event()
        self._release = threading.Event()
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- control --------------------------------------------------------------------------
    def fail(self, endpoint: str, *faults: str) -> None:
        """Queue faults for the next requests of ``endpoint`` (one per request, in order)."""
        with self.lock:
            self.faults[endpoint].extend(faults)

    def release_hold(self) -> None:
        self._release.set()

    def hits_for(self, endpoint: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.endpoint == endpoint]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def lfs_path(self, oid: str) -> str:
        return os.path.join(self.store, "lfs", oid)

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """The content of every file of ``repo_id`` at ``rev``."""
        commit = self.repos[repo_id].resolve(rev)
        out = {}
        for path, blob in commit.tree.items():
            if blob.lfs_oid:
                with open(self.lfs_path(blob.lfs_oid), "rb") as f:
                    out[path] = f.read()
            else:
                out[path] = blob.content
        return out

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "HubLoopback":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="hub-loopback").start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- repo state -------------------------------------------------------------------------
    def new_commit(self, repo: Repo, parent: str | None, tree: dict[str, Blob], summary: str, description: str = "") -> str:
        sha = hashlib.sha1(f"{parent}:{summary}:{uuid.uuid4()}".encode()).hexdigest()
        repo.commits[sha] = Commit(sha, parent, tree, summary, description)
        return sha

    def holds(self, oid: str, size: int) -> bool:
        path = self.lfs_path(oid)
        return os.path.exists(path) and os.path.getsize(path) == size


def _pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _lfs_patterns(tree: dict[str, Blob]) -> list[str]:
    ga = tree.get(".gitattributes")
    text = (ga.content or b"").decode() if ga and ga.content is not None else ""
    return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


def _handler(hub: HubLoopback):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True   # headers and body go out as separate writes: no 40 ms Nagle stall

        def log_message(self, *args):  # quiet
            pass

        # -- plumbing ----------------------------------------------------------------------
        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def _dispatch(self, method: str) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            self.query = urllib.parse.parse_qs(parsed.query)
            path = urllib.parse.unquote(parsed.path)
            route = _route(method, path)
            endpoint = route[0] if route else "unknown"
            self.hit = Hit(endpoint, method, path, 0, time.monotonic())
            with hub.lock:
                hub.hits.append(self.hit)
                fault = hub.faults[endpoint].popleft() if hub.faults.get(endpoint) else None
            self._after = fault == "drop-after"
            if fault == "drop":
                self.hit.status = -1
                self._drop()
                return
            if fault == "hold":   # the request is in flight when the client dies: its body is never read
                hub.held.set()
                hub._release.wait(120)
                self.hit.status = -3
                self._drop()
                return
            if fault and fault.isdigit():
                self._read_body()
                self._send(int(fault), {"error": f"injected {fault}"},
                           headers={"Retry-After": hub.retry_after} if fault in ("429", "503") else None)
                return
            if route is None:
                self._read_body()
                self._send(404, {"error": f"no route {method} {path}"})
                return
            name, handler, args = route
            if name in WRITE_ENDPOINTS and hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._read_body()
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return
            try:
                getattr(self, handler)(*args)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _read_body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n) if n else b""
            self.hit.body_bytes += len(data)
            return data

        def _send(self, status: int, payload: Any = None, body: bytes | None = None, headers: dict | None = None,
                  ctype: str = "application/json", error_code: str | None = None) -> None:
            if self._after:   # the work is done; the answer is lost
                self.hit.status = -2
                self._drop()
                return
            data = body if body is not None else (json.dumps(payload).encode() if payload is not None else b"")
            self.hit.status = status
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._send(404, {"error": "Repository not found"}, error_code="RepoNotFound")
            return repo

        def _commit(self, repo: Repo, rev: str) -> Commit | None:
            commit = repo.resolve(rev)
            if commit is None:
                self._send(404, {"error": f"Invalid rev id: {rev}"}, error_code="RevisionNotFound")
            return commit

        # -- endpoints ---------------------------------------------------------------------
        def create(self) -> None:
            req = json.loads(self._read_body() or b"{}")
            repo_id = f"{req.get('organization')}/{req['name']}" if req.get("organization") else f"user/{req['name']}"
            with hub.lock:
                if repo_id in hub.repos:
                    self._send(409, {"error": "You already created this dataset repo", "url": f"{hub.url}/datasets/{repo_id}"})
                    return
                repo = Repo(repo_id, bool(req.get("private")))
                tree = {".gitattributes": Blob(len(GITATTRIBUTES), content=GITATTRIBUTES.encode())}
                repo.branches["main"] = hub.new_commit(repo, None, tree, "initial commit")
                hub.repos[repo_id] = repo
            self._send(200, {"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id, "id": uuid.uuid4().hex})

        def info(self, repo_id: str, rev: str = "main") -> None:
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, rev)
            if commit:
                self._send(200, {"id": repo_id, "_id": repo_id, "sha": commit.sha, "private": repo.private,
                                 "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0, "likes": 0,
                                 "siblings": [{"rfilename": p} for p in sorted(commit.tree)]})

        def preupload(self, repo_id: str, rev: str) -> None:
            req = json.loads(self._read_body())
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, rev)
            if not commit:
                return
            patterns = _lfs_patterns(commit.tree)
            files = []
            for f in req["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = (f["size"] >= LFS_SIZE_BYTES or b"\0" in sample
                       or any(fnmatch.fnmatch(posix_base(f["path"]), p) or fnmatch.fnmatch(f["path"], p) for p in patterns))
                have = commit.tree.get(f["path"])
                oid = None if have is None else (have.lfs_oid if have.lfs_oid else have.git_oid)
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                              **({"oid": oid} if oid else {})})
            self._send(200, {"files": files, "commitOid": commit.sha})

        def batch(self, repo_id: str) -> None:
            req = json.loads(self._read_body())
            if self._repo(repo_id) is None:
                return
            objects = []
            for obj in req["objects"]:
                oid, size = obj["oid"], obj["size"]
                if hub.holds(oid, size):
                    objects.append({"oid": oid, "size": size, "authenticated": True})
                    continue
                verify = {"href": f"{hub.url}/lfs/verify/{repo_id}", "header": {"Authorization": "Bearer lfs-verify"}}
                if size > hub.multipart_threshold:
                    n = -(-size // hub.multipart_chunk)
                    header = {"chunk_size": str(hub.multipart_chunk),
                              **{f"{i:05d}": f"{hub.url}/lfs/part/{oid}/{i}" for i in range(1, n + 1)}}
                    upload = {"href": f"{hub.url}/lfs/upload/{oid}", "header": header}
                else:
                    upload = {"href": f"{hub.url}/lfs/upload/{oid}"}
                objects.append({"oid": oid, "size": size, "authenticated": True,
                                "actions": {"upload": upload, "verify": verify}})
            self._send(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

        def upload(self, oid: str) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            tmp = hub.lfs_path(oid) + f".part-{uuid.uuid4().hex[:8]}"
            digest = hashlib.sha256()
            got = 0
            with open(tmp, "wb") as f:
                while got < n:
                    chunk = self.rfile.read(min(1 << 20, n - got))
                    if not chunk:
                        break
                    got += len(chunk)
                    f.write(chunk)
                    digest.update(chunk)
                    with hub.lock:
                        hub.received[oid] += len(chunk)
            self.hit.body_bytes += got
            if got < n or digest.hexdigest() != oid:
                os.remove(tmp)
                self._send(400, {"error": f"object {oid}: got {got} of {n} bytes, sha256 {digest.hexdigest()}"})
                return
            os.replace(tmp, hub.lfs_path(oid))
            with hub.lock:
                hub.completed[oid] += 1
            self._send(200, body=b"", ctype="text/plain")

        def part(self, oid: str, n: str) -> None:
            data = self._read_body()
            with hub.lock:
                hub.received[oid] += len(data)
            path = hub.lfs_path(oid) + f".multipart-{int(n):05d}"
            with open(path, "wb") as f:
                f.write(data)
            self._send(200, body=b"", ctype="text/plain", headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

        def complete(self, oid: str) -> None:
            req = json.loads(self._read_body())
            digest, parts = hashlib.sha256(), []
            for p in sorted(req["parts"], key=lambda p: p["partNumber"]):
                path = hub.lfs_path(oid) + f".multipart-{int(p['partNumber']):05d}"
                with open(path, "rb") as f:
                    data = f.read()
                if f'"{hashlib.md5(data).hexdigest()}"' != p["etag"]:
                    self._send(400, {"error": f"part {p['partNumber']}: etag mismatch"})
                    return
                digest.update(data)
                parts.append(path)
            if digest.hexdigest() != oid:
                self._send(400, {"error": "sha256 of the parts does not match the oid"})
                return
            tmp = hub.lfs_path(oid) + ".assemble"
            with open(tmp, "wb") as out:
                for path in parts:
                    with open(path, "rb") as f:
                        out.write(f.read())
                    os.remove(path)
            os.replace(tmp, hub.lfs_path(oid))
            with hub.lock:
                hub.completed[oid] += 1
            self._send(200, {"ok": True})

        def verify(self, repo_id: str) -> None:
            req = json.loads(self._read_body())
            if hub.holds(req["oid"], req["size"]):
                self._send(200, {"ok": True})
            else:
                self._send(404, {"error": f"object {req['oid']} not found"})

        def validate(self) -> None:
            req = json.loads(self._read_body())
            content = req.get("content", "")
            errors = []
            if not content.startswith("---\n"):
                errors.append("no YAML metadata block")
                meta = {}
            else:
                try:
                    meta = yaml.safe_load(content[4:content.index("\n---", 4)]) or {}
                except (yaml.YAMLError, ValueError) as exc:
                    meta, _ = {}, errors.append(f"invalid YAML: {exc}")
            lic = meta.get("license")
            if lic is not None and lic not in LICENSES:
                errors.append(f'"license" must be one of the Hub\'s licence ids, got {lic!r}')
            if lic == "other" and not meta.get("license_name"):
                errors.append('"license_name" is required with license: other')
            for t in meta.get("task_categories") or []:
                if t not in TASK_CATEGORIES:
                    errors.append(f'"task_categories": unknown {t!r}')
            for s in meta.get("size_categories") or []:
                if s not in SIZE_CATEGORIES:
                    errors.append(f'"size_categories": unknown {s!r}')
            for c in meta.get("configs") or []:
                if not isinstance(c, dict) or "config_name" not in c:
                    errors.append('"configs": each entry needs a config_name')
            if errors:
                self._send(400, {"error": "; ".join(errors)})
            else:
                self._send(200, {"warnings": []})

        def commit(self, repo_id: str, rev: str) -> None:
            lines = [json.loads(x) for x in self._read_body().splitlines() if x.strip()]
            repo = self._repo(repo_id)
            if repo is None:
                return
            with hub.lock:
                if rev not in repo.branches:
                    self._send(404, {"error": f"Invalid rev id: {rev}"}, error_code="RevisionNotFound")
                    return
                head = repo.commits[repo.branches[rev]]
                header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
                parent = header.get("parentCommit")
                if parent and parent != head.sha:
                    self._send(412, {"error": "A commit has happened since. Please refresh and try again."})
                    return
                tree = dict(head.tree)
                for item in lines[1:]:
                    key, v = item["key"], item["value"]
                    if key == "file":
                        data = base64.b64decode(v["content"])
                        tree[v["path"]] = Blob(len(data), content=data)
                    elif key == "lfsFile":
                        size = v.get("size")
                        if size is None or not hub.holds(v["oid"], size):
                            self._send(422, {"error": f"LFS object {v['oid']} for {v['path']} not found"})
                            return
                        tree[v["path"]] = Blob(size, lfs_oid=v["oid"])
                    elif key == "deletedFile":
                        if v["path"] not in tree:
                            self._send(404, {"error": "A file with this name doesn't exist"}, error_code="EntryNotFound")
                            return
                        del tree[v["path"]]
                    elif key == "deletedFolder":
                        prefix = v["path"].rstrip("/") + "/"
                        for p in [p for p in tree if p.startswith(prefix)]:
                            del tree[p]
                sha = hub.new_commit(repo, head.sha, tree, header.get("summary", ""), header.get("description", ""))
                repo.branches[rev] = sha
            self._send(200, {"commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{sha}", "commitOid": sha,
                             "pullRequestUrl": None})

        def tag(self, repo_id: str, rev: str) -> None:
            req = json.loads(self._read_body())
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, rev)
            if not commit:
                return
            with hub.lock:
                if req["tag"] in repo.tags:
                    self._send(409, {"error": f"Tag {req['tag']} already exists"})
                    return
                repo.tags[req["tag"]] = commit.sha
            self._send(200, {"ok": True})

        def branch(self, repo_id: str, name: str) -> None:
            req = json.loads(self._read_body() or b"{}")
            repo = self._repo(repo_id)
            if repo is None:
                return
            with hub.lock:
                if name in repo.branches:
                    self._send(409, {"error": f"Branch {name} already exists"})
                    return
                start = repo.resolve(req.get("startingPoint") or "main")
                repo.branches[name] = start.sha
            self._send(200, {"ok": True})

        def refs(self, repo_id: str) -> None:
            repo = self._repo(repo_id)
            if repo:
                ref = lambda kind, n, s: {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s}  # noqa: E731
                self._send(200, {"branches": [ref("heads", n, s) for n, s in repo.branches.items()],
                                 "tags": [ref("tags", n, s) for n, s in repo.tags.items()], "converts": []})

        def tree(self, repo_id: str, rev: str, sub: str = "") -> None:
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, rev)
            if not commit:
                return
            recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
            prefix = sub.strip("/") + "/" if sub.strip("/") else ""
            entries, folders = [], set()
            for path in sorted(commit.tree):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):]
                parts = rest.split("/")
                for i in range(1, len(parts)):
                    if recursive or i == 1:
                        folders.add(prefix + "/".join(parts[:i]))
                if len(parts) > 1 and not recursive:
                    continue
                blob = commit.tree[path]
                e = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
                if blob.lfs_oid:
                    e["lfs"] = {"oid": blob.lfs_oid, "size": blob.size, "pointerSize": len(_pointer(blob.lfs_oid, blob.size))}
                entries.append(e)
            entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f} for f in sorted(folders)]
            start = int(self.query.get("cursor", ["0"])[0])
            page = entries[start:start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(entries):
                q = urllib.parse.urlencode({**{k: v[0] for k, v in self.query.items()}, "cursor": start + hub.page_size})
                headers["Link"] = f'<{hub.url}{urllib.parse.quote(self.hit.path)}?{q}>; rel="next"'
            self._send(200, page, headers=headers)

        def resolve(self, repo_id: str, rev: str, path: str) -> None:
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, rev)
            if not commit:
                return
            blob = commit.tree.get(path)
            if blob is None:
                self._send(404, {"error": "Entry not found"}, error_code="EntryNotFound")
                return
            meta = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.git_oid}"'}
            if blob.lfs_oid:
                self._send(302, body=b"", headers={**meta, "Location": f"{hub.url}/lfs/objects/{blob.lfs_oid}",
                                                   "X-Linked-Etag": f'"{blob.lfs_oid}"', "X-Linked-Size": str(blob.size)})
                return
            self._serve_bytes(blob.content, meta)

        def lfs_get(self, oid: str) -> None:
            path = hub.lfs_path(oid)
            if not os.path.exists(path):
                self._send(404, {"error": "no such object"})
                return
            with open(path, "rb") as f:
                self._serve_bytes(f.read(), {"ETag": f'"{oid}"'})

        def _serve_bytes(self, data: bytes, headers: dict) -> None:
            size, status, start, end = len(data), 200, 0, len(data) - 1
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].split(",")[0].partition("-")
                start, end = (int(a), min(int(b), size - 1) if b else size - 1) if a else (max(0, size - int(b)), size - 1)
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
            self._send(status, body=data[start:end + 1], ctype="application/octet-stream",
                       headers={**headers, "Accept-Ranges": "bytes"})

    return Handler


def posix_base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


WRITE_ENDPOINTS = {"create", "preupload", "batch", "commit", "tag", "branch", "validate"}


def _route(method: str, path: str) -> tuple[str, str, tuple] | None:
    """(endpoint name, handler method, arguments) of a request path; None when unknown."""
    p = path.split("/")
    if method == "POST" and path == "/api/repos/create":
        return "create", "create", ()
    if method == "POST" and path == "/api/validate-yaml":
        return "validate", "validate", ()
    if path.startswith("/api/datasets/") and len(p) >= 5:
        repo_id = f"{p[3]}/{p[4]}"
        rest = p[5:]
        if method == "GET" and not rest:
            return "info", "info", (repo_id,)
        if method == "GET" and rest[0] == "revision" and len(rest) >= 2:
            return "info", "info", (repo_id, "/".join(rest[1:]))
        if method == "POST" and rest[0] == "preupload":
            return "preupload", "preupload", (repo_id, "/".join(rest[1:]))
        if method == "POST" and rest[0] == "commit":
            return "commit", "commit", (repo_id, "/".join(rest[1:]))
        if method == "POST" and rest[0] == "tag":
            return "tag", "tag", (repo_id, "/".join(rest[1:]))
        if method == "POST" and rest[0] == "branch":
            return "branch", "branch", (repo_id, "/".join(rest[1:]))
        if method == "GET" and rest[0] == "refs":
            return "refs", "refs", (repo_id,)
        if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
            return "tree", "tree", (repo_id, rest[1], "/".join(rest[2:]))
    if method == "POST" and path.startswith("/datasets/") and path.endswith(".git/info/lfs/objects/batch"):
        return "batch", "batch", (path[len("/datasets/"):-len(".git/info/lfs/objects/batch")],)
    if method in ("GET", "HEAD") and path.startswith("/datasets/") and len(p) >= 7 and p[4] == "resolve":
        return "resolve", "resolve", (f"{p[2]}/{p[3]}", p[5], "/".join(p[6:]))
    if path.startswith("/lfs/"):
        if method == "PUT" and p[2] == "upload":
            return "upload", "upload", (p[3],)
        if method == "POST" and p[2] == "upload":
            return "complete", "complete", (p[3],)
        if method == "PUT" and p[2] == "part":
            return "part", "part", (p[3], p[4])
        if method == "POST" and p[2] == "verify":
            return "verify", "verify", (f"{p[3]}/{p[4]}",)
        if method in ("GET", "HEAD") and p[2] == "objects":
            return "lfs-get", "lfs_get", (p[3],)
    return None


def main() -> None:
    """Serve until interrupted: ``python -m tests.hub_loopback --token T [--port P] [--store DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--token", default="hf_loopback_token")
    ap.add_argument("--store", default=None, help="folder for received LFS objects (default: a temporary one)")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    with HubLoopback(token=args.token, store=args.store, port=args.port) as hub:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
