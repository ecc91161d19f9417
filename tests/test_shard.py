"""Shard stage (stages/shard.py), seek index (schemas/seek_index.py) and conversation record
(schemas/record.py), on clips of the real narration video with real recogniser words.

The stage runs as the executor runs it: ``process_batch`` per part, the part file written
with ``Storage.write_table``, then ``finalize``. Every format claim is checked against an
independent reader: webdataset's own sequential tar reader, tarfile, hashlib, PyAV.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile

import av
import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

import schemas
from pipeline.stage import StageContext
from pipeline.storage import Storage, part_name
from schemas.record import conversation, jsonl_conversation, sample_json
from schemas.seek_index import SEEK_INDEX, SeekIndex, read_jsonl_with_seeks
from stages.shard import (MediaCutError, Shard, ShardConfig, cut_clip, plan_shards, tar_file_size,
                          tar_members, tar_sample_bytes)
from tests.conftest import fixture_path

VIDEO = ("video", "videogrep_manifesto_narration.mp4")       # 88.1 s, H.264 GOP 10 s + AAC
WORDS = ("captions", "videogrep_manifesto_vosk_words.json")  # independent recogniser's word times
TITLE = "The Videogrep manifesto — lecture « für alle » 映像"   # non-ASCII: byte seeks != char seeks
WINDOWS = [(1.5, 31.7), (33.3, 58.9), (60.2, 87.4)]          # clip ranges (s); none start on a keyframe


def real_words() -> list[dict]:
    data = json.loads(fixture_path(*WORDS).read_text())
    return [{"start": w["start"], "end": w["end"], "text": w["word"]} for seg in data for w in seg["words"]]


def make_clip(video_id: str, start: float, end: float, media_path: str | None, words: list[dict],
              **extra) -> dict:
    inside = [dict(w) for w in words if start <= w["start"] and w["end"] <= end]
    before = " ".join(w["text"] for w in words if w["end"] <= start)
    if inside:   # a non-ASCII word in every text stream
        inside[0]["text"] = "naïve—" + inside[0]["text"]
    row = {
        "clip_id": schemas.clip_id(video_id, start, end), "video_id": video_id, "start": start, "end": end,
        "words": inside, "previous": before, "title": TITLE, "category": "Éducation",
        "transcript_source": "cc", "url": f"https://www.youtube.com/watch?v={video_id}",
        "media_path": media_path, "media_offset": 0.0 if media_path else None, "has_audio": True,
        "wps": len(inside) / (end - start), "lm_loss": None, "query": None,
    }
    row.update(extra)
    return row


def good_clips(media: str, words: list[dict]) -> list[dict]:
    return [make_clip("manifesto", s, e, media, words) for s, e in WINDOWS]


def run_part(root, rows, part=0, corpus="c", **config):
    """process_batch (the whole part) + the part file the executor would write; returns (stage, results)."""
    storage = Storage(str(root))
    stage = Shard(ShardConfig(**config), StageContext(storage=storage, corpus=corpus, stage_dir=f"{corpus}/shard", part=part))
    results = stage.process_batch(rows)
    ok = [r for res in results if not isinstance(res, BaseException) for r in res]
    storage.write_table(f"{corpus}/shard/{part_name(part)}", schemas.rows_to_table(ok, SEEK_INDEX))
    return stage, results


def finalize(root, part_ids, corpus="c", **config):
    storage = Storage(str(root))
    stage = Shard(ShardConfig(**config), StageContext(storage=storage, corpus=corpus, stage_dir=f"{corpus}/shard"))
    return stage.finalize(part_ids)


def sequential_samples(shard_paths) -> list[dict]:
    """Samples read front to back by webdataset's own tar reader (no seek index)."""
    ds = wds.WebDataset([str(p) for p in shard_paths], shardshuffle=False, empty_check=False)
    return [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in ds]


