"""The release folder ``<root>/<corpus>/release/`` (docs/recipes.md#release).

Layout (the repo's layout too; every path is relative to the folder)::

    README.md                       the dataset card (release/card.py)
    data/train/<corpus>-PPPPP-NNN.tar   the WebDataset shards: hard links to (or copies of) the
                                    shard stage's files, never rewritten
    seek_index.parquet              the seek index with ``shard`` = ``data/train/<name>.tar``
    shardlist.json                  the wids-style shard list with ``url`` = ``data/train/<name>.tar``
    <corpus>_with_seeks.jsonl       the reference's JSONL (link or copy)
    plots/<stage>_<column>.png      the stage reports' histograms; plots/categories.png

Rules:

* **Refuse** a corpus with pending, stale or failed parts in any stage (from
  :meth:`pipeline.executor.Pipeline.status`), unless ``allow_partial``; then the card says which
  parts are missing. A pending ``finalize`` of the shard stage always refuses: its seek index and
  shard list would not describe the shards on disk.
* **Never rewrite a shard.** A shard is hard-linked (same file system) or copied, and its size
  must equal the shard list's ``filesize``; the upload takes its sha256 from the shard list
  (computed while the shard was written) instead of hashing it again.
* **No build-machine path.** Every released file except the media members is scanned for the
  corpus root, the config file's folder, the media folders and any absolute path in a stage
  config (plus ``release.forbidden_strings``); shards through their ``json`` members (read
  with the seek index). A hit refuses the release and names the file.
* **Idempotent.** Staging again replaces what changed and removes files of an older release
  that are no longer part of it; a killed staging leaves nothing half-written under a final name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.manifest import BLOCKED, DONE, FAILED, PENDING, STALE, code_version, load_manifest
from pipeline.storage import part_name
from release.config import ReleaseConfig
from schemas.seek_index import INDEX_NAME, SHARDLIST_NAME, SeekIndex, jsonl_name

log = logging.getLogger("livecc.release")

RELEASE_DIR = "release"
DATA_DIR = "data/train"
PLOTS_DIR = "plots"
CARD_NAME = "README.md"


class ReleaseError(RuntimeError):
    """A release that cannot go ahead; the message says why and what to do."""


class IncompleteCorpus(ReleaseError):
    """The corpus has pending, stale or failed parts (``problems``: one line each)."""

    def __init__(self, corpus: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"corpus {corpus!r} is not complete: " + "; ".join(problems)
                         + ". Run `livecc build` until every part is done, or release it with --allow-partial.")


@dataclass
class ReleaseFile:
    """One file of the release: ``path`` relative to the folder (the path in the repo),
    ``local`` its absolute path, ``size_bytes``, and ``sha256`` when known without reading it
    (shards, from the shard list)."""
    path: str
    local: str
    size_bytes: int
    sha256: str | None = None

    @property
    def is_shard(self) -> bool:
        return self.path.startswith(DATA_DIR + "/") and self.path.endswith(".tar")


@dataclass
class StagedRelease:
    """A staged release folder: its files (sorted by path), the card text and the facts behind it."""
    folder: str
    files: list[ReleaseFile]
    card: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def file(self, path: str) -> ReleaseFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


# -- refusing an incomplete corpus ------------------------------------------------------------

def release_problems(pipe) -> tuple[list[str], list[str]]:
    """``(missing, blocking)`` for a release of ``pipe``'s corpus, one line each.

    ``missing``: pending, stale or failed parts per stage (``--allow-partial`` releases without
    them). ``blocking``: what no flag overrides -- no shard stage in the flow, no finished shard
    set, or a shard ``finalize`` that has not run for the done parts.
    """
    missing, blocking = [], []
    shard_stage = _shard_stage(pipe)
    source = pipe.stages[0]
    built, listed = len(pipe.saved_plan(source) or []), len(pipe.plan_source(save=False))
    if listed > built:  # items the source gained since the build: parts the release would lack
        missing.append(f"{source.name}: {listed - built} pending part(s) [{_ranges(list(range(built, listed)))}]")
    for row in pipe.status():
        parts = row["parts"]
        for state in (PENDING, STALE, FAILED, BLOCKED):
            if parts[state]:
                missing.append(f"{row['stage']}: {len(parts[state])} {state} part(s) [{_ranges(parts[state])}]")
        if not row["planned"]:
            missing.append(f"{row['stage']}: not planned yet (run `livecc build CONFIG`)")
        if shard_stage is not None and row["stage"] == shard_stage.name:
            if not parts[DONE]:
                blocking.append(f"{row['stage']}: no part done, nothing to release")
            elif row["finalize"] != DONE:
                blocking.append(f"{row['stage']}: finalize has not run for the done parts (seek index, shard list "
                                f"and JSONL are stale); run `livecc stage run {row['stage']} CONFIG`")
    if shard_stage is None:
        blocking.append(f"flow {pipe.cfg.flow!r} has no stage that writes shards")
    return missing, blocking


def check_releasable(pipe, allow_partial: bool = False) -> list[str]:
    """The missing parts (empty for a complete corpus) when the corpus may be released.

    Raises:
        IncompleteCorpus: parts are missing and ``allow_partial`` is false.
        ReleaseError: something no flag overrides (see :func:`release_problems`).
    """
    missing, blocking = release_problems(pipe)
    if blocking:
        raise ReleaseError(f"corpus {pipe.cfg.corpus!r} cannot be released: " + "; ".join(blocking))
    if missing and not allow_partial:
        raise IncompleteCorpus(pipe.cfg.corpus, missing)
    return missing


# -- staging ---------------------------------------------------------------------------------

def release_folder(pipe) -> str:
    """Absolute path of ``<root>/<corpus>/release``.

    Raises:
        ReleaseError: the corpus root is not a local folder (the upload reads local files).
    """
    if not pipe.storage.local:
        raise ReleaseError(f"the release is staged next to the corpus and uploaded from there, which needs a local "
                           f"root; {pipe.cfg.root} is not local (copy the corpus to a local disk first)")
    return pipe.storage.full(f"{pipe.cfg.corpus}/{RELEASE_DIR}")


def stage_release(pipe, rcfg: ReleaseConfig, *, allow_partial: bool = False, repo_id: str | None = None,
                  endpoint: str | None = None, revision: str | None = None) -> StagedRelease:
    """Check the corpus, then stage (or refresh) its release folder and write the card.

    ``repo_id``/``endpoint``/``revision`` only fill the loading examples of the card.

    Raises:
        IncompleteCorpus / ReleaseError: as :func:`check_releasable`; a shard whose size differs
            from the shard list (changed after the shard stage finished: re-run it); a build
            path found in a released file.
    """
    from release.card import category_plot, render_card

    missing = check_releasable(pipe, allow_partial)
    folder = release_folder(pipe)
    shard_stage = _shard_stage(pipe)
    shard_dir = pipe.storage.full(_shard_output(pipe, shard_stage).path)
    corpus = pipe.cfg.corpus
    listing = json.loads(_read(os.path.join(shard_dir, SHARDLIST_NAME)))
    os.makedirs(os.path.join(folder, DATA_DIR), exist_ok=True)
    os.makedirs(os.path.join(folder, PLOTS_DIR), exist_ok=True)
    files: dict[str, ReleaseFile] = {}

    for s in listing["shardlist"]:
        rel = f"{DATA_DIR}/{s['url']}"
        dst = os.path.join(folder, rel)
        _link_or_copy(os.path.join(shard_dir, s["url"]), dst)
        size = os.path.getsize(dst)
        if size != s["filesize"]:
            raise ReleaseError(f"shard {s['url']} is {size} bytes but the shard list says {s['filesize']}: it changed "
                               f"after the shard stage finished; run `livecc stage run {shard_stage.name} CONFIG --force`")
        files[rel] = ReleaseFile(rel, dst, size, s["sha256"])

    index = pq.read_table(os.path.join(shard_dir, INDEX_NAME))
    moved = pc.binary_join_element_wise(pa.scalar(DATA_DIR + "/"), index.column("shard"), "")
    index = index.set_column(index.schema.get_field_index("shard"), index.schema.field("shard"), moved)
    _write_atomic(os.path.join(folder, INDEX_NAME), _parquet_bytes(index))
    shardlist = {**listing, "shardlist": [{**s, "url": f"{DATA_DIR}/{s['url']}"} for s in listing["shardlist"]]}
    _write_atomic(os.path.join(folder, SHARDLIST_NAME), json.dumps(shardlist, indent=1, ensure_ascii=False).encode())
    jsonl = jsonl_name(corpus)
    _link_or_copy(os.path.join(shard_dir, jsonl), os.path.join(folder, jsonl))

    facts = corpus_facts(pipe, shard_stage, index, listing, missing)
    plots = []
    for stage_name, col, src in facts.pop("_histograms"):
        rel = f"{PLOTS_DIR}/{stage_name}_{col}.png"
        _write_atomic(os.path.join(folder, rel), _read(src))
        plots.append({"stage": stage_name, "column": col, "path": rel})
    if facts["categories"]:
        rel = f"{PLOTS_DIR}/categories.png"
        _write_atomic(os.path.join(folder, rel), category_plot(facts["categories"]))
        plots.append({"stage": None, "column": "category", "path": rel})
    facts["plots"] = plots
    facts["files"] = {"shards": len(listing["shardlist"]), "shard_bytes": sum(s["filesize"] for s in listing["shardlist"])}
    card = render_card(facts, rcfg, repo_id=repo_id, endpoint=endpoint, revision=revision)
    _write_atomic(os.path.join(folder, CARD_NAME), card.encode("utf-8"))

    for rel in [INDEX_NAME, SHARDLIST_NAME, jsonl, CARD_NAME] + [p["path"] for p in plots]:
        files[rel] = ReleaseFile(rel, os.path.join(folder, rel), os.path.getsize(os.path.join(folder, rel)))
    _remove_others(folder, set(files))
    staged = StagedRelease(folder, [files[k] for k in sorted(files)], card, facts)
    check_no_build_paths(staged, forbidden_strings(pipe, rcfg, facts.pop("_media_dirs")))
    log.info("staged %d files (%s) in %s", len(staged.files), human_bytes(staged.size_bytes), folder)
    return staged


def load_staged(folder: str) -> StagedRelease:
    """The files of an already staged folder (shard sha256 from its shard list), for the upload
    and the verification, which run as separate steps.

    Raises:
        ReleaseError: no staged release in ``folder``.
    """
    if not os.path.exists(os.path.join(folder, CARD_NAME)) or not os.path.exists(os.path.join(folder, SHARDLIST_NAME)):
        raise ReleaseError(f"{folder} holds no staged release (README.md and shardlist.json missing)")
    known = {s["url"]: s["sha256"] for s in json.loads(_read(os.path.join(folder, SHARDLIST_NAME)))["shardlist"]}
    files = []
    for dirpath, dirnames, names in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or ".tmp-" in name:
                continue
            local = os.path.join(dirpath, name)
            rel = os.path.relpath(local, folder).replace(os.sep, "/")
            files.append(ReleaseFile(rel, local, os.path.getsize(local), known.get(rel)))
    card = _read(os.path.join(folder, CARD_NAME)).decode("utf-8")
    return StagedRelease(folder, sorted(files, key=lambda f: f.path), card)


# -- facts for the card ---------------------------------------------------------------------

def corpus_facts(pipe, shard_stage, index: pa.Table, listing: dict, missing: list[str]) -> dict[str, Any]:
    """What the card states, from the manifests, the stage reports and the shard stage's input:
    per stage its settings and counts; totals (videos, clips, hours, words); categories;
    provenance (config hash, code versions, build dates)."""
    from pipeline.report import build_report
    from release.card import public_config

    stages, histograms, versions, finished = [], [], set(), []
    for s in pipe.stages:
        report = build_report(pipe, s.name)   # fresh counts and histogram PNGs next to the manifest
        manifest = load_manifest(pipe.storage, pipe.stage_dir(s.name), s.name)
        if manifest.code_version:
            versions.add(manifest.code_version)
        finished += [e.finished_at for e in manifest.parts.values() if e.finished_at and e.status == DONE]
        if manifest.finalize and manifest.finalize.get("finished_at"):
            finished.append(manifest.finalize["finished_at"])
        stages.append({"name": s.name, "doc": first_sentence(s.__doc__ or ""),
                       "config": pipe.configs[s.name].hash_payload(), "counts": report["counts"],
                       "reasons": report["rejection_reasons"], "errors": report["error_types"],
                       "parts_done": report["parts_done"], "parts_total": report["parts_total"]})
        for col in report["histograms"]:
            histograms.append((s.name, col, pipe.storage.full(f"{pipe.stage_dir(s.name)}/{col}_hist.png")))

    keys = set(pc.unique(index.column("key")).to_pylist()) if index.num_rows else set()
    with_mp4 = len(set(index.filter(pc.equal(index.column("member"), "mp4")).column("key").to_pylist())) if index.num_rows else 0
    clips = _shard_inputs(pipe, shard_stage, keys)
    videos = set(clips["video_id"]) if clips else set()
    categories = Counter(c or "" for c in clips.get("category", []))
    categories.pop("", None)
    media_dirs = {os.path.dirname(p) for p in clips.get("media_path", []) if p and "://" not in p}
    stage_paths = set()
    for s in pipe.stages:
        stage_paths |= _local_paths(pipe.configs[s.name].model_dump(mode="json"))
    forbidden_cfg = {pipe.storage.root, *(p for p in stage_paths)}
    if pipe.cfg.path:
        forbidden_cfg.add(os.path.dirname(pipe.cfg.path))
    for st in stages:
        st["config"] = public_config(st["config"], forbidden_cfg)
    return {
        "corpus": pipe.cfg.corpus, "flow": pipe.cfg.flow, "stages": stages, "clip_schema": shard_stage.input_schema,
        "totals": {"samples": len(keys), "samples_with_mp4": with_mp4, "videos": len(videos),
                   "clips": len(keys), "hours": clips.get("seconds", 0.0) / 3600.0, "words": clips.get("words", 0)},
        "categories": dict(categories.most_common()),
        "missing": missing,
        "provenance": {"config_hash": pipe.corpus_hash, "code_versions": sorted(versions),
                       "release_code_version": code_version(),
                       "built_from": min(finished) if finished else None, "built_to": max(finished) if finished else None},
        "jsonl": jsonl_name(pipe.cfg.corpus),
        "_histograms": [h for h in histograms if os.path.exists(h[2])],
        "_media_dirs": media_dirs | stage_paths,
    }


def _shard_inputs(pipe, shard_stage, keys: set[str]) -> dict[str, Any]:
    """Columns of the clips that became samples: read from the shard stage's input parts (the
    stage before it) for the shard stage's done parts."""
    i = pipe.stages.index(shard_stage)
    if i == 0:
        return {}
    up = pipe.stages[i - 1]
    states = pipe.part_states(i)
    out: dict[str, Any] = {"video_id": [], "category": [], "media_path": [], "seconds": 0.0, "words": 0}
    wanted = pa.array(sorted(keys), pa.string())
    for k in sorted(p for p, st in states.items() if st == DONE):
        path = f"{pipe.stage_dir(up.name)}/{part_name(k)}"
        if not pipe.storage.exists(path):
            continue
        t = pipe.storage.read_table(path)
        if "clip_id" not in t.column_names:
            continue
        t = t.filter(pc.is_in(t.column("clip_id"), wanted))
        out["video_id"] += t.column("video_id").to_pylist()
        if "category" in t.column_names:
            out["category"] += t.column("category").to_pylist()
        if "media_path" in t.column_names:
            out["media_path"] += [p for p in t.column("media_path").to_pylist() if p]
        if {"start", "end"} <= set(t.column_names) and t.num_rows:
            out["seconds"] += float(pc.sum(pc.subtract(t.column("end"), t.column("start"))).as_py() or 0.0)
        if "words" in t.column_names and t.num_rows:
            out["words"] += int(pc.sum(pc.list_value_length(t.column("words"))).as_py() or 0)
    return out


