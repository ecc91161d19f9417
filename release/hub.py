"""Upload a staged release folder to a Hugging Face Hub dataset repo, resumably, and check it
(docs/recipes.md#release).

**Why ``create_commit`` with pre-uploads in batches, not ``upload_large_folder``.** Both resume
through the Hub itself: an LFS object the Hub already holds is never sent again (the LFS batch
API answers without an upload action). ``upload_large_folder`` cannot take a commit message
(the issue wants corpus, config hash and code version in it), spreads the folder over as many
commits as it likes (the repo shows half a release in between), keeps its own state under
``<folder>/.cache/huggingface`` (inside what we release) and runs its own worker loop that we
cannot put our retry layer around. With ``create_commit`` we pre-upload the LFS files batch by
batch (bounded memory, a progress bar, a kill loses at most the objects in flight), then make
one commit with our message -- more than one only past ``release.commit_max_files`` files, the
card last -- guarded by ``parent_commit``; files of an older release that are not in the folder
are deleted in the same commit, and a re-run of an unchanged release makes no commit at all.

**Retries.** huggingface_hub < 1.0 retries neither the preupload, the LFS batch nor the commit
call on 429/5xx (only the LFS ``PUT`` of a single part, on 5xx). While a release runs, every
request it makes goes through :class:`RetryingAdapter` (installed with
``huggingface_hub.configure_http_backend`` for the duration): 408, 429 and 5xx answers, dropped
connections and timeouts are retried with exponential backoff and full jitter, never sooner than
``Retry-After`` (:class:`release.config.RetryPolicy`). A request body that is a file is rewound
before it is sent again. A commit is not idempotent, so it carries ``parent_commit``: if its
answer was lost after the Hub applied it, the retry gets 412 and we accept the branch head when
it already holds exactly our files.

**Hashes.** The upload needs every file's sha256; a shard's comes from the shard list (computed
while the shard was written), so shards are not read twice before they are sent.

**Xet.** With ``hf_xet`` installed the Hub may pick its Xet transfer instead of LFS; the Xet
client does its own transfers and retries (our layer still wraps preupload, batch and commit).
That is the production default; it is untested offline, where tests set
``HF_HUB_DISABLE_XET=1``.

**Token.** ``HF_TOKEN``, else the token saved by ``huggingface-cli login``, else a Prefect
Secret block named by ``--token-secret``; it is passed to ``HfApi`` only and never logged,
written or given to Prefect as a parameter.
"""
from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter

from release.config import ReleaseConfig, RetryPolicy
from release.folder import CARD_NAME, ReleaseError, ReleaseFile, StagedRelease, human_bytes

log = logging.getLogger("livecc.release")

REPO_TYPE = "dataset"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: files the Hub adds to a new repo; a release leaves them alone
HUB_FILES = frozenset({".gitattributes"})


# -- our retry layer ----------------------------------------------------------------------

def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(retry: int, policy: RetryPolicy, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
    """Wait before retry number ``retry`` (0 = the first retry): uniform in
    ``[0, min(max_s, base_s * 2**retry))`` (full jitter: clients hit by the same 429 do not come
    back together), and at least ``retry_after`` (capped at ``max_retry_after_s``)."""
    ceiling = min(policy.max_s, policy.base_s * (2 ** retry))
    wait = (rng or random).uniform(0.0, ceiling)
    if retry_after is not None:
        wait = max(wait, min(retry_after, policy.max_retry_after_s))
    return wait


def endpoint_name(method: str, url: str) -> str:
    """A short name for a Hub request in logs and counters (never the query string: presigned URLs carry signatures)."""
    path = requests.utils.urlparse(url).path
    for needle, name in (("/preupload/", "preupload"), ("/info/lfs/objects/batch", "lfs-batch"), ("/commit/", "commit"),
                         ("/api/validate-yaml", "validate-yaml"), ("/tag/", "tag"), ("/branch/", "branch"),
                         ("/tree/", "list"), ("/refs", "refs"), ("/revision/", "revision"),
                         ("/api/repos/create", "create-repo"), ("verify", "lfs-verify")):
        if needle in path:
            return name
    return "lfs-upload" if method == "PUT" else ("lfs-complete" if method == "POST" else f"{method} {path}")


@dataclasses.dataclass
class TransferStats:
    """What the requests of one release did: per endpoint, requests and retries; bytes sent in
    upload bodies (``PUT``)."""
    requests: dict[str, int] = dataclasses.field(default_factory=dict)
    retries: dict[str, int] = dataclasses.field(default_factory=dict)
    sent_bytes: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, retry: bool = False, sent: int = 0) -> None:
        with self.lock:
            table = self.retries if retry else self.requests
            table[name] = table.get(name, 0) + 1
            self.sent_bytes += sent