# -- a built shard set, shared by the read-side tests --------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    media = str(fixture_path(*VIDEO))
    words = real_words()
    truncated = root / "media" / "truncated.mp4"
    truncated.parent.mkdir()
    truncated.write_bytes(fixture_path(*VIDEO).read_bytes()[:200_000])   # a download cut short
    rows = good_clips(media, words)
    rows.insert(1, make_clip("missing", 40.0, 75.0, str(root / "media" / "missing.mp4"), words))
    rows.append(make_clip("truncated", 2.0, 40.0, str(truncated), words))
    rows.append(make_clip("manifesto", 50.0, 120.0, media, words))     # runs 32 s past the media end
    rows.append(make_clip("captiononly", 5.0, 40.0, None, words))       # no media: json member only
    _, results = run_part(root, rows, part=0)
    summary = finalize(root, [0])
    return {"root": root, "rows": rows, "results": results, "summary": summary,
            "shard_dir": root / "c" / "shards"}


def test_bad_media_becomes_an_item_error_and_the_rest_is_written(built):
    by_id = {r["clip_id"]: res for r, res in zip(built["rows"], built["results"])}
    assert isinstance(by_id["missing_40000_75000"], FileNotFoundError)
    assert "missing.mp4" in str(by_id["missing_40000_75000"])
    assert isinstance(by_id["truncated_2000_40000"], MediaCutError)
    assert isinstance(by_id["manifesto_50000_120000"], MediaCutError)
    assert "past the media end" in str(by_id["manifesto_50000_120000"])
    good = [r["clip_id"] for r, res in zip(built["rows"], built["results"]) if not isinstance(res, BaseException)]
    assert good == [schemas.clip_id("manifesto", s, e) for s, e in WINDOWS] + ["captiononly_5000_40000"]
    members = {r["clip_id"]: sorted(m["member"] for m in res)
               for r, res in zip(built["rows"], built["results"]) if not isinstance(res, BaseException)}
    assert members["captiononly_5000_40000"] == ["json"]
    assert all(members[k] == ["json", "mp4"] for k in good[:3])
    assert built["summary"]["samples"] == 4 and built["summary"]["members"] == 7


def test_seek_index_reads_are_byte_identical_to_a_sequential_tar_read(built):
    shard_dir = built["shard_dir"]
    index = SeekIndex.open(str(shard_dir))
    shards = sorted(shard_dir.glob("c-*.tar"))
    seq = sequential_samples(shards)
    assert index.keys() == [s["__key__"] for s in seq]
    assert len(index) == len(seq) == 4
    for i, s in enumerate(seq):
        got = index.read(i)
        assert got == {k: v for k, v in s.items() if k != "__key__"}
        assert index.read(s["__key__"]) == got
        for member, data in got.items():
            assert index.read_member(s["__key__"], member) == data
        assert index.sample_json(i)["clip_id"] == s["__key__"]
    # offsets are data offsets: the 512 bytes before each are the member's own ustar header
    table = built["root"] / "c" / "shards" / "seek_index.parquet"
    for row in pq.read_table(table).to_pylist():
        raw = (shard_dir / row["shard"]).read_bytes()
        header = raw[row["offset"] - 512:row["offset"]]
        assert header[:100].rstrip(b"\0").decode() == f"{row['key']}.{row['member']}"
        assert int(header[124:136].rstrip(b"\0 ").decode(), 8) == row["size"]
    with pytest.raises(KeyError):
        index.read("nope_0_1")
    with pytest.raises(IndexError):
        index.read(len(index))
    with pytest.raises(KeyError):
        index.read_member("captiononly_5000_40000", "mp4")


def test_seek_index_reads_over_an_fsspec_url(built):
    """The same shard folder behind a non-local fsspec filesystem (memory://)."""
    fs = fsspec.filesystem("memory")
    for p in built["shard_dir"].iterdir():
        fs.pipe_file(f"/shardtest/{p.name}", p.read_bytes())
    remote = SeekIndex.open("memory://shardtest")
    local = SeekIndex.open(str(built["shard_dir"]))
    assert remote.keys() == local.keys()
    assert all(remote.read(k) == local.read(k) for k in local.keys())
    seeks, open_line = read_jsonl_with_seeks("memory://shardtest/c_with_seeks.jsonl")
    assert len(seeks) == 4 and open_line(3) == local.sample_json(3)["conversation"]
    fs.rm("/shardtest", recursive=True)


