"""train/: video decoding, the streaming interleave, labels, mixing and broken samples, on shards
built from the real narration video and an independent recogniser's word times.

Expected values are computed independently in the tests (PyAV frame listing, numpy search,
the image processor of transformers), never copied from the code under test.
"""
from __future__ import annotations

import io
import json
import logging
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from schemas.seek_index import SeekIndex
from tests.conftest import fixture_path
from tests.train_shards import VIDEO, corpus_texts, extract_media, manifesto_shards
from train.collator import StreamProcessor, assistant_spans, patchify_video
from train.dataset import BrokenSampleMonitor, MixSampler, SourceSpec, StreamingDataset
from train.interleave import plain_conversation, query_text, stream_windows
from train.tiny import tiny_processor
from train.video import VideoBudget, decode_video, smart_resize, strict_fps_indices

#: A small visual budget keeps CPU time low: 320x180 frames become 84x168 (18 tokens per 2 frames).
SMALL = VideoBudget(min_pixels=16 * 28 * 28, total_pixels=16 * 28 * 28 * 30)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return manifesto_shards(tmp_path_factory.mktemp("root"))


@pytest.fixture(scope="module")
def processor() -> StreamProcessor:
    return tiny_processor(corpus_texts())


@pytest.fixture(scope="module")
def dataset(shards, processor):
    return StreamingDataset([SourceSpec(str(shards))], processor, budget=SMALL, with_context=True)


# -- video ------------------------------------------------------------------------------

def test_qwen2vl_resize_rule_properties():
    for (h, w, lo, hi) in [(180, 320, 100 * 784, 768 * 784), (1080, 1920, 100 * 784, 768 * 784),
                           (2000, 30, 4 * 784, 100 * 784), (17, 17, 4 * 784, 16 * 784)]:
        rh, rw = smart_resize(h, w, min_pixels=lo, max_pixels=hi)
        assert rh % 28 == 0 and rw % 28 == 0
        assert lo <= rh * rw <= hi
        assert abs(math.log((rh / rw) / (h / w))) < 0.35    # aspect kept up to rounding
    with pytest.raises(ValueError):
        smart_resize(10, 3000, min_pixels=784, max_pixels=784 * 100)