def _base_adapter() -> type[HTTPAdapter]:
    try:  # huggingface_hub's adapter adds a request id to every request (and to errors)
        from huggingface_hub.utils._http import UniqueRequestIdAdapter
        return UniqueRequestIdAdapter
    except ImportError:  # pragma: no cover - other huggingface_hub versions
        return HTTPAdapter


class RetryingAdapter(_base_adapter()):
    """A ``requests`` transport adapter that retries a request on 408/429/5xx, a dropped
    connection or a timeout, per :func:`backoff_s` (see the module docstring). The body of a
    non-streamed response is read inside the retry loop, so a connection that drops mid-answer
    is retried too. Bodies that cannot be replayed (generators) are sent once."""

    def __init__(self, policy: RetryPolicy, stats: TransferStats | None = None,
                 sleep: Callable[[float], None] = time.sleep, **kwargs):
        super().__init__(**kwargs)
        self.policy, self.stats, self.sleep = policy, stats or TransferStats(), sleep

    def send(self, request, stream=False, **kwargs):
        body = request.body
        pos = None
        if body is not None and not isinstance(body, (bytes, str)):
            try:
                pos = body.tell()
            except (AttributeError, OSError):
                pos = None
        replayable = body is None or isinstance(body, (bytes, str)) or pos is not None
        name = endpoint_name(request.method, request.url)
        size = int(request.headers.get("Content-Length") or 0)
        for attempt in range(self.policy.attempts):
            last = attempt == self.policy.attempts - 1 or not replayable
            try:
                resp = super().send(request, stream=stream, **kwargs)
                if not stream:
                    resp.content  # noqa: B018 - read here so a drop mid-body is retried
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last:
                    raise
                wait = backoff_s(attempt, self.policy)
                log.warning("%s: %s; retry %d/%d in %.1f s", name, type(exc).__name__, attempt + 1,
                            self.policy.attempts - 1, wait)
            else:
                if resp.status_code not in RETRY_STATUS or last:
                    self.stats.count(name, sent=size if request.method == "PUT" and resp.ok else 0)
                    return resp
                wait = backoff_s(attempt, self.policy, retry_after_s(resp.headers.get("Retry-After")))
                log.warning("%s: HTTP %d; retry %d/%d in %.1f s", name, resp.status_code, attempt + 1,
                            self.policy.attempts - 1, wait)
                resp.close()
            self.stats.count(name, retry=True)
            self.sleep(wait)
            if pos is not None:
                body.seek(pos)
        raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def hub_session(policy: RetryPolicy, stats: TransferStats | None = None,
                endpoint: str | None = None) -> Iterator[TransferStats]:
    """Route every huggingface_hub request of this process through :class:`RetryingAdapter`
    while the block runs (huggingface_hub's default session comes back afterwards). An
    ``endpoint`` other than ``HF_ENDPOINT`` is made huggingface_hub's default for the block too:
    some of its code (the commit answer's repo URL) parses URLs against that default only.

    Raises:
        ReleaseError: ``HF_HUB_OFFLINE`` is set (nothing could be uploaded).
    """
    from huggingface_hub import configure_http_backend, constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if constants.HF_HUB_OFFLINE:
        raise ReleaseError("HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to upload to the Hub")
    stats = stats or TransferStats()

    def factory() -> requests.Session:
        session = requests.Session()
        adapter = RetryingAdapter(policy, stats)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()   # one progress bar of ours, not one per file
    configure_http_backend(backend_factory=factory)
    default_endpoint = constants.ENDPOINT
    if endpoint:
        constants.ENDPOINT = endpoint.rstrip("/")
    try:
        yield stats
    finally:
        constants.ENDPOINT = default_endpoint
        configure_http_backend()
        if not bars_were_off:
            enable_progress_bars()


