"""Training step throughput and model FLOPs utilisation (MFU) of Qwen2-VL-2B at a real streaming length.

For the GPU machine. A randomly initialised model with the Qwen2-VL-2B configuration (28 layers,
hidden 1536, 12 heads / 2 KV heads, vocab 151936, tied embeddings; vision tower 32 x 1280) trains
in bf16 as ``train/`` runs it: frozen ``visual``, gradient checkpointing, FlashAttention-2 and
Liger kernels when installed, uint8 video patches normalised on the GPU
(:meth:`train.collator.StreamProcessor.normalize_patches`), AdamW.

One sample is laid out like the LiveCC interleave of a 4-minute clip: 480 frames at 2 FPS sized by
the production visual budget for a 640x360 source (:class:`train.video.VideoBudget`), a first
window of 6 frames then 2-frame windows, each window with its ``Time=`` header, chat tokens and
about 2.5 words of commentary. That is about 22k visual tokens plus about 6k text tokens.

Model FLOPs per step (no recomputation counted): language model ``6 * T * N`` (non-embedding
weights) + ``6 * T * d * V`` (output layer) + ``6 * L * T^2 * d`` (causal attention), and the frozen
vision tower forward only: ``2 * P * N_vis`` + per-frame attention ``4 * P * P_frame * d_vis`` per
block. MFU = model FLOPs / step time / the GPU's dense bf16 peak (H100/H200 SXM 989 TFLOPs;
``BENCH_PEAK_TFLOPS`` overrides). Target: MFU >= 40%.

Prints one line: ``bench train_mfu: ratio=<mfu/0.40> target=1.0 (...)``; without a CUDA device it
prints why it was skipped and exits 0. ``--cpu-smoke`` runs the same code on a tiny model on CPU
(a code check, no figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

TARGET_MFU = 0.40
#: Dense bf16 peak TFLOPs by device name fragment (vendor datasheets, no sparsity).
PEAK_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
               "H100": 756.0, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "A10G": 125.0}

QWEN2VL_2B = dict(
    text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                     rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
    vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=True,
)
#: <|im_start|>, <|im_end|> in the Qwen2 vocabulary; text ids are drawn below the special tokens.
QWEN_IDS = {"im_start": 151644, "im_end": 151645}
QWEN_TEXT_IDS = (1000, 150000)


def streaming_sample(n_frames: int, height: int, width: int, text_ids: tuple[int, int], ids: dict,
                     words_per_window: float = 2.5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token layout of one interleaved clip (random text ids from ``text_ids`` = [lo, hi), the real
    structure) and uint8 patches. ``ids``: im_start, im_end and the model's vision token ids."""
    g = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(*text_ids, (n,), generator=g).tolist()  # noqa: E731
    IM_START, IM_END = ids["im_start"], ids["im_end"]
    per_window = (height // 28) * (width // 28)              # visual tokens per 2 frames
    windows = [6] + [2] * ((n_frames - 6) // 2)
    input_ids, labels, grids = [], [], []
    input_ids += [IM_START] + text(4) + [IM_END] + text(1)      # system turn
    labels += [-100] * len(input_ids)
    for k, frames in enumerate(windows):
        user = [IM_START] + text(2) + text(9)                     # "user\n" + "Time=12.0-13.0s"
        user += [ids["vision_start_token_id"]] + [ids["video_token_id"]] * (per_window * frames // 2)
        user += [ids["vision_end_token_id"]] + (text(12) if k == 0 else []) + [IM_END] + text(1)
        head = [IM_START] + text(2)                               # "assistant\n"
        answer = text(max(1, round(words_per_window * frames / 2 * 1.3)) + 1) + [IM_END]   # words + " ..." + end
        input_ids += user + head + answer + text(1)
        labels += [-100] * (len(user) + len(head)) + answer + [-100]
        grids.append([frames // 2, height // 14, width // 14])
    grid = torch.tensor(grids)
    n_patches = int(grid.prod(1).sum())
    patches = torch.randint(0, 256, (n_patches, 3 * 2 * 14 * 14), dtype=torch.uint8, generator=g)
    return {"input_ids": torch.tensor([input_ids]), "labels": torch.tensor([labels]),
            "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long),
            "pixel_values_videos": patches, "video_grid_thw": grid}


def model_flops(model, sample: dict[str, torch.Tensor]) -> tuple[float, int, int]:
    """(model FLOPs of one training step, sequence tokens, visual tokens); see the module docstring."""
    cfg = model.config.text_config if hasattr(model.config, "text_config") else model.config
    vcfg = model.config.vision_config
    T = sample["input_ids"].shape[1]
    d, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    lm = model.model.language_model
    n_lm = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    flops = 6 * T * n_lm + 6 * T * d * V + 6 * L * T * T * d
    grid = sample["video_grid_thw"]
    P = int(grid.prod(1).sum())
    frame_patches = (grid[:, 1] * grid[:, 2]).repeat_interleave(grid[:, 0])     # attention blocks
    n_vis = sum(p.numel() for p in model.visual.blocks.parameters())
    n_merger = sum(p.numel() for p in model.visual.merger.parameters())
    n_embed = sum(p.numel() for p in model.visual.patch_embed.parameters())
    flops += 2 * P * (n_vis + n_embed) + 2 * (P // 4) * n_merger
    flops += vcfg.depth * 4 * vcfg.embed_dim * int((frame_patches.double() ** 2).sum())
    visual = int((sample["input_ids"] == model.config.video_token_id).sum())
    return float(flops), T, visual


def peak_tflops(name: str) -> float | None:
    if os.environ.get("BENCH_PEAK_TFLOPS"):
        return float(os.environ["BENCH_PEAK_TFLOPS"])
    for fragment, value in PEAK_TFLOPS.items():
        if fragment in name:
            return value
    return None


def build(cpu_smoke: bool):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from train.tiny import tiny_config, tiny_processor
    from train.trainer import attention_implementation

    processor = tiny_processor()       # only its mean/std are used: normalize_patches
    if cpu_smoke:
        config = tiny_config(processor.tokenizer)
        device, dtype, attn = torch.device("cpu"), torch.float32, "sdpa"
    else:
        config = Qwen2VLConfig(**QWEN2VL_2B)
        device, dtype, attn = torch.device("cuda"), torch.bfloat16, attention_implementation("auto")
    config._attn_implementation = attn
    torch.manual_seed(0)
    with device:
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    liger = "no"
    if not cpu_smoke:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_qwen2_vl

            apply_liger_kernel_to_qwen2_vl(model=model)
            liger = "yes"
        except ImportError:
            liger = "not installed"
    model.visual.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model, processor, device, attn, liger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: check the code, print no figure")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench train_mfu: skipped (no CUDA device present; run `python bench/bench_train_gpu.py` on a GPU machine)")
        return
    from train.video import VideoBudget

    model, processor, device, attn, liger = build(args.cpu_smoke)
    if args.cpu_smoke:
        n_frames, (h, w) = 16, (56, 56)
    else:
        n_frames = 480
        h, w = VideoBudget().frame_size(360, 640, n_frames)
    ids = {k: getattr(model.config, k) for k in ("video_token_id", "vision_start_token_id", "vision_end_token_id")}
    if args.cpu_smoke:
        vocab = processor.tokenizer.get_vocab()
        ids.update(im_start=vocab["<|im_start|>"], im_end=vocab["<|im_end|>"])
        text_ids = (16, len(vocab))        # past the tiny tokenizer's special tokens
    else:
        ids.update(QWEN_IDS)
        text_ids = QWEN_TEXT_IDS
    sample = streaming_sample(n_frames, h, w, text_ids, ids)
    flops, T, visual = model_flops(model, sample)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                                  fused=device.type == "cuda")
    batch = {k: v.to(device) for k, v in sample.items()}

    def step() -> float:
        inputs = dict(batch)
        inputs["pixel_values_videos"] = processor.normalize_patches(batch["pixel_values_videos"], dtype=model.dtype)
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t) / args.steps
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"non-finite loss {loss}")
    if args.cpu_smoke:
        print(f"cpu smoke ok: {T} tokens ({visual} visual), loss {loss:.3f}, {step_s:.2f} s/step, "
              f"{flops / step_s / 1e9:.1f} GFLOP/s")
        return
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name)
    memory_gib = torch.cuda.max_memory_allocated() / 2**30
    details = (f"{T / step_s:,.0f} tokens/s, {step_s:.2f} s/step, seq {T} tokens = {visual} visual + {T - visual} text, "
               f"{n_frames} frames at {w}x{h}, {flops / step_s / 1e12:.0f} TFLOP/s model, {name}, attn={attn}, "
               f"liger={liger}, grad ckpt, frozen visual, peak mem {memory_gib:.0f} GiB")
    if peak is None:
        print(f"bench train_mfu: skipped (unknown peak bf16 TFLOPs for {name}; set BENCH_PEAK_TFLOPS; {details})")
        return
    mfu = flops / step_s / (peak * 1e12)
    print(f"bench train_mfu: ratio={mfu / TARGET_MFU:.2f} target=1.0 (mfu={mfu:.1%} of {peak:.0f} TFLOPs bf16, {details})")


if __name__ == "__main__":
    main()
