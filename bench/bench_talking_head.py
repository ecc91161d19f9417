"""Talking-head stage: CPU seconds per minute of video against a naive path, and peak memory.

Videos (made from ../shared/fixtures with ffmpeg stream copies, no re-encoding):
* a talking head (``sadtalker_hdtf_AOC``, 512x512, 25 fps) looped to ``--video-seconds``;
* narration over slides (``v2d_laion_slides``, 1920x1080, 30 fps, no face), up to ``--video-seconds``.

Ours: the stage (``TalkingHead.process_batch``) on the whole videos: windowed decoding at
512x288, batched SCRFD, tracking, padded Light-ASD batches, decoding overlapped with inference.
Naive, measured in the same run: every frame decoded at full size, SCRFD frame by frame on a
640x640 letterbox, crops from the full-size frames, Light-ASD track by track (unfused), on the
first ``--naive-seconds`` of each video (its cost is linear in frames) -- the shape of the
original Light-ASD demo pipeline. Both use the same weights, threads and tracker. Model loading
is excluded from both.

Memory: a fresh process (one "actor": setup + one part) on two 4-minute clips -- the talking
head loop (faces in every window) and the 1080p slides looped -- reports its peak RSS.

Prints:
    bench talking_head_speed: ratio=<naive / ours CPU s per min> target=10 (...)
    bench talking_head_memory: ratio=<peak GB / 2.0> target=1.0 (...)
    bench talking_head_seconds_per_video: ...   (only with --device cuda: wall s per video)

Run: python bench/bench_talking_head.py [--device cpu|cuda] [--video-seconds 120]
     [--naive-seconds 15] [--threads 1]   (about 2 minutes on 2 CPU cores, more when loaded)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)

FIXTURES = Path(os.environ.get("LIVECC_FIXTURES", REPO.parent / "shared" / "fixtures"))
WEIGHTS = FIXTURES / "weights"
TALKING_HEAD = FIXTURES / "video" / "sadtalker_hdtf_AOC_talkinghead.mp4"
SLIDES = FIXTURES / "video" / "v2d_laion_slides_narration_1080p.mp4"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children, s."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def loop_video(src: Path, seconds: float, out: Path) -> Path:
    """``src`` repeated (stream copy) and cut to ``seconds``."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", f"{seconds}",
                    "-c", "copy", str(out)], check=True)
    return out


def duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        return c.duration / 1_000_000


def rows_for(videos: list[Path], seconds: list[float]) -> list[dict]:
    return [{"clip_id": p.stem, "video_id": p.stem, "media_path": str(p), "start": 0.0, "end": s,
             "media_offset": 0.0, "has_audio": None} for p, s in zip(videos, seconds)]


def make_stage(device: str, workers: int):
    from pipeline.stage import StageContext
    from stages.talking_head import TalkingHead, TalkingHeadConfig

    cfg = TalkingHeadConfig(model_dir=str(WEIGHTS), mode="score", device=device, decode_workers=workers)
    stage = TalkingHead(cfg, StageContext(storage=None, corpus="bench", stage_dir=tempfile.gettempdir()))
    stage.setup()
    return stage


# -- the naive path ---------------------------------------------------------------------------------

class Naive:
    """Frame by frame, full size, track by track (see the module docstring)."""

    def __init__(self, device: str):
        import onnxruntime as ort
        import torch

        from stages.talking_head.lightasd import load_lightasd

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        providers = [p for p in providers if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(WEIGHTS / "scrfd_500m_bnkps_640.onnx"), options, providers=providers)
        self.asd = load_lightasd(str(WEIGHTS / "lightasd_finetuning_TalkSet.model"), device)
        self.device = device

    def detect(self, frame):
        import cv2
        import numpy as np

        from stages.talking_head.detect import _output_layout, _to_blob, anchor_centers, decode_boxes

        h, w = frame.shape[:2]
        scale = 640 / max(h, w)
        canvas = np.zeros((640, 640, 3), np.uint8)
        canvas[:int(h * scale), :int(w * scale)] = cv2.resize(frame, (int(w * scale), int(h * scale)))
        raw = self.session.run(None, {self.session.get_inputs()[0].name: _to_blob(canvas[None])})
        layout = _output_layout(self.session)
        scores = np.concatenate([raw[o.score].reshape(-1) for o in layout])
        dists = np.concatenate([raw[o.bbox].reshape(-1, 4) * o.stride for o in layout])
        boxes = decode_boxes(scores, dists, anchor_centers(640, 640))
        boxes[:, :4] /= scale
        return boxes

    def ratio(self, path: Path, seconds: float) -> float:
        import av
        import cv2
        import numpy as np
        import torch

        from stages.talking_head import audio as A
        from stages.talking_head.track import crop_faces, track_faces

        with av.open(str(path)) as c:
            samples = A.decode_audio(c, 0.0, seconds + 0.05)
        n = int(seconds * 25)
        targets = (np.arange(n) + 0.5) / 25
        boxes, gray = [], []
        with av.open(str(path)) as c:
            prev = None  # (time, rgb) of the previous full-size frame
            for f in c.decode(video=0):  # every frame decoded at full size
                rgb = f.to_ndarray(format="rgb24")
                while prev is not None and len(boxes) < n and targets[len(boxes)] < f.time:
                    # prev is on screen at this 25 fps time: detect it (one frame at a time)
                    boxes.append(self.detect(prev[1]))
                    gray.append(cv2.cvtColor(prev[1], cv2.COLOR_RGB2GRAY))  # kept for the crops
                prev = (f.time, rgb)
                if len(boxes) >= n:
                    break
            while prev is not None and len(boxes) < n:
                boxes.append(self.detect(prev[1]))
                gray.append(cv2.cvtColor(prev[1], cv2.COLOR_RGB2GRAY))
        gray = np.stack(gray)
        tracks = track_faces(boxes)
        signal = A.prepare_signal(samples)
        mfcc = A.mfcc_frames(signal, 0, n)
        speaking = np.zeros(n, bool)
        with torch.inference_mode():
            for tr in tracks:  # one track at a time
                crops = torch.from_numpy(crop_faces(gray, tr))[None].to(self.device)
                feats = torch.from_numpy(mfcc[4 * tr.frames[0]:4 * (tr.frames[-1] + 1)])[None].to(self.device)
                s = self.asd(crops, feats)[0].cpu().numpy()
                speaking[np.asarray(tr.frames)[s > 0]] = True
        return float(speaking.mean())