# -- token --------------------------------------------------------------------------------

def resolve_token(secret_block: str | None = None) -> str:
    """The Hub token: from the Prefect Secret block ``secret_block`` when named, else
    ``HF_TOKEN`` or the saved ``huggingface-cli login`` (as huggingface_hub finds it).

    Raises:
        ReleaseError: no token found (the message says where to put one, never a token).
    """
    if secret_block:
        from prefect.blocks.system import Secret

        try:
            token = Secret.load(secret_block).get()
        except ValueError as exc:
            raise ReleaseError(f"no Prefect Secret block named {secret_block!r}: create one with "
                               f"`prefect block create secret` or in the UI") from exc
    else:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise ReleaseError("no Hugging Face token: set HF_TOKEN, run `huggingface-cli login`, or store it in a "
                           "Prefect Secret block and pass --token-secret NAME")
    return str(token)


# -- upload -------------------------------------------------------------------------------

def _known_sha256_add():
    """``CommitOperationAdd`` that takes a known sha256 instead of hashing the file again."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.lfs import UploadInfo

    @dataclasses.dataclass
    class KnownSha256Add(CommitOperationAdd):
        sha256_hex: str = dataclasses.field(default="", repr=False)

        def __post_init__(self) -> None:
            if not self.sha256_hex:
                return super().__post_init__()
            with open(self.path_or_fileobj, "rb") as f:
                sample = f.read(512)
            self.upload_info = UploadInfo(sha256=bytes.fromhex(self.sha256_hex),
                                          size=os.path.getsize(self.path_or_fileobj), sample=sample)

    return KnownSha256Add


def batches(files: list[ReleaseFile], max_files: int, max_bytes: int) -> Iterable[list[ReleaseFile]]:
    """Consecutive groups of at most ``max_files`` files and ``max_bytes`` bytes (a larger file alone)."""
    group: list[ReleaseFile] = []
    size = 0
    for f in files:
        if group and (len(group) >= max_files or size + f.size_bytes > max_bytes):
            yield group
            group, size = [], 0
        group.append(f)
        size += f.size_bytes
    if group:
        yield group


def repo_url(endpoint: str, repo_id: str, revision: str | None = None) -> str:
    """The browsable URL of a dataset repo (at ``revision`` when not main)."""
    url = f"{endpoint.rstrip('/')}/datasets/{repo_id}"
    return url if not revision or revision == "main" else f"{url}/tree/{revision}"


def upload_release(staged: StagedRelease, repo_id: str, *, token: str, rcfg: ReleaseConfig, message: str,
                   description: str = "", private: bool = False, revision: str | None = None,
                   tag: str | None = None, endpoint: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Upload the staged folder to the dataset repo ``repo_id`` (created if missing) on branch
    ``revision`` (default main; created from main if missing), then tag and verify it.

    Returns:
        ``{"url", "commit", "commits" (made by this run), "files", "bytes", "sent_bytes" (sent
        by this run), "requests", "retries", "tag", "verified"}``.

    Raises:
        ReleaseError: the branch moved under the release, the tag exists elsewhere, or the
            verification failed. ``huggingface_hub.errors.HfHubHTTPError``: a request failed after
            every retry (401/403: the token; 404: the repo or namespace).
    """
    from huggingface_hub import CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    branch = revision or "main"
    Add = _known_sha256_add()
    with hub_session(rcfg.retry, endpoint=endpoint) as stats:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True)
        head = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha
        validate_card(api, staged.card, token)   # a card the Hub refuses fails now, before any upload
        remote = _remote_files(api, repo_id, head)
        planned = {f.path for f in staged.files}
        files = [f for f in staged.files if f.path != CARD_NAME] + [staged.file(CARD_NAME)]   # the card last
        ops = {f.path: Add(path_in_repo=f.path, path_or_fileobj=f.local, sha256_hex=f.sha256 or "") for f in files}

        bar = _Progress("upload", staged.size_bytes, progress)
        try:
            for group in batches(files, rcfg.batch_files, rcfg.batch_bytes):
                api.preupload_lfs_files(repo_id, additions=[ops[f.path] for f in group], repo_type=REPO_TYPE,
                                        revision=branch, num_threads=rcfg.num_threads)
                bar.advance(sum(f.size_bytes for f in group), f"{len(group)} files up to {group[-1].path}")
        finally:
            bar.close()

        deletes = [CommitOperationDelete(path_in_repo=p) for p in sorted(remote) if p not in planned and p not in HUB_FILES]
        chunks = [list(c) for c in _chunks([ops[f.path] for f in files], rcfg.commit_max_files)]
        chunks[-1] += deletes
        parent, made = head, 0
        for n, chunk in enumerate(chunks):
            summary = message if len(chunks) == 1 else f"{message} [{n + 1}/{len(chunks)}]"
            if _holds(remote, chunk, staged):   # an unchanged re-release makes no commit
                log.info("commit %d/%d: the repo already holds these %d files", n + 1, len(chunks), len(chunk))
                continue
            try:
                info = api.create_commit(repo_id, operations=chunk, commit_message=summary,
                                         commit_description=description, repo_type=REPO_TYPE, revision=branch,
                                         parent_commit=parent, num_threads=rcfg.num_threads)
            except HfHubHTTPError as exc:
                if exc.response is None or exc.response.status_code != 412:
                    raise
                # the branch moved: our own commit whose answer was lost, or someone else's
                now = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha
                if not _holds(_remote_files(api, repo_id, now), chunk, staged):
                    raise ReleaseError(f"branch {branch!r} of {repo_id} moved during the release (another commit "
                                       f"landed); run the release again") from None
                log.info("commit %d/%d was applied before its answer was lost; branch head %s holds it",
                         n + 1, len(chunks), now[:12])
                parent, made = now, made + 1
                continue
            made += int(info.oid != parent)
            parent = info.oid
        if tag:
            _tag(api, repo_id, tag, parent, message)
        verified = verify_release(api, staged, repo_id, parent)
        return {"url": repo_url(api.endpoint, repo_id, branch), "commit": parent, "commits": made,
                "files": len(staged.files), "bytes": staged.size_bytes, "sent_bytes": stats.sent_bytes,
                "requests": dict(stats.requests), "retries": dict(stats.retries), "tag": tag, "verified": verified}