def test_visual_budget_from_reference_scripts_and_environment(monkeypatch):
    for var in ("VIDEO_MIN_PIXELS", "FPS_MAX_FRAMES", "VIDEO_MAX_PIXELS"):
        monkeypatch.delenv(var, raising=False)
    budget = VideoBudget.from_env()
    # a 4-minute 1080p clip at 2 FPS: 480 frames; the visual tokens stay within 24k. The per-frame
    # cap is max(24576*784/480*2, 1.05*100*784) pixels; flooring to multiples of 28 may go below it
    h, w = budget.frame_size(1080, 1920, 480)
    per_pair = (h // 28) * (w // 28)
    cap = max(24576 * 784 / 480 * 2, 1.05 * 100 * 784)
    assert 0.8 * cap <= h * w <= cap and 240 * per_pair <= 24576
    # a short clip is capped per frame (768*28*28), not by the total
    h, w = budget.frame_size(1080, 1920, 12)
    assert h * w <= 768 * 784
    monkeypatch.setenv("VIDEO_MIN_PIXELS", str(4 * 784))
    monkeypatch.setenv("FPS_MAX_FRAMES", "64")
    monkeypatch.setenv("VIDEO_MAX_PIXELS", str(1000 * 784))
    env = VideoBudget.from_env(min_pixels=999, max_frames=7)      # environment wins over config
    assert (env.min_pixels, env.max_frames, env.total_pixels) == (4 * 784, 64, 1000 * 784)


def test_strict_2fps_sampling_is_exact_pads_to_even_and_repeats_over_gaps():
    tb = Fraction(1, 15360)
    pts = [i * 512 for i in range(90)]                       # 30 fps, 3 s
    idx = strict_fps_indices(pts, 2.0, 480, time_base=tb)
    # wanted times 0, 0.5, ..., 2.5 s; frame i is at i/30 s, so frame 15*k exactly (no float drift)
    assert idx == [15 * k for k in range(6)]
    gappy = pts[:10] + pts[40:]                               # frames 10..39 missing (a 1 s hole)
    idx = strict_fps_indices(gappy, 2.0, 480, time_base=tb)
    times = [gappy[i] * tb for i in idx]
    assert times[:4] == [0, Fraction(40, 30), Fraction(40, 30), Fraction(45, 30)]   # 0.5 and 1.0 s map to 1.33 s
    odd = strict_fps_indices(pts[:31], 2.0, 480, time_base=tb)  # 0, .5, 1 s -> 3 frames, padded
    assert odd == [0, 15, 30, 30]
    assert len(strict_fps_indices(pts, 2.0, 4, time_base=tb)) == 4


def test_decode_real_video_in_range_at_2fps():
    path = fixture_path(*VIDEO)
    clip = decode_video(str(path), start_s=20.1, end_s=27.3, budget=SMALL)
    # independent: every frame timestamp of the file from PyAV's decoder
    with av.open(str(path)) as c:
        times = np.array([float(f.pts * f.time_base) for f in c.decode(video=0)])
    inside = times[(times >= 20.1) & (times <= 27.3)]
    wanted = np.arange(inside[0], inside[-1] + 1e-9, 0.5)
    expect = [inside[np.searchsorted(inside, t - 1e-9)] for t in wanted]
    expect += expect[-1:] * (len(expect) % 2)
    assert clip.pts_s == pytest.approx(expect, abs=1e-9)
    assert clip.frames.shape[0] == len(expect) and clip.frames.dtype == np.uint8
    assert clip.frames.shape[1:3] == SMALL.frame_size(180, 320, len(expect))
    assert clip.frames.std() > 1     # real pixels, not an empty buffer
    with pytest.raises(FileNotFoundError):
        decode_video(str(path) + ".missing", start_s=0, end_s=5, budget=SMALL)
    with pytest.raises(ValueError, match="no video frames"):
        decode_video(str(path), start_s=200, end_s=210, budget=SMALL)


# -- interleave -------------------------------------------------------------------------

def _independent_windows(sample: dict[str, bytes]) -> tuple[list[float], list[list[str]]]:
    """The rule of docs/recipes.md#training, computed from the mp4 member with plain PyAV + numpy."""
    meta = json.loads(sample["json"])
    video, query = meta["conversation"][0]["content"]
    stream = meta["conversation"][1]["content"][0]["text_stream"]
    with av.open(io.BytesIO(sample["mp4"])) as c:
        # media-clock times to the microsecond (the records' precision): a word ending exactly
        # on a frame is at or before it, as in exact arithmetic
        times = np.round(np.array(sorted(float(f.pts * f.time_base) for f in c.decode(video=0))) + meta["media"]["start"], 6)
    times = times[(times >= video["video_start"] - 1e-6) & (times <= video["video_end"] + 1e-6)]
    grid = np.arange(times[0], times[-1] + 1e-9, 0.5)
    frames = [float(times[np.searchsorted(times, t - 1e-9)]) for t in grid]
    frames += frames[-1:] * (len(frames) % 2)
    window_ends = [frames[5]] + [frames[i + 1] for i in range(6, len(frames), 2)]
    ends = [w[1] for w in stream]
    assert ends == sorted(ends)    # the rule below relies on word ends being in order
    words, previous = [], -math.inf
    for end in window_ends:
        words.append([w[2] for w in stream if previous < w[1] <= end])
        previous = end
    while not words[-1]:
        words.pop()
    return frames, words


@pytest.mark.parametrize("i", [0, 1])
def test_interleave_of_a_real_clip_matches_an_independent_computation(shards, dataset, i):
    sample = SeekIndex.open(str(shards)).read(i)
    frames, words = _independent_windows(sample)
    prepared = dataset.prepare(i)
    assert prepared.frame_pts_s[: len(frames)] == pytest.approx(frames, abs=1e-6)
    assert [list(w.words) for w in prepared.windows] == words
    users = [m for m in prepared.messages if m["role"] == "user"]
    assistants = [m for m in prepared.messages if m["role"] == "assistant"]
    assert len(users) == len(assistants) == len(words) > 5
    assert users[0]["content"][0]["text"] == "Time=0.0-3.0s"
    assert [u["content"][0]["text"] for u in users[1:3]] == ["Time=3.0-4.0s", "Time=4.0-5.0s"]
    assert [a["content"][0]["text"] for a in assistants] == [" ".join(w) + " ..." for w in words]
    assert [len(v) for v in prepared.videos] == [6] + [2] * (len(words) - 1)
    # with_context: the query is followed by the transcript before the clip
    meta = json.loads(sample["json"])
    element = meta["conversation"][0]["content"][1]
    assert users[0]["content"][2]["text"] == f"{element['text']}\n\n{element['previous']}".strip()
    assert element["previous"] and all(len(u["content"]) == 2 for u in users[1:])


def test_trailing_windows_without_words_are_dropped_and_context_falls_back_to_title():
    frames = [10.0 + 0.5 * k for k in range(20)]            # 10.0 .. 19.5 s
    stream = [[10.1, 10.4, "a"], [11.0, 12.6, "b"], [15.2, 15.4, "c"]]
    windows = stream_windows(stream, frames)
    # windows end at frames 12.5, 13.5, 14.5, 15.5, ... s; the seven after "c" have no words
    assert [w.words for w in windows] == [("a",), ("b",), (), ("c",)]
    assert windows[-1].label == "Time=5.0-6.0s" and windows[2].text == " ..."
    with pytest.raises(ValueError):
        stream_windows([[30.0, 31.0, "late"]], frames)
    assert query_text({"text": "Q", "title": "T", "previous": ""}, True) == "Q\nT"
    assert query_text({"text": "Q", "title": "T", "previous": ""}, False) == "Q"
    record = [{"role": "user", "content": [{"type": "text", "text": "hi", "title": "T"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]
    messages, media = plain_conversation(record, with_context=True)
    assert media == [] and messages[0]["content"][0]["text"] == "hi\nT"
    assert messages[1] == record[1]


# -- labels and patches -----------------------------------------------------------------

def test_labels_are_exactly_the_assistant_texts_and_end_tokens(dataset, processor):
    prepared = dataset.prepare(0)
    encoded = dataset[0]
    ids, labels = encoded["input_ids"], encoded["labels"]
    mask = labels != -100
    assert torch.equal(labels[mask], ids[mask])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.numpy().astype(int), [0]])))
    runs = list(zip(edges[::2], edges[1::2]))
    decoded = [processor.tokenizer.decode(ids[a:b]) for a, b in runs]
    assert decoded == [w.text + "<|im_end|>" for w in prepared.windows]
    # nothing of the user side is labelled: no vision token, no Time= text, no query
    tok = processor.tokenizer
    for special in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>"):
        assert not mask[ids == tok.convert_tokens_to_ids(special)].any()
    text = tok.decode(ids[~mask])
    assert "Time=" in text and "Please narrate" in text and text.count("<|im_end|>") == 1 + len(runs)   # system + user turns
    # every run starts right after an assistant header
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for a, _ in runs:
        assert ids[a - len(header):a].tolist() == header
    # visual tokens: one <|video_pad|> per merged patch of each window's frames
    grid = encoded["video_grid_thw"]
    assert int((ids == tok.convert_tokens_to_ids("<|video_pad|>")).sum()) == int((grid.prod(1) // 4).sum())
    assert grid[:, 0].tolist() == [3] + [1] * (len(grid) - 1)


def test_uint8_patches_normalised_on_device_equal_the_image_processor(dataset, processor):
    frames = dataset.prepare(1).videos[0]
    patches, grid = patchify_video(frames)
    ours = processor.normalize_patches(patches)
    reference = processor.image_processor(images=None, videos=[frames], do_resize=False, return_tensors="pt")
    assert tuple(reference["video_grid_thw"][0].tolist()) == grid
    assert patches.dtype == torch.uint8
    torch.testing.assert_close(ours, reference["pixel_values_videos"], atol=1e-5, rtol=1e-5)


def test_assistant_spans_on_rendered_chat(processor):
    text = processor.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b"},
                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "c"}])
    assert [text[a:b] for a, b in assistant_spans(text)] == ["a b<|im_end|>", "c<|im_end|>"]