# -- memory: one actor in a fresh process -------------------------------------------------------------

def memory_child(paths: list[str], device: str) -> None:
    stage = make_stage(device, workers=2)
    out = stage.process_batch(rows_for([Path(p) for p in paths], [duration_s(Path(p)) for p in paths]))
    ratios = [o if isinstance(o, BaseException) else o[0]["talking_head_ratio"] for o in out]
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, carried over exec)
    status = Path("/proc/self/status").read_text()
    peak_gb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024 ** 2
    print(json.dumps({"peak_gb": peak_gb, "ratios": [str(r) for r in ratios]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--video-seconds", type=float, default=120.0, help="length of each speed-test video, s")
    ap.add_argument("--naive-seconds", type=float, default=15.0, help="seconds of each video the naive path runs on")
    ap.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads for both paths (CPU)")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: 2 on CPU, all cores on CUDA)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.device)
        return
    if shutil.which("ffmpeg") is None or not (WEIGHTS / "lightasd_finetuning_TalkSet.model").exists():
        sys.exit("needs ffmpeg and ../shared/fixtures (videos and weights)")
    workers = args.workers or (2 if args.device == "cpu" else os.cpu_count() or 8)

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        videos = [loop_video(TALKING_HEAD, args.video_seconds, tmpdir / "talking_head.mp4"),
                  loop_video(SLIDES, min(args.video_seconds, duration_s(SLIDES)), tmpdir / "slides_1080p.mp4")]
        lengths = [duration_s(v) for v in videos]

        stage = make_stage(args.device, workers)
        stage.process_batch(rows_for(videos[:1], [10.0]))  # warm-up (allocators, CUDA kernels)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        out = stage.process_batch(rows_for(videos, lengths))
        ours_cpu, ours_wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        ours_ratios = [o[0]["talking_head_ratio"] if isinstance(o, list) else repr(o) for o in out]

        naive = Naive(args.device)
        naive.ratio(videos[0], 2.0)  # warm-up
        cpu0 = cpu_seconds()
        naive_ratios = [round(naive.ratio(v, args.naive_seconds), 4) for v in videos]
        naive_cpu = cpu_seconds() - cpu0

        ours_per_min = ours_cpu / (sum(lengths) / 60)
        naive_per_min = naive_cpu / (len(videos) * args.naive_seconds / 60)
        print(f"bench talking_head_speed: ratio={naive_per_min / ours_per_min:.1f} target=10 "
              f"(CPU s per minute of video: ours {ours_per_min:.2f}, naive {naive_per_min:.2f}; "
              f"device={args.device} threads={args.threads}; ours on {sum(lengths):.0f} s, naive on "
              f"{len(videos) * args.naive_seconds:.0f} s; ratios ours {ours_ratios} naive {naive_ratios}; "
              f"talking head + 1080p slides)")
        if args.device == "cuda":
            per_video = ours_wall / len(videos) * (300.0 / (sum(lengths) / len(videos)))
            print(f"bench talking_head_seconds_per_video: ratio={per_video / 1.0:.2f} target=1.0 "
                  f"(wall s per 5-min video on {args.device}: {per_video:.2f}; target < 1 s, reference 1-1.5 s; "
                  f"{workers} decode workers)")

        if not args.skip_memory:
            clips = [loop_video(TALKING_HEAD, 240, tmpdir / "talking_head_4min.mp4"),
                     loop_video(SLIDES, 240, tmpdir / "slides_1080p_4min.mp4")]
            child = subprocess.run([sys.executable, __file__, "--device", args.device, "--threads", str(args.threads),
                                    "--memory-child", *map(str, clips)], capture_output=True, text=True,
                                   env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
            if child.returncode:
                sys.exit(f"memory child failed:\n{child.stderr[-3000:]}")
            res = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"bench talking_head_memory: ratio={res['peak_gb'] / 2.0:.2f} target=1.0 "
                  f"(peak RSS of one actor = {res['peak_gb']:.2f} GB for two 4-minute clips, talking head and "
                  f"1080p slides, incl. models; target < 2 GB; ratios {res['ratios']})")


if __name__ == "__main__":
    main()