def validate_card(api, card: str, token: str) -> None:
    """Have the Hub at ``api.endpoint`` check the card's YAML (its ``/api/validate-yaml``, the
    call ``create_commit`` makes only after the uploads).

    Raises:
        ReleaseError: the Hub refuses it (the message is the Hub's).
    """
    from huggingface_hub.utils import build_hf_headers, get_session

    resp = get_session().post(f"{api.endpoint}/api/validate-yaml", json={"content": card, "repoType": REPO_TYPE},
                              headers=build_hf_headers(token=token))
    if resp.status_code == 400:
        try:
            reason = resp.json().get("error")
        except ValueError:
            reason = resp.text
        raise ReleaseError(f"the Hub refuses the dataset card's YAML: {reason} (check release.license and "
                           f"the other keys of the release: section)")
    from huggingface_hub.utils import hf_raise_for_status
    hf_raise_for_status(resp)


def _tag(api, repo_id: str, tag: str, commit: str, message: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message, repo_type=REPO_TYPE)
    except HfHubHTTPError as exc:
        if exc.response is None or exc.response.status_code != 409:
            raise
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
        at = next((t.target_commit for t in refs.tags if t.name == tag), None)
        if at != commit:   # a lost answer to our own create_tag lands here with at == commit
            raise ReleaseError(f"tag {tag!r} already exists on {repo_id} at {at}, not at this release's "
                               f"commit {commit}; choose another tag") from None