# -- sources, mixing, broken samples ----------------------------------------------------

@pytest.fixture(scope="module")
def media_dir(shards, tmp_path_factory):
    return extract_media(shards, tmp_path_factory.mktemp("members"))


def test_shard_and_jsonl_sources_and_weighted_mix(shards, media_dir, processor):
    jsonl = shards / "c_with_seeks.jsonl"
    ds = StreamingDataset([SourceSpec(str(shards)), SourceSpec(f"{jsonl}", media_root=str(media_dir))], processor, budget=SMALL)
    assert len(ds) == 4 and ds.key(2) == "c_with_seeks.jsonl:0"
    # the JSONL line names the extracted member file and is on its clock: the same turns and
    # the same frames as the shard sample read from its member (media clock + media.start)
    for shard_i, line_i in ((0, 2), (1, 3)):
        from_shard, from_line = ds.prepare(shard_i), ds.prepare(line_i)
        assert from_line.messages == from_shard.messages
        assert [v.shape for v in from_line.videos] == [v.shape for v in from_shard.videos]
        assert all(np.array_equal(a, b) for a, b in zip(from_line.videos, from_shard.videos))

    sampler = MixSampler([100, 40, 10], [1.0, 0.5, 2.0], seed=3)
    e0, e1 = sampler.epoch_indices(0), sampler.epoch_indices(1)
    assert len(e0) == len(sampler) == 100 + 20 + 20
    src = np.searchsorted([100, 140, 150], e0, side="right")
    assert np.bincount(src).tolist() == [100, 20, 20]
    assert sorted(np.bincount(e0[src == 2] - 140).tolist()) == [2] * 10       # weight 2: every sample twice
    assert len(set(e0[src == 1].tolist())) == 20                              # weight 0.5: a half, no repeats
    assert not np.array_equal(e0, e1) and set(e0[src == 1]) != set(e1[src == 1])   # re-drawn per epoch
    assert np.array_equal(e0, MixSampler([100, 40, 10], [1.0, 0.5, 2.0], seed=3).epoch_indices(0))
    shares = [MixSampler([100, 40, 10], [1.0, 0.5, 2.0], seed=3, rank=r, world_size=3) for r in range(3)]
    for s in shares:
        s.set_epoch(1)
    got = [list(s) for s in shares]
    wrapped = e1.tolist() + e1[:1].tolist()          # 140 -> 141: wrap to a multiple of 3 ranks
    assert [len(g) for g in got] == [47, 47, 47]
    assert got == [wrapped[r::3] for r in range(3)]
    assert sorted(sum(got, [])) == sorted(wrapped)