def test_sample_json_and_conversation_record(built):
    index = SeekIndex.open(str(built["shard_dir"]))
    rows = {r["clip_id"]: r for r in built["rows"]}
    for key in index.keys():
        rec = index.sample_json(key)
        clip = rows[key]
        user, assistant = rec["conversation"]
        video, text = user["content"]
        # never a path of the build machine: the sample's own member file, else the URL
        expected_ref = f"{key}.mp4" if clip["media_path"] else clip["url"]
        assert video == {"type": "video", "video": expected_ref, "video_start": clip["start"], "video_end": clip["end"]}
        assert text == {"type": "text", "text": "", "previous": clip["previous"], "title": TITLE, "category": "Éducation"}
        stream = assistant["content"][0]["text_stream"]
        assert stream == [[w["start"], w["end"], w["text"]] for w in clip["words"]] and stream
        assert set(rec["metadata"]) == set(clip) - {"clip_id", "words", "media_path"}
        assert str(built["root"]) not in json.dumps(rec) and "videogrep_manifesto" not in json.dumps(rec)
        assert rec["media"]["member"] == (None if clip["media_path"] is None else "mp4")
        # member time 0 is the first frame at or after the clip start: at most one frame (25 fps) later
        assert clip["start"] <= rec["media"]["start"] < clip["start"] + 0.04 + 1e-9


def test_jsonl_seeks_are_byte_offsets_of_each_line(built):
    path = built["shard_dir"] / "c_with_seeks.jsonl"
    data = path.read_bytes()
    seeks = json.loads(data[data.rindex(b"\n") + 1:])
    index = SeekIndex.open(str(built["shard_dir"]))
    assert len(seeks) == len(index)
    body = data[:data.rindex(b"\n") + 1]
    line_starts = [0] + [i + 1 for i, b in enumerate(body) if b == 0x0A][:-1]
    assert seeks == line_starts
    for i, seek in enumerate(seeks):
        line = body[seek:body.index(b"\n", seek)]
        assert json.loads(line) == jsonl_conversation(index.sample_json(i))
    # the non-ASCII text makes character offsets (the reference's) differ from byte offsets
    text = body.decode("utf-8")
    char_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"][:-1]
    assert char_starts != seeks
    got_seeks, open_line = read_jsonl_with_seeks(str(path))
    assert got_seeks == seeks
    assert [open_line(i) for i in range(len(seeks))] == [jsonl_conversation(index.sample_json(i)) for i in range(len(seeks))]


def test_shardlist_has_true_sizes_and_sha256(built):
    shard_dir = built["shard_dir"]
    listing = json.loads((shard_dir / "shardlist.json").read_text())
    assert listing["__kind__"] == "wids-shard-index-v1" and listing["wids_version"] == 1 and listing["name"] == "c"
    files = sorted(p.name for p in shard_dir.glob("*.tar"))
    assert [s["url"] for s in listing["shardlist"]] == files
    for s in listing["shardlist"]:
        raw = (shard_dir / s["url"]).read_bytes()
        assert s["filesize"] == len(raw)
        assert s["sha256"] == hashlib.sha256(raw).hexdigest()
        assert s["nsamples"] == len(sequential_samples([shard_dir / s["url"]]))
    assert built["summary"]["bytes"] == sum(s["filesize"] for s in listing["shardlist"])
    # nothing but the release artefacts in the shard folder, no scratch files left behind
    assert sorted(p.name for p in shard_dir.iterdir()) == sorted(
        files + ["seek_index.parquet", "shardlist.json", "c_with_seeks.jsonl"])
    assert not list((built["root"] / "c" / "shard" / "_tmp").iterdir())


def _audio(container, t0: float, t1: float) -> tuple[np.ndarray, int]:
    """First-channel samples of media time [t0, t1) (s) of a container's first audio stream."""
    stream = container.streams.audio[0]
    container.seek(max(0, int((t0 - 1.0) / stream.time_base)), stream=stream)
    chunks, first = [], None
    for frame in container.decode(stream):
        if frame.time + frame.samples / frame.sample_rate <= t0:
            continue
        if first is None:
            first = frame.time
        chunks.append(frame.to_ndarray()[0] if frame.format.is_planar else frame.to_ndarray()[0, ::len(frame.layout.channels)])
        if frame.time > t1:
            break
    rate = stream.codec_context.sample_rate
    a = np.concatenate(chunks).astype(np.float64)
    lo = int(round((t0 - first) * rate))
    return a[max(lo, 0):lo + int(round((t1 - t0) * rate))], rate