def _remote_files(api, repo_id: str, revision: str) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    return {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=REPO_TYPE)
            if isinstance(e, RepoFile)}


def _holds(remote: dict[str, Any], chunk: list, staged: StagedRelease) -> bool:
    """Whether the repo files ``remote`` already reflect every operation of ``chunk``."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    for op in chunk:
        if isinstance(op, CommitOperationDelete):
            if op.path_in_repo in remote:
                return False
        elif isinstance(op, CommitOperationAdd):
            entry = remote.get(op.path_in_repo)
            if entry is None or not _same(entry, staged.file(op.path_in_repo), op.upload_info.sha256.hex()):
                return False
    return True


def _same(entry, local: ReleaseFile, sha256_hex: str | None) -> bool:
    """A repo file equals a local one: same size and, for LFS, same sha256; else same git blob id."""
    from huggingface_hub.utils.sha import git_hash

    if entry.size != local.size_bytes:
        return False
    if entry.lfs is not None:
        return sha256_hex is None or entry.lfs.sha256 == sha256_hex
    with open(local.local, "rb") as f:
        return entry.blob_id == git_hash(f.read())


def verify_release(api, staged: StagedRelease, repo_id: str, revision: str) -> dict[str, int]:
    """List the repo at ``revision`` and check it against the folder: the same files (the
    Hub's ``.gitattributes`` aside), every size equal, every shard an LFS object whose sha256
    is the shard list's.

    Returns:
        ``{"files", "bytes", "shards_sha256"}`` checked.

    Raises:
        ReleaseError: listing each difference.
    """
    remote = _remote_files(api, repo_id, revision)
    problems = []
    local = {f.path: f for f in staged.files}
    for path in sorted(set(remote) - set(local) - HUB_FILES):
        problems.append(f"{path}: in the repo, not in the release")
    shards = 0
    for path, f in local.items():
        entry = remote.get(path)
        if entry is None:
            problems.append(f"{path}: missing from the repo")
            continue
        if entry.size != f.size_bytes:
            problems.append(f"{path}: {entry.size} bytes in the repo, {f.size_bytes} here")
        if f.is_shard:
            if entry.lfs is None or entry.lfs.sha256 != f.sha256:
                problems.append(f"{path}: sha256 {getattr(entry.lfs, 'sha256', None)} in the repo, "
                                f"{f.sha256} in shardlist.json")
            else:
                shards += 1
    if problems:
        raise ReleaseError(f"{repo_id}@{revision[:12]} does not match the release folder: " + "; ".join(problems[:20]))
    return {"files": len(local), "bytes": sum(f.size_bytes for f in local.values()), "shards_sha256": shards}


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class _Progress:
    """A byte progress bar on a terminal; log lines otherwise."""

    def __init__(self, name: str, total: int, enabled: bool | None):
        import sys

        self.name, self.total, self.done = name, total, 0
        self.live = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        if self.live:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                              TransferSpeedColumn(), TimeRemainingColumn())
            self.task = self.p.add_task(name, total=total)
            self.p.start()

    def advance(self, n: int, what: str = "") -> None:
        self.done += n
        if self.live:
            self.p.advance(self.task, n)
        else:
            log.info("%s: %s of %s (%s)", self.name, human_bytes(self.done), human_bytes(self.total), what)

    def close(self) -> None:
        if self.live:
            self.p.stop()


__all__ = ["RetryingAdapter", "TransferStats", "backoff_s", "retry_after_s", "hub_session", "resolve_token",
           "upload_release", "verify_release", "repo_url", "batches", "endpoint_name"]
