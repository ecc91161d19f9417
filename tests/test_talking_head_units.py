"""Talking-head stage: pure parts (NMS, IoU, tracking, windows, audio features, A/V alignment),
the Light-ASD model, and the whole code path with tiny randomly initialised models.

Needs no weights. Real fixture videos are used where present; media made with ffmpeg otherwise.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import fixture_path
from stages.talking_head import TalkingHead, TalkingHeadConfig, MediaError, NoAudioStreamError, clip_request
from stages.talking_head import audio as A
from stages.talking_head import video as V
from stages.talking_head.analyze import Analyzer
from stages.talking_head.detect import anchor_centers, decode_boxes, nms
from stages.talking_head.lightasd import LightASD
from stages.talking_head.track import Track, crop_faces, iou_matrix, track_faces
from pipeline.stage import Rejected, StageContext

FFMPEG = shutil.which("ffmpeg")


# -- NMS and IoU ------------------------------------------------------------------------------

def test_iou_matrix_hand_made():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.0]])


def test_nms_keeps_best_of_overlapping_and_separate_boxes():
    boxes = np.array([[0, 0, 100, 100],     # 0: best of the cluster
                      [5, 5, 105, 105],     # 1: IoU 0.82 with 0 -> suppressed
                      [200, 0, 300, 100],   # 2: separate face
                      [40, 0, 140, 100]],   # 3: IoU 0.43 with 0 -> suppressed at 0.4, kept at 0.5
                     float)
    scores = np.array([0.9, 0.95 - 0.1, 0.7, 0.8])
    assert nms(boxes, scores, 0.4).tolist() == [0, 2]
    assert nms(boxes, scores, 0.5).tolist() == [0, 3, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_decode_boxes_from_anchor_distances():
    centers = anchor_centers(64, 64)
    assert centers.shape == ((8 * 8 + 4 * 4 + 2 * 2) * 2, 2)
    assert centers[:4].tolist() == [[0, 0], [0, 0], [8, 0], [8, 0]]  # two anchors per cell, row-major
    scores = np.zeros(len(centers), np.float32)
    dists = np.zeros((len(centers), 4), np.float32)
    i = 2 * (3 * 8 + 4)  # stride-8 cell x=4, y=3 -> centre (32, 24)
    scores[i], dists[i] = 0.9, [10, 12, 14, 16]
    scores[i + 1], dists[i + 1] = 0.6, [10, 12, 14, 17]  # same face, weaker: removed by NMS
    scores[0] = 0.4  # below the threshold
    out = decode_boxes(scores, dists, centers)
    np.testing.assert_allclose(out, [[22, 12, 46, 40, 0.9]], rtol=1e-6)


# -- tracking -----------------------------------------------------------------------------------

def _moving(start, n, step=1.0, size=40.0):
    return [np.array([[start + step * t, 20, start + step * t + size, 20 + size]]) for t in range(n)]


def test_track_follows_a_slowly_moving_face():
    tracks = track_faces(_moving(0, 12))
    assert len(tracks) == 1 and tracks[0].frames == list(range(12))
    assert tracks[0].box_array.shape == (12, 4)


def test_track_breaks_on_a_jump_an_empty_frame_and_a_missing_frame():
    dets = _moving(0, 6) + _moving(200, 6)        # jump: IoU 0 -> a new track
    dets += [np.zeros((0, 5))] + _moving(200, 6)  # empty frame ends every track
    dets += [None] + _moving(200, 7)              # a frame missing from the video too
    tracks = track_faces(dets)
    assert [tr.frames[0] for tr in tracks] == [0, 6, 13, 20]
    assert [len(tr) for tr in tracks] == [6, 6, 6, 7]


def test_short_tracks_are_dropped_and_iou_threshold_is_strict():
    assert track_faces(_moving(0, 4)) == []
    assert len(track_faces(_moving(0, 4), min_frames=4)) == 1
    # each step keeps IoU at exactly 0.6: "above 0.7" fails, "above 0.5" passes
    step = 40 * (1 - 0.6) / (1 + 0.6)
    assert track_faces(_moving(0, 8, step=step)) == []
    assert len(track_faces(_moving(0, 8, step=step), iou_threshold=0.5)) == 1


def test_two_faces_and_a_duplicate_detection_each_get_a_track():
    left, right = _moving(0, 10), _moving(300, 10)
    dets = [np.vstack([l, r]) for l, r in zip(left, right)]
    # frame 5: a second, slightly shifted detection of the left face: it must not be lost
    dets[5] = np.vstack([dets[5], dets[5][0] + [3, 0, 3, 0]])
    tracks = track_faces(dets, min_frames=1)
    assert sorted((tr.frames[0], len(tr)) for tr in tracks) == [(0, 10), (0, 10), (5, 1)]
    assert len(track_faces(dets)) == 2


def test_crop_faces_clips_boxes_to_the_frame():
    gray = np.arange(3 * 50 * 80, dtype=np.uint8).reshape(3, 50, 80)
    tr = Track([0, 2], [np.array([-10, -10, 30, 30.0]), np.array([70, 40, 95, 60.0])])
    crops = crop_faces(gray, tr, size=16)
    assert crops.shape == (2, 16, 16) and crops.dtype == np.uint8
    import cv2
    np.testing.assert_array_equal(crops[0], cv2.resize(gray[0, 0:30, 0:30], (16, 16), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(crops[1], cv2.resize(gray[2, 40:50, 70:80], (16, 16), interpolation=cv2.INTER_LINEAR))


# -- windows, frame grid ------------------------------------------------------------------------

def test_window_scheme():
    assert V.plan_windows(2202) == [(0, 150), (750, 900), (1500, 1650)]
    assert V.plan_windows(900) == [(0, 150), (750, 900)]
    assert V.plan_windows(899) == [(0, 150)]
    assert V.plan_windows(100) == [(0, 100)]          # shorter than one window: one window
    assert V.plan_windows(0) == []
    assert V.plan_windows(320, all_frames=True) == [(0, 150), (150, 300), (300, 320)]
    assert V.clip_frame_count(10.0, 16.0) == 150
    assert V.fit_size(1920, 1080, 512, 288) == (512, 288)
    assert V.fit_size(512, 512, 512, 288) == (288, 288)
    assert V.fit_size(320, 180, 512, 288) == (320, 180)   # never upscaled


# -- the model ----------------------------------------------------------------------------------

def test_lightasd_padded_batch_equals_each_track_alone_and_fusion_keeps_scores():
    torch.manual_seed(0)
    model = LightASD().eval()
    for p in model.modules():  # non-trivial BN statistics, so fusion is really tested
        if isinstance(p, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            p.running_mean.uniform_(-0.5, 0.5)
            p.running_var.uniform_(0.5, 2.0)
    # small crops keep the test fast: the encoder ends in a global spatial max pool
    faces = torch.randint(0, 256, (3, 12, 48, 48), dtype=torch.uint8)
    mfcc = torch.randn(3, 48, 13) * 5
    lengths = torch.tensor([12, 9, 6])
    with torch.inference_mode():
        batch = model(faces, mfcc, lengths)
        fused = model.fused()(faces, mfcc, lengths)
        assert batch.shape == (3, 12)
        for b, n in enumerate(lengths.tolist()):
            alone = model(faces[b:b + 1, :n], mfcc[b:b + 1, :4 * n])[0]
            torch.testing.assert_close(batch[b, :n], alone, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused, batch, atol=1e-4, rtol=1e-4)
        # without lengths the padding leaks into the short track (the reference's behaviour)
        leaky = model(faces, mfcc)[2, :6]
        assert not torch.allclose(leaky, batch[2, :6], atol=1e-4)
        with pytest.raises(ValueError, match="mfcc shape"):
            model(faces, mfcc[:, :47])


@pytest.mark.parametrize("name", ["lightasd_finetuning_TalkSet.model", "lightasd_pretrain_AVA_CVPR.model"])
def test_checkpoints_load_every_key_strictly(name):
    path = fixture_path("weights", name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = LightASD()
    assert len(state) == 192 and any(k.startswith("lossV.FC.") for k in state)
    assert set(model.state_dict()) == set(state)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(model.state_dict()["lossV.FC.weight"], state["lossV.FC.weight"])


# -- audio ---------------------------------------------------------------------------------------

def test_audio_is_placed_by_timestamp_and_matches_ffmpeg():
    import av

    path = fixture_path("video", "videollama_ironman_movie_face_audio.mp4")
    with av.open(str(path)) as c:
        ours = A.decode_audio(c, 3.0, 4.0)
    ref = np.frombuffer(subprocess.run(
        [FFMPEG, "-v", "error", "-ss", "3.0", "-i", str(path), "-t", "1.0", "-vn", "-ac", "1", "-ar", "16000",
         "-f", "f32le", "-"], capture_output=True, check=True).stdout, np.float32)
    assert len(ours) == 16000
    # the same waveform, not shifted: lag 0 fits far better than +-5 ms
    errors = {lag: np.abs(ours[2000 + lag:14000 + lag] - ref[2000:14000]).mean() for lag in (-80, 0, 80)}
    assert errors[0] < 0.2 * min(errors[-80], errors[80])


def test_silent_track_has_no_audible_frame_and_speech_has_many():
    import av

    with av.open(str(fixture_path("video", "liveportrait_d3_face_SILENT_audiotrack.mp4"))) as c:
        silent = A.decode_audio(c, 0.0, 6.0)
    with av.open(str(fixture_path("video", "sadtalker_hdtf_AOC_talkinghead.mp4"))) as c:
        speech = A.decode_audio(c, 0.0, 6.0)
    assert not A.audible_frames(silent, 150, -60).any()
    assert A.audible_frames(speech, 150, -60).mean() > 0.9
    with pytest.raises(ValueError):
        A.prepare_signal(silent * 0)


def test_window_mfcc_equals_the_whole_clip_mfcc():
    import av
    import python_speech_features as psf

    with av.open(str(fixture_path("video", "sadtalker_hdtf_AOC_talkinghead.mp4"))) as c:
        x = A.decode_audio(c, 0.0, 4.0)
    signal = A.prepare_signal(x)
    whole = psf.mfcc(x / np.abs(x).max() * 32767, samplerate=16000)  # the reference's call
    part = A.mfcc_frames(signal, 30, 40)
    assert part.shape == (160, 13)
    np.testing.assert_allclose(part, whole[120:280], rtol=1e-4, atol=1e-3)


# -- A/V alignment by timestamps -------------------------------------------------------------------

@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
def test_late_video_stream_is_aligned_by_timestamps(tmp_path):
    import av

    src = fixture_path("video", "sadtalker_hdtf_AOC_talkinghead.mp4")
    shifted = tmp_path / "video_late.mp4"
    # the same packets, the video stream starting 0.85 s after the audio (as in a real clip)
    subprocess.run([FFMPEG, "-v", "error", "-itsoffset", "0.85", "-i", str(src), "-i", str(src), "-map", "0:v",
                    "-map", "1:a", "-c", "copy", str(shifted)], check=True)
    with av.open(str(shifted)) as c:
        info = V.probe(c, str(shifted))
        times = V.frame_times(0.0, 0, 60)
        late, found = V.decode_frames(c, info, times, (128, 128))
    with av.open(str(src)) as c:
        early, _ = V.decode_frames(c, V.probe(c, str(src)), times[22:] - 0.85, (128, 128))
    assert abs(info.video_start_s - 0.85) < 0.02
    assert not found[:21].any() and found[22:].all()              # 0.85 s = 21.25 frames missing
    assert not V.present_frames(times, info)[:21].any()
    np.testing.assert_array_equal(late[22:], early)                # frame k shows media time t_k - 0.85


def test_seeking_to_a_window_gives_the_frames_of_a_full_decode():
    """Seek to the keyframe 7.3 s before, skip B-frames until 0.5 s before the window: the
    window's frames must equal those of decoding from the start (this file has B-frames)."""
    import av

    path = str(fixture_path("video", "videogrep_manifesto_narration.mp4"))
    times = V.frame_times(47.3, 0, 25)
    with av.open(path) as c:
        info = V.probe(c, path)
        seeked, found = V.decode_frames(c, info, times, (160, 90))
    with av.open(path) as c:
        full, _ = V.decode_frames(c, info, times, (160, 90), seek=False)
    assert found.all()
    np.testing.assert_array_equal(seeked, full)