def best_lag(seg: np.ndarray, src: np.ndarray) -> int:
    """Sample offset k maximising the normalised correlation of seg with src[k:k+len(seg)] (FFT)."""
    n = len(src) + len(seg)
    corr = np.fft.irfft(np.fft.rfft(src, n) * np.conj(np.fft.rfft(seg, n)), n)[:len(src) - len(seg) + 1]
    energy = np.cumsum(np.concatenate([[0.0], src ** 2]))
    norms = np.sqrt(energy[len(seg):] - energy[:len(src) - len(seg) + 1]) + 1e-9
    return int(np.argmax(corr / norms))


def test_mp4_member_is_the_clip_with_time_zero_at_clip_start(built):
    index = SeekIndex.open(str(built["shard_dir"]))
    media = str(fixture_path(*VIDEO))
    for n, (start, end) in enumerate(WINDOWS):
        key = schemas.clip_id("manifesto", start, end)
        mp4 = index.read_member(key, "mp4")
        # video time 0 is the first frame at or after the clip start (25 fps: within 40 ms)
        assert start <= index.sample_json(key)["media"]["start"] < start + 0.04
        with av.open(io.BytesIO(mp4)) as c:
            assert abs(c.duration / 1e6 - (end - start)) < 1.0
            assert abs(c.streams.audio[0].duration * c.streams.audio[0].time_base - (end - start)) < 0.1
            # decoding starts at the clip start, not at the keyframe up to 10 s earlier
            frames = c.decode(video=0)
            assert abs(next(frames).time) < 0.05
            if n == 1:   # one clip decoded in full: as many frames as the clip lasts at 25 fps
                times = [f.time for f in frames]
                assert abs(times[-1] - (end - start)) < 0.5 and abs(len(times) + 1 - (end - start) * 25) <= 4
        # the speech at member time 0..4 s is the source's at media time start..start+4 s:
        # find the lag of the best match within +-1 s
        with av.open(io.BytesIO(mp4)) as c:
            seg, rate = _audio(c, 0.0, 4.0)
        with av.open(media) as c:
            src, _ = _audio(c, start - 1.0, start + 5.0)
        lag_s = best_lag(seg, src) / rate - 1.0
        assert abs(lag_s) < 0.03, f"member time 0 is media time {start + lag_s:.3f}, expected {start}"


def test_cut_clip_range_errors():
    media = str(fixture_path(*VIDEO))
    with pytest.raises(MediaCutError, match="outside the media"):
        cut_clip(media, 95.0, 130.0)
    with pytest.raises(MediaCutError, match="outside the media"):
        cut_clip(media, -5.0, 20.0)
    with pytest.raises(MediaCutError, match="empty range"):
        cut_clip(media, 20.0, 20.0)
    # a caption overshooting the media end by less than the tolerance is clamped, not refused
    with av.open(io.BytesIO(cut_clip(media, 80.0, 88.6))) as c:
        assert abs(c.duration / 1e6 - 8.1) < 0.3


def test_shards_are_limited_by_sample_count(tmp_path):
    words = real_words()
    rows = [make_clip("manifesto", s, s + 5.0, None, words) for s in range(0, 80, 5)]   # 16 json-only samples
    run_part(tmp_path, rows, max_samples_per_shard=5)
    summary = finalize(tmp_path, [0], max_samples_per_shard=5)
    shard_dir = tmp_path / "c" / "shards"
    shards = sorted(shard_dir.glob("*.tar"))
    assert [p.name for p in shards] == [f"c-00000-{n:03d}.tar" for n in range(4)]
    assert [len(sequential_samples([p])) for p in shards] == [5, 5, 5, 1]
    assert summary["shards"] == 4 and summary["samples"] == 16


