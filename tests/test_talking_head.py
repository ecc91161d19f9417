"""Talking-head stage on the real fixture videos with the real weights (issue 4).

The stage runs once over all fixture clips (module fixture, one ``process_batch`` call, so the
decode/inference pipeline is exercised across clip boundaries); the tests read its results.
Skips with a reason when ../shared/fixtures or its weights are absent.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import fixture_path
from pipeline.stage import Rejected, StageContext
from stages.talking_head import NoAudioStreamError, TalkingHead, TalkingHeadConfig

FFMPEG = shutil.which("ffmpeg")

TALKING_HEADS = ["sadtalker_hdtf_AOC_talkinghead", "retalking_face1_man_suit_talkinghead",
                 "retalking_face4_presenter_talkinghead", "liveportrait_d20_man_outdoor_talkinghead"]
NEGATIVES = ["v2d_laion_slides_narration_1080p", "videogrep_manifesto_narration",
             "liveportrait_d3_face_SILENT_audiotrack"]
MUSIC_FACE = "videollama_ironman_movie_face_audio"
NO_AUDIO = ["videollama_silence_girl_face_NOAUDIO", "v2d_movieclips_eulogy_talkinghead_NOAUDIO"]
#: clip ranges (s), kept short for a lean suite: 3 s of each talking head (one window of 75
#: frames), 6 s of the others; 40 s of one narration = two windows (40-46 s and 70-76 s)
RANGES = {"v2d_laion_slides_narration_1080p": (60.0, 66.0), "videogrep_manifesto_narration": (40.0, 80.0),
          **{name: (0.0, 3.0) for name in TALKING_HEADS}}


def _row(name: str) -> dict:
    path = fixture_path("video", f"{name}.mp4")
    start, end = RANGES.get(name, (0.0, 6.0))
    return {"clip_id": f"{name}_{start:g}_{end:g}", "video_id": name, "start": start, "end": end,
            "media_path": str(path), "media_offset": 0.0, "has_audio": None, "talking_head_ratio": None}


@pytest.fixture(scope="module")
def weights_dir():
    return fixture_path("weights", "lightasd_finetuning_TalkSet.model").parent


@pytest.fixture(scope="module")
def stage(weights_dir, tmp_path_factory):
    fixture_path("weights", "scrfd_500m_bnkps_640.onnx")
    stage = TalkingHead(TalkingHeadConfig(model_dir=str(weights_dir), mode="filter", device="cpu"),
                        StageContext(storage=None, corpus="test", stage_dir=str(tmp_path_factory.mktemp("th"))))
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def results(stage):
    names = TALKING_HEADS + NEGATIVES + [MUSIC_FACE] + NO_AUDIO
    return dict(zip(names, stage.process_batch([_row(n) for n in names])))


def _ratio(result) -> float:
    assert isinstance(result, list) and len(result) == 1, result
    item = result[0]
    row = item.row if isinstance(item, Rejected) else item
    return row["talking_head_ratio"]


def test_ratios_measured(results):
    """Prints every ratio (pytest -s) so the report can quote them; checks they are numbers."""
    for name, res in results.items():
        print(f"{name}: {res if isinstance(res, BaseException) else _ratio(res)}")
        if name not in NO_AUDIO:
            assert 0.0 <= _ratio(res) <= 1.0


@pytest.mark.parametrize("name", TALKING_HEADS)
def test_talking_heads_score_high_and_are_rejected(results, name):
    assert _ratio(results[name]) >= 0.5
    (item,) = results[name]
    assert isinstance(item, Rejected) and item.reason == "talking_head" and item.detail.startswith("ratio=")


@pytest.mark.parametrize("name", NEGATIVES)
def test_narration_and_silent_face_score_low_and_are_kept(results, name):
    assert _ratio(results[name]) <= 0.05
    (item,) = results[name]
    assert not isinstance(item, Rejected)
    assert item["clip_id"] == _row(name)["clip_id"]


def test_music_face_is_low_and_below_every_talking_head(results):
    ratio = _ratio(results[MUSIC_FACE])
    assert ratio <= 0.2
    assert all(ratio < _ratio(results[n]) for n in TALKING_HEADS)


@pytest.mark.parametrize("name", NO_AUDIO)
def test_videos_without_audio_stream_are_error_rows(results, name):
    assert isinstance(results[name], NoAudioStreamError)
    assert "no audio stream" in str(results[name])


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")
def test_small_face_is_found_at_the_default_detection_size(stage, weights_dir, tmp_path):
    """A talking head about 16 px high at 512x288 (9 px at the reference's 288x160): picture in
    picture on a 960x540 frame. The default size finds and tracks it; 288x160 finds nothing."""
    from stages.talking_head import build_analyzer
    from stages.talking_head.analyze import ClipRequest

    src = fixture_path("video", "retalking_face4_presenter_talkinghead.mp4")
    pip = tmp_path / "pip.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "color=c=0x404850:s=960x540:r=25", "-i", str(src),
                    "-filter_complex", "[1:v]scale=85:85[p];[0:v][p]overlay=700:380:shortest=1",
                    "-map", "1:a", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(pip)],
                   check=True)
    ((_, r),) = list(stage.analyzer.run([ClipRequest(str(pip), 0.0, 3.0)]))
    assert r.ratio >= 0.5 and len(r.tracks) >= 1
    reference = build_analyzer(TalkingHeadConfig(model_dir=str(weights_dir), device="cpu", det_width=288, det_height=160))
    ((_, r288),) = list(reference.run([ClipRequest(str(pip), 0.0, 3.0)]))
    assert r288.tracks == [] and r288.ratio == 0.0


def test_visualize_writes_a_playable_mp4(weights_dir, tmp_path):
    import av

    from stages.talking_head.visualize import render

    out = tmp_path / "inspect.mp4"
    stats = render(str(fixture_path("video", "retalking_face1_man_suit_talkinghead.mp4")), 1.0, 3.0, str(out),
                   TalkingHeadConfig(model_dir=str(weights_dir), all_frames=True, device="cpu"))
    assert stats["frames_written"] == 50 and stats["ratio"] >= 0.5 and stats["tracks"] >= 1
    with av.open(str(out)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 50
    # a red (speaking) box is drawn on the face: strongly red pixels exist in a middle frame
    mid = frames[25].astype(int)
    assert ((mid[..., 0] > 180) & (mid[..., 1] < 90) & (mid[..., 2] < 90)).sum() > 100