# -- the whole path with tiny random models ---------------------------------------------------------

def _tiny_scrfd(path: Path) -> None:
    """An SCRFD-shaped ONNX graph with random weights, fixed 1x3x64x64 input, an FPN-style
    fixed-size Resize and Reshapes with a batch of 1: exercises the rewrite to dynamic shapes.
    Boxes are constant per anchor (6 strides wide, so NMS leaves one or two), scores only
    from stride 32."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, outputs = [], [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    nodes.append(helper.make_node("AveragePool", ["input.1"], ["p32"], kernel_shape=[32, 32], strides=[32, 32]))
    nodes.append(helper.make_node("AveragePool", ["input.1"], ["p16"], kernel_shape=[16, 16], strides=[16, 16]))
    nodes.append(helper.make_node("Resize", ["p32", const("roi", np.zeros(0, np.float32)),
                                             const("sc", np.zeros(0, np.float32)),
                                             const("sz", np.array([1, 3, 4, 4], np.int64))], ["up"], mode="nearest"))
    nodes.append(helper.make_node("Add", ["p16", "up"], ["f16"]))
    nodes.append(helper.make_node("AveragePool", ["input.1"], ["f8"], kernel_shape=[8, 8], strides=[8, 8]))
    for s, feat in ((8, "f8"), (16, "f16"), (32, "p32")):
        w = rng.normal(0, 1.0, (2, 3, 1, 1)).astype(np.float32) if s == 32 else np.zeros((2, 3, 1, 1), np.float32)
        b = np.full(2, 0.5 if s == 32 else -20.0, np.float32)
        nodes.append(helper.make_node("Conv", [feat, const(f"ws{s}", w), const(f"bs{s}", b)], [f"cs{s}"]))
        nodes.append(helper.make_node("Sigmoid", [f"cs{s}"], [f"ss{s}"]))
        nodes.append(helper.make_node("Conv", [feat, const(f"wb{s}", np.zeros((8, 3, 1, 1), np.float32)),
                                               const(f"bb{s}", np.full(8, 3.0, np.float32))], [f"cb{s}"]))
        for kind, src, k in (("score", f"ss{s}", 1), ("bbox", f"cb{s}", 4)):
            nodes.append(helper.make_node("Transpose", [src], [f"t{kind}{s}"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [f"t{kind}{s}", const(f"r{kind}{s}", np.array([1, -1, k], np.int64))],
                                          [f"{kind}_{s}"]))
            outputs.append(helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [1, None, k]))
    graph = helper.make_graph(nodes, "tiny_scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 64, 64])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))


def _make_media(path: Path, seconds: float, audio: bool = True) -> None:
    args = [FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=30:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=300:sample_rate=44100:duration={seconds}", "-c:a", "aac"]
    subprocess.run(args + ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed")
    from stages.talking_head.detect import FaceDetector

    tmp = tmp_path_factory.mktemp("tiny")
    _tiny_scrfd(tmp / "tiny_scrfd.onnx")
    cfg = TalkingHeadConfig(det_width=128, det_height=96, all_frames=True, mode="score")
    torch.manual_seed(0)
    stage = TalkingHead(cfg, StageContext(storage=None, corpus="test", stage_dir=str(tmp)))
    detector = FaceDetector(str(tmp / "tiny_scrfd.onnx"), threads=1, batch_size=4)
    stage.analyzer = Analyzer(detector, LightASD().eval().fused(), cfg, "cpu", asd_batch_frames=64)
    _make_media(tmp / "tone.mp4", 1.2)
    _make_media(tmp / "mute.mp4", 1.0, audio=False)
    return stage, tmp


def test_tiny_detector_rewrite_batches_any_size(tiny_stage):
    stage, _ = tiny_stage
    frames = np.random.default_rng(1).integers(0, 256, (5, 96, 160, 3), dtype=np.uint8)
    dets = stage.analyzer.detector.detect(frames)
    assert len(dets) == 5 and all(d.shape[1] == 5 for d in dets)
    assert sum(len(d) for d in dets) > 0
    with pytest.raises(ValueError, match="multiples of 32"):
        stage.analyzer.detector.detect(frames[:, :90])


def test_tiny_models_run_the_whole_stage_code_path(tiny_stage):
    stage, tmp = tiny_stage
    base = {"video_id": "v", "media_offset": 0.0, "has_audio": None}
    rows = [
        dict(base, clip_id="ok", media_path=str(tmp / "tone.mp4"), start=0.0, end=1.2),
        dict(base, clip_id="offset", media_path=str(tmp / "tone.mp4"), start=100.6, end=101.0, media_offset=100.0),
        dict(base, clip_id="mute", media_path=str(tmp / "mute.mp4"), start=0.0, end=1.0),
        dict(base, clip_id="beyond", media_path=str(tmp / "tone.mp4"), start=0.5, end=2.0),
        dict(base, clip_id="flagged", media_path=str(tmp / "tone.mp4"), start=0.0, end=1.0, has_audio=False),
        dict(base, clip_id="nomedia", media_path=None, start=0.0, end=1.0),
    ]
    out = stage.process_batch(rows)
    assert isinstance(out[2], NoAudioStreamError)
    assert isinstance(out[3], MediaError) and "beyond the media" in str(out[3])
    assert isinstance(out[4], NoAudioStreamError) and isinstance(out[5], MediaError)
    for res in (out[0], out[1]):
        (row,) = res
        assert 0.0 <= row["talking_head_ratio"] <= 1.0
    # the analysis behind row 0: random scores, but the counting must be consistent
    ((_, r),) = list(stage.analyzer.run([clip_request(rows[0])]))
    assert r.n_frames == 30 and r.windows == [(0, 30)] and r.frames_examined == 30
    assert r.tracks and all(len(t.frames) == len(t.scores) == len(t.boxes) >= 5 for t in r.tracks)
    expected = np.zeros(30, bool)
    for t in r.tracks:
        expected[t.frames[t.scores > 0]] = True
    assert r.frames_speaking == expected.sum() and r.ratio == pytest.approx(expected.mean())
    assert out[0][0]["talking_head_ratio"] == pytest.approx(r.ratio, abs=1e-4)


def test_filter_mode_rejects_above_threshold(tiny_stage):
    stage, tmp = tiny_stage
    filt = TalkingHead(TalkingHeadConfig(threshold=0.05), stage.context)
    from stages.talking_head.analyze import ClipResult

    def result(ratio):
        return ClipResult(ratio, 100, int(ratio * 100), 100, [(0, 100)], [], np.ones(100, bool),
                          np.zeros(100, bool), False, (64, 64))
    row = {"clip_id": "c", "talking_head_ratio": None}
    (kept,) = filt.decide(row, result(0.05))
    (rejected,) = filt.decide(row, result(0.5))
    assert kept == {"clip_id": "c", "talking_head_ratio": 0.05}
    assert isinstance(rejected, Rejected) and rejected.reason == "talking_head"
    assert rejected.row["talking_head_ratio"] == 0.5 and rejected.detail == "ratio=0.50 > 0.05"
    assert stage.decide(row, result(0.5))[0]["talking_head_ratio"] == 0.5  # score mode keeps all


def test_media_paths_relative_to_the_root_and_fsspec_urls(tiny_stage):
    import fsspec

    from pipeline.storage import Storage

    stage, tmp = tiny_stage
    req = clip_request({"media_path": "tone.mp4", "start": 10.2, "end": 11.0, "media_offset": 10.0},
                       Storage(str(tmp)))
    assert req.path == str(tmp / "tone.mp4") and (req.start_s, req.end_s) == pytest.approx((0.2, 1.0))
    # an object-store URL is read through fsspec (memory:// stands in for s3://)
    with fsspec.open("memory://bucket/tone.mp4", "wb") as f:
        f.write((tmp / "tone.mp4").read_bytes())
    ((_, local),) = list(stage.analyzer.run([clip_request({"media_path": str(tmp / "tone.mp4"), "start": 0.0, "end": 1.0})]))
    ((_, remote),) = list(stage.analyzer.run([clip_request({"media_path": "memory://bucket/tone.mp4", "start": 0.0, "end": 1.0})]))
    assert remote.ratio == local.ratio and remote.frames_examined == local.frames_examined == 25


def test_undecodable_media_is_an_error_row(tiny_stage, tmp_path):
    stage, tmp = tiny_stage
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((tmp / "tone.mp4").read_bytes()[:3000])
    rows = [{"clip_id": p.stem, "video_id": "v", "media_path": str(p), "start": 0.0, "end": 1.0}
            for p in (garbage, truncated, tmp_path / "absent.mp4")]
    out = stage.process_batch(rows)
    assert all(isinstance(o, MediaError) for o in out), out


def test_missing_weights_fail_early_with_download_instructions(tmp_path, monkeypatch):
    for var in ("LIVECC_MODEL_DIR", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    stage = TalkingHead(TalkingHeadConfig(model_dir=str(tmp_path / "models")),
                        StageContext(storage=None, corpus="t", stage_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError) as err:
        stage.setup()
    msg = str(err.value)
    assert "finetuning_TalkSet.model" in msg and "github.com/Junhua-Liao/Light-ASD" in msg
    assert str(tmp_path / "models" / "finetuning_TalkSet.model") in msg


def test_missing_detector_names_insightface_download():
    from stages.talking_head import build_analyzer

    weights = fixture_path("weights", "lightasd_finetuning_TalkSet.model").parent
    with pytest.raises(FileNotFoundError, match="buffalo_sc.zip"):
        build_analyzer(TalkingHeadConfig(model_dir=str(weights), detector_weights=["nope.onnx"]))


def test_config_validates_and_runtime_fields_stay_out_of_the_hash():
    with pytest.raises(ValueError, match="multiple of 32"):
        TalkingHeadConfig(det_width=300)
    a = TalkingHeadConfig().hash_payload()
    assert a == TalkingHeadConfig(device="cpu", decode_workers=7, model_dir="/x").hash_payload()
    assert a != TalkingHeadConfig(threshold=0.1).hash_payload()


def test_the_model_files_are_part_of_the_stage_key(tmp_path, monkeypatch):
    """A stage that reads model files declares them: other weights, another key (the parts are
    stale); weights that are not on this machine key on the configured names."""
    import shutil

    from tests.conftest import fixture_path

    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("lightasd_finetuning_TalkSet.model", "scrfd_500m_bnkps_640.onnx"):
        shutil.copy(fixture_path("weights", name), weights / name)
    stage = TalkingHead(TalkingHeadConfig(model_dir=str(weights)), None)
    first = stage.fingerprint()
    assert set(first["files"]) == {"lightasd_finetuning_TalkSet.model", "scrfd_500m_bnkps_640.onnx"}
    with open(weights / "lightasd_finetuning_TalkSet.model", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert stage.fingerprint()["files"]["lightasd_finetuning_TalkSet.model"] != \
        first["files"]["lightasd_finetuning_TalkSet.model"]
    missing = TalkingHead(TalkingHeadConfig(model_dir=str(tmp_path / "none"),
                                            asd_weights=["nowhere.model"]), None).fingerprint()
    assert "configured" in missing