# -- no build-machine path in a released file ----------------------------------------------

def forbidden_strings(pipe, rcfg: ReleaseConfig, extra_paths: set[str] | None = None) -> list[str]:
    """Strings no released file may contain: the corpus root, the config file's folder, the
    media folders and absolute paths of the stage configs (``extra_paths``), and
    ``release.forbidden_strings``. Paths shorter than 4 characters (``/``) are left out."""
    found = {pipe.storage.root}
    if pipe.cfg.path:
        found.add(os.path.dirname(pipe.cfg.path))
    found |= set(extra_paths or ())
    found |= {os.path.realpath(p) for p in list(found) if p.startswith("/")}
    found |= set(rcfg.forbidden_strings)
    return sorted(p.rstrip("/") for p in found if len(p.rstrip("/")) >= 4)


def check_no_build_paths(staged: StagedRelease, forbidden: list[str]) -> None:
    """Scan every released file (shards: their ``json`` members, through the seek index) for
    the ``forbidden`` strings.

    Raises:
        ReleaseError: naming each file (and sample) that holds one.
    """
    needles = [p.encode("utf-8") for p in forbidden]
    hits = []
    for f in staged.files:
        if f.is_shard:
            continue
        with open(f.local, "rb") as fh:
            data = fh.read()
        hits += [f"{f.path}: {n.decode()}" for n in needles if n in data]
    if any(f.is_shard for f in staged.files):
        index = SeekIndex.open(staged.folder)
        for i in range(len(index)):
            data = index.read_member(i, "json")
            hits += [f"{index.members(i)[0]['shard']} ({index.members(i)[0]['key']}.json): {n.decode()}"
                     for n in needles if n in data]
    if hits:
        raise ReleaseError("paths of the build machine in released files (rebuild the shards with this version, whose "
                           "records name no local path): " + "; ".join(hits[:20])
                           + (f" ... and {len(hits) - 20} more" if len(hits) > 20 else ""))