def test_shards_are_limited_by_bytes(tmp_path):
    media = str(fixture_path(*VIDEO))
    words = real_words()
    rows = [make_clip("manifesto", s, e, media, words) for s, e in WINDOWS + [(10.0, 45.0), (45.5, 80.0)]]
    limit = 700_000   # mp4 members here are 0.25-0.35 MB: one or two samples per shard
    run_part(tmp_path, rows, max_bytes_per_shard=limit)
    finalize(tmp_path, [0], max_bytes_per_shard=limit)
    shard_dir = tmp_path / "c" / "shards"
    shards = sorted(shard_dir.glob("*.tar"))
    assert len(shards) >= 3
    sizes = [p.stat().st_size for p in shards]
    assert all(s <= limit for s in sizes)
    samples = [sequential_samples([p]) for p in shards]
    assert sum(len(s) for s in samples) == len(rows)
    # each shard is as full as the limit allows: its next sample would not have fitted
    for n in range(len(shards) - 1):
        nxt = samples[n + 1][0]
        content = sum(tar_sample_bytes(s["__key__"], {k: v for k, v in s.items() if k != "__key__"})
                      for s in samples[n])
        assert tar_file_size(content) == sizes[n]          # the planner's size model is exact
        extra = tar_sample_bytes(nxt["__key__"], {k: v for k, v in nxt.items() if k != "__key__"})
        assert tar_file_size(content + extra) > limit


def test_rerun_replaces_the_parts_shards_and_is_reproducible(tmp_path):
    words = real_words()
    rows = [make_clip("manifesto", s, s + 5.0, None, words) for s in range(0, 40, 5)]   # 8 samples
    other = [make_clip("other", 1.0, 9.0, None, words)]
    run_part(tmp_path, other, part=1)
    run_part(tmp_path, rows, part=0, max_samples_per_shard=2)
    shard_dir = tmp_path / "c" / "shards"
    assert sorted(p.name for p in shard_dir.glob("*.tar")) == [
        "c-00000-000.tar", "c-00000-001.tar", "c-00000-002.tar", "c-00000-003.tar", "c-00001-000.tar"]
    other_bytes = (shard_dir / "c-00001-000.tar").read_bytes()
    run_part(tmp_path, rows, part=0)   # default limits: one shard now
    assert sorted(p.name for p in shard_dir.glob("*.tar")) == ["c-00000-000.tar", "c-00001-000.tar"]
    assert (shard_dir / "c-00001-000.tar").read_bytes() == other_bytes
    first = (shard_dir / "c-00000-000.tar").read_bytes()
    summary = finalize(tmp_path, [0, 1])
    assert summary == {"samples": 9, "shards": 2, "bytes": len(first) + len(other_bytes),
                       "members": 9, "jsonl_bytes": (shard_dir / "c_with_seeks.jsonl").stat().st_size}
    index = SeekIndex.open(str(shard_dir))
    assert index.keys() == [r["clip_id"] for r in rows + other]   # part order
    run_part(tmp_path, rows, part=0)
    assert (shard_dir / "c-00000-000.tar").read_bytes() == first    # same input, same bytes


def test_finalize_refuses_a_shard_that_changed_after_its_part(tmp_path):
    words = real_words()
    run_part(tmp_path, [make_clip("manifesto", 0.0, 9.0, None, words)])
    shard = tmp_path / "c" / "shards" / "c-00000-000.tar"
    shard.chmod(0o644)
    with open(shard, "ab") as f:
        f.write(b"\0" * 10240)
    with pytest.raises(ValueError, match="stale or missing"):
        finalize(tmp_path, [0])


def test_bad_keys_and_duplicates_are_item_errors(tmp_path):
    words = real_words()
    good = make_clip("manifesto", 0.0, 9.0, None, words)
    dotted = dict(good, clip_id="manifesto.v2_0_9000")
    nan_word = make_clip("nanword", 0.0, 9.0, None, words)
    nan_word["words"][0]["start"] = math.nan
    _, results = run_part(tmp_path, [good, dotted, dict(good), nan_word])
    assert not isinstance(results[0], BaseException)
    assert isinstance(results[1], ValueError) and "sample key" in str(results[1])
    assert isinstance(results[2], ValueError) and "duplicate" in str(results[2])
    assert isinstance(results[3], ValueError) and "finite" in str(results[3])


# -- pure functions -----------------------------------------------------------------------