def test_broken_samples_are_logged_replaced_deterministically_counted_and_fail_the_run(shards, media_dir, processor, tmp_path, caplog):
    good = json.loads((shards / "c_with_seeks.jsonl").read_text().splitlines()[0])
    missing = json.loads(json.dumps(good))
    missing[0]["content"][0]["video"] = str(tmp_path / "gone.mp4")
    outside = json.loads(json.dumps(good))
    outside[0]["content"][0].update(video_start=500.0, video_end=530.0)
    lines = [json.dumps(x) + "\n" for x in (good, missing, outside)]
    seeks = np.cumsum([0] + [len(line.encode()) for line in lines])[:-1].tolist()
    path = tmp_path / "mix_with_seeks.jsonl"
    path.write_text("".join(lines) + json.dumps(seeks))
    ds = StreamingDataset([SourceSpec(str(path), media_root=str(media_dir))], processor, budget=SMALL, seed=5)
    with caplog.at_level(logging.WARNING, logger="train.dataset"):
        first = ds[1]
    assert first["broken_keys"][0] == "mix_with_seeks.jsonl:1"
    assert "mix_with_seeks.jsonl:1" in caplog.text and "FileNotFoundError" in caplog.text
    assert first["sample_key"] == "mix_with_seeks.jsonl:0"           # the only good one
    again = ds[1]
    assert again["broken_keys"] == first["broken_keys"] and torch.equal(again["input_ids"], first["input_ids"])
    assert ds.broken_count == len(first["broken_keys"]) * 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.dataset"):
        ds[2]
    assert "no video frames" in caplog.text

    monitor = BrokenSampleMonitor(max_rate=0.2, min_samples=5)
    monitor.update(1, ["a"])                       # 50 % but only 2 tried: not yet enforced
    monitor.update(4, [])
    with pytest.raises(RuntimeError, match="broken sample rate"):
        monitor.update(1, ["b", "c"])
    with pytest.raises(RuntimeError, match="broken samples in a row"):
        StreamingDataset([SourceSpec(str(path), media_root=str(media_dir))], processor, budget=SMALL, max_attempts=1).__getitem__(1)


def test_plain_conversations_keep_their_turns_with_uniformly_sampled_video(processor, tmp_path):
    video = fixture_path(*VIDEO)
    record = [  # LLaVA-Video-178K style; its video paths are relative to the dataset's video folder: a question about a video, one answer, a follow-up
        {"role": "user", "content": [{"type": "video", "video": video.name, "video_start": 30.0, "video_end": 40.0},
                                     {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A still book cover."}]},
        {"role": "user", "content": [{"type": "text", "text": "Any people?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
    ]
    line = json.dumps(record) + "\n"
    path = tmp_path / "llava_with_seeks.jsonl"
    path.write_text(line + json.dumps([0]))
    ds = StreamingDataset([SourceSpec(str(path), media_root=str(video.parent))], processor, budget=SMALL)
    prepared = ds.prepare(0)
    assert [m["role"] for m in prepared.messages] == ["user", "assistant", "user", "assistant"]
    assert prepared.windows is None and len(prepared.videos) == 1
    # qwen_vl_utils' count for a 10 s range at 2 FPS: 251 source frames / 25 fps * 2 = 20.08 -> 20 (even)
    assert len(prepared.videos[0]) == 20
    encoded = ds[0]
    mask = encoded["labels"] != -100
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.numpy().astype(int), [0]])))
    runs = [processor.tokenizer.decode(encoded["input_ids"][a:b]) for a, b in zip(edges[::2], edges[1::2])]
    assert runs == ["A still book cover.<|im_end|>", "No.<|im_end|>"]
    h, w = SMALL.frame_size(180, 320, 20)
    assert encoded["video_grid_thw"].tolist() == [[10, h // 14, w // 14]]