# -- helpers ---------------------------------------------------------------------------------

def _shard_stage(pipe):
    for s in pipe.stages:
        if any(o.kind == "shards" for o in pipe.instantiate(s).outputs(None)):
            return s
    return None


def _shard_output(pipe, stage):
    return next(o for o in pipe.instantiate(stage).outputs(None) if o.kind == "shards")


def _local_paths(obj: Any) -> set[str]:
    """Absolute local paths among the string values of a (nested) config dump."""
    if isinstance(obj, dict):
        return set().union(*(_local_paths(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(_local_paths(v) for v in obj)) if obj else set()
    if isinstance(obj, str) and (obj.startswith("/") or obj.startswith("~")):
        return {os.path.expanduser(obj)}
    return set()


def _link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` the same bytes as ``src`` without writing them again when possible: keep
    ``dst`` if it is already ``src`` (hard link), else hard-link, else copy (another file
    system); through a temporary name, so a kill never leaves a partial file under ``dst``."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` unless it already holds exactly that (keeps mtimes of
    unchanged files); through a temporary name."""
    if os.path.exists(path) and os.path.getsize(path) == len(data):
        with open(path, "rb") as f:
            if hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest():
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _remove_others(folder: str, keep: set[str]) -> None:
    """Delete files of an older release (and scratch files) that are not in ``keep``."""
    for dirpath, _, names in os.walk(folder, topdown=False):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
            if rel not in keep:
                os.remove(os.path.join(dirpath, name))
        if dirpath != folder and not os.listdir(dirpath):
            os.rmdir(dirpath)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, with RST ````code```` as Markdown `code`."""
    para = " ".join((doc.strip().split("\n\n") or [""])[0].split())
    cut = para.find(". ")
    return (para if cut < 0 else para[:cut + 1]).replace("``", "`")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _ranges(ids: list[int]) -> str:
    out, start, prev = [], None, None
    for k in sorted(ids) + [None]:
        if k is not None and prev is not None and k == prev + 1:
            prev = k
            continue
        if start is not None:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = k
    return ",".join(out)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["ReleaseError", "IncompleteCorpus", "ReleaseFile", "StagedRelease", "release_problems", "check_releasable",
           "release_folder", "stage_release", "load_staged", "forbidden_strings", "check_no_build_paths", "human_bytes"]