def test_conversation_record_layout():
    clip = {"clip_id": "v_0_9000", "video_id": "v", "start": 0.5, "end": 9.0,
            "words": [{"start": 0.5, "end": 0.9, "text": "héllo"}, {"start": 1.0, "end": 1.4, "text": "world"}],
            "previous": None, "title": "T", "category": None, "query": "Describe it live.",
            "lm_loss": math.nan, "url": "https://x"}
    assert conversation(clip, "/m/v.mp4") == [
        {"role": "user", "content": [
            {"type": "video", "video": "/m/v.mp4", "video_start": 0.5, "video_end": 9.0},
            {"type": "text", "text": "Describe it live.", "previous": "", "title": "T", "category": ""}]},
        {"role": "assistant", "content": [
            {"type": "text_stream", "text_stream": [[0.5, 0.9, "héllo"], [1.0, 1.4, "world"]]}]}]
    rec = sample_json(clip, "https://x", mp4_member=False)
    assert rec["clip_id"] == "v_0_9000"
    assert rec["metadata"] == {"video_id": "v", "start": 0.5, "end": 9.0, "previous": None, "title": "T",
                               "category": None, "query": "Describe it live.", "lm_loss": None, "url": "https://x"}
    assert rec["media"] == {"member": None, "start": 0.5}
    json.dumps(rec, allow_nan=False)   # strict JSON
    with pytest.raises(ValueError, match="finite"):
        conversation(dict(clip, end=math.inf), "x")


def test_plan_shards_limits():
    assert plan_shards([100] * 7, 3, 10**9) == [[0, 1, 2], [3, 4, 5], [6]]
    # 10240-byte records: 4 samples of 2048 B + 1024 end blocks fit one record exactly
    assert plan_shards([2048] * 9, 100, 10240) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert plan_shards([50_000, 100, 100], 100, 20480) == [[0], [1, 2]]   # oversized sample alone
    assert plan_shards([], 5, 10240) == []


def test_read_jsonl_with_seeks_handles_non_ascii_and_trailing_newline(tmp_path):
    lines = [{"t": "ça"}, {"t": "日本語 text"}, {"t": "plain"}]
    body = b"".join((json.dumps(x, ensure_ascii=False) + "\n").encode() for x in lines)
    seeks = [0]
    for x in lines[:-1]:
        seeks.append(seeks[-1] + len((json.dumps(x, ensure_ascii=False) + "\n").encode()))
    for tail in (b"", b"\n"):
        p = tmp_path / f"a{len(tail)}.jsonl"
        p.write_bytes(body + json.dumps(seeks).encode() + tail)
        got, open_line = read_jsonl_with_seeks(str(p))
        assert got == seeks and [open_line(i) for i in range(3)] == lines
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(body + b"[0, 999999]")
    with pytest.raises(ValueError, match="byte offsets"):
        read_jsonl_with_seeks(str(bad))


def test_tar_members_matches_tarfile_payloads(tmp_path):
    p = tmp_path / "t.tar"
    with open(p, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "a_1_2", "json": b"{}", "mp4": os.urandom(1500)})
        w.write({"__key__": "b_1_2", "json": "{\"x\": \"é\"}".encode()})
    raw = p.read_bytes()
    with tarfile.open(p) as tf:
        expected = {ti.name: tf.extractfile(ti).read() for ti in tf}
    got = {f"{m['key']}.{m['member']}": raw[m["offset"]:m["offset"] + m["size"]] for m in tar_members(str(p))}
    assert got == expected


def test_a_part_with_no_good_clip_leaves_an_empty_but_valid_shard_set(tmp_path):
    words = real_words()
    _, results = run_part(tmp_path, [make_clip("gone", 0.0, 9.0, str(tmp_path / "gone.mp4"), words)])
    assert isinstance(results[0], FileNotFoundError)
    summary = finalize(tmp_path, [0])
    assert summary == {"samples": 0, "shards": 0, "bytes": 0, "members": 0, "jsonl_bytes": 2}
    shard_dir = tmp_path / "c" / "shards"
    assert not list(shard_dir.glob("*.tar"))
    assert len(SeekIndex.open(str(shard_dir))) == 0
    assert read_jsonl_with_seeks(str(shard_dir / "c_with_seeks.jsonl"))[0] == []
    assert json.loads((shard_dir / "shardlist.json").read_text())["shardlist"] == []
