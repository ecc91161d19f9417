"""Light-ASD: a light-weight audio-visual active speaker detector, in PyTorch.

Source: Liao, Duan, Feng, Wei, Zheng, "A Light Weight Model for Active Speaker Detection",
CVPR 2023 (github.com/Junhua-Liao/Light-ASD, MIT licence). Written here from the paper and
from the structure of the published checkpoints (``finetuning_TalkSet.model``,
``pretrain_AVA_CVPR.model``): parameter names and shapes follow the checkpoint so that all of
its 192 keys load with ``strict=True``, the visual-only head ``lossV.FC`` included.

Structure (paper section 3):

* **Visual encoder.** Three blocks on grayscale face crops, each two parallel branches that
  split a 3-D convolution into a spatial ``1xkxk`` and a temporal ``kx1x1`` convolution
  (k = 3 and 5), summed and mixed by a ``1x1x1`` convolution. 1 -> 32 (stride 2) -> 64 -> 128
  channels with 3x3 spatial max pooling between blocks; global spatial max pooling gives one
  128-d vector per video frame.
* **Audio encoder.** The same design in 2-D on the MFCC "image" (13 coefficients x time):
  ``kx1`` along the coefficients, ``1xk`` along time; two max pools of stride 2 along time
  bring the 100 Hz MFCC rate down to the 25 Hz video rate; mean over coefficients.
* **Backend.** Audio and visual features are added and passed through a forward GRU, then a
  GRU over the reversed sequence (the paper's "bidirectional GRU" as two stacked one-way
  GRUs), each followed by GELU.
* **Head.** ``lossAV.FC`` (128 -> 2); the speaking score is the logit of class 1, so
  ``score > 0`` means that face is speaking (the reference's decision rule).
  ``lossV.FC`` is the visual-only auxiliary head used in training; it is loaded, not used.

Padded batches: :meth:`LightASD.forward` takes per-track ``lengths`` and masks the padded
frames before every temporal convolution and pool and reverses each sequence within its own
length for the backward GRU, so a track scores the same alone or in a padded batch (the
reference pads with zeros that leak into the last frames and the whole backward pass).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Grayscale normalisation of the face crops (Light-ASD's training statistics, 0..1 scale).
VISUAL_MEAN = 0.4161
VISUAL_STD = 0.1688
#: MFCC frames per video frame: 100 Hz MFCC / 25 fps video.
AUDIO_FRAMES_PER_VIDEO_FRAME = 4
CROP_SIZE = 112  # pixels, square grayscale face crops


def _bn(channels: int, dims: int) -> nn.Module:
    # momentum/eps as in the published training code; only eps matters at inference
    cls = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
    return cls(channels, momentum=0.01, eps=0.001)


class VisualBlock(nn.Module):
    """Two (spatial -> temporal) branches with k = 3 and 5, summed, then a 1x1x1 conv.

    Input and output ``(B, C, T, H, W)``; ``stride_hw=2`` halves H and W.
    """

    def __init__(self, cin: int, cout: int, stride_hw: int = 1):
        super().__init__()
        for k in (3, 5):
            setattr(self, f"s_{k}", nn.Conv3d(cin, cout, (1, k, k), stride=(1, stride_hw, stride_hw),
                                              padding=(0, k // 2, k // 2), bias=False))
            setattr(self, f"bn_s_{k}", _bn(cout, 3))
            setattr(self, f"t_{k}", nn.Conv3d(cout, cout, (k, 1, 1), padding=(k // 2, 0, 0), bias=False))
            setattr(self, f"bn_t_{k}", _bn(cout, 3))
        self.last = nn.Conv3d(cout, cout, 1, bias=False)
        self.bn_last = _bn(cout, 3)
        self.relu = nn.ReLU(inplace=True)

    def _branch(self, x: torch.Tensor, k: int, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.relu(getattr(self, f"bn_s_{k}")(getattr(self, f"s_{k}")(x)))
        if mask is not None:  # padded frames must look like the conv's own zero padding
            x = x * mask
        return self.relu(getattr(self, f"bn_t_{k}")(_temporal_conv(getattr(self, f"t_{k}"), x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self._branch(x, 3, mask) + self._branch(x, 5, mask)
        return self.relu(self.bn_last(self.last(x)))


def _temporal_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A ``kx1x1`` Conv3d run as a Conv2d on ``(B, C, T, H*W)``: same result, about 3x faster
    on CPU, where PyTorch's Conv3d takes a slow path."""
    b, c, t, h, w = x.shape
    weight = conv.weight[..., 0]  # (out, in, k, 1)
    y = nn.functional.conv2d(x.reshape(b, c, t, h * w), weight, conv.bias, padding=(conv.padding[0], 0))
    return y.reshape(b, -1, t, h, w)


class AudioBlock(nn.Module):
    """The 2-D analogue of :class:`VisualBlock` on ``(B, C, n_mfcc, T_audio)``:
    ``kx1`` convs along the MFCC coefficients, then ``1xk`` along time."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        for k in (3, 5):
            setattr(self, f"m_{k}", nn.Conv2d(cin, cout, (k, 1), padding=(k // 2, 0), bias=False))
            setattr(self, f"bn_m_{k}", _bn(cout, 2))
            setattr(self, f"t_{k}", nn.Conv2d(cout, cout, (1, k), padding=(0, k // 2), bias=False))
            setattr(self, f"bn_t_{k}", _bn(cout, 2))
        self.last = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_last = _bn(cout, 2)
        self.relu = nn.ReLU(inplace=True)

    def _branch(self, x: torch.Tensor, k: int, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.relu(getattr(self, f"bn_m_{k}")(getattr(self, f"m_{k}")(x)))
        if mask is not None:
            x = x * mask
        return self.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self._branch(x, 3, mask) + self._branch(x, 5, mask)
        return self.relu(self.bn_last(self.last(x)))


class VisualEncoder(nn.Module):
    """``(B, 1, T, 112, 112)`` normalised crops -> ``(B, T, 128)``."""

    def __init__(self):
        super().__init__()
        self.block1 = VisualBlock(1, 32, stride_hw=2)
        self.block2 = VisualBlock(32, 64)
        self.block3 = VisualBlock(64, 128)

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """3x3 stride-2 spatial max pool, as a 2-D pool over ``(B, C*T, H, W)`` (faster than 3-D)."""
        b, c, t, h, w = x.shape
        y = nn.functional.max_pool2d(x.reshape(b, c * t, h, w), 3, stride=2, padding=1)
        return y.reshape(b, c, t, *y.shape[-2:])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = None if mask is None else mask[:, None, :, None, None]
        x = self.pool(self.block1(x, m))
        x = self.pool(self.block2(x, m))
        x = self.block3(x, m)
        return x.amax(dim=(3, 4)).transpose(1, 2)  # global spatial max pool


class AudioEncoder(nn.Module):
    """``(B, 1, 13, 4T)`` MFCC -> ``(B, T, 128)``."""

    def __init__(self):
        super().__init__()
        self.block1 = AudioBlock(1, 32)
        self.block2 = AudioBlock(32, 64)
        self.block3 = AudioBlock(64, 128)
        # stride-2 max pool along time only: 100 Hz -> 50 Hz -> 25 Hz
        self.pool = nn.MaxPool2d((1, 3), stride=(1, 2), padding=(0, 1))

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        m = [None] * 3 if masks is None else [mk[:, None, None, :] for mk in masks]
        x = self.block1(x, m[0])
        x = self.pool(x if m[0] is None else x * m[0])  # post-ReLU, so 0 acts as the pool's -inf
        x = self.block2(x, m[1])
        x = self.pool(x if m[1] is None else x * m[1])
        x = self.block3(x, m[2])
        return x.mean(dim=2).transpose(1, 2)


class BiGRU(nn.Module):
    """A forward GRU, GELU, a GRU over each sequence reversed, reversed back, GELU.
    ``(B, T, 128)`` -> ``(B, T, 128)``."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels, num_layers=1, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels, num_layers=1, batch_first=True)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.gelu(self.gru_forward(x)[0])  # causal: padding at the end cannot leak back
        index = _reverse_index(x.shape[0], x.shape[1], lengths, x.device)
        x = torch.gather(x, 1, index[..., None].expand_as(x))
        x = self.gru_backward(x)[0]
        x = torch.gather(x, 1, index[..., None].expand_as(x))
        return self.gelu(x)


def _reverse_index(batch: int, steps: int, lengths: torch.Tensor | None, device) -> torch.Tensor:
    """Per-row time index that reverses the first ``lengths[b]`` steps and keeps the rest."""
    t = torch.arange(steps, device=device).expand(batch, steps)
    if lengths is None:
        return t.flip(1).contiguous()
    n = lengths.to(device)[:, None]
    return torch.where(t < n, n - 1 - t, t)


class ASDModel(nn.Module):
    """Encoders plus backend; the checkpoint's ``model.*`` keys."""

    def __init__(self):
        super().__init__()
        self.visualEncoder = VisualEncoder()
        self.audioEncoder = AudioEncoder()
        self.GRU = BiGRU(128)


class Head(nn.Module):
    """A 128 -> 2 classifier; the checkpoint's ``lossAV.FC`` / ``lossV.FC``."""

    def __init__(self):
        super().__init__()
        self.FC = nn.Linear(128, 2)


class LightASD(nn.Module):
    """Light-ASD with the checkpoint's key layout (``model.*``, ``lossAV.FC``, ``lossV.FC``).

    Call ``model(faces, mfcc, lengths)``:

    * ``faces``: ``(B, T, 112, 112)`` grayscale crops, values 0..255 (uint8 or float);
    * ``mfcc``: ``(B, 4T, 13)`` MFCC at 100 Hz (``python_speech_features`` defaults, on
      16 kHz audio scaled to the int16 range);
    * ``lengths``: optional ``(B,)`` valid video frames per track (padded batches).

    Returns ``(B, T)`` float scores (logit of "speaking"); ``> 0`` means speaking. Entries past
    a track's length are meaningless.
    """

    def __init__(self):
        super().__init__()
        self.model = ASDModel()
        self.lossAV = Head()
        self.lossV = Head()  # visual-only training head: present so the checkpoint loads strictly

    def forward(self, faces: torch.Tensor, mfcc: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t = faces.shape[:2]
        if mfcc.shape[:2] != (b, AUDIO_FRAMES_PER_VIDEO_FRAME * t):
            raise ValueError(f"mfcc shape {tuple(mfcc.shape)} does not match faces {tuple(faces.shape)}: "
                             f"expected ({b}, {AUDIO_FRAMES_PER_VIDEO_FRAME * t}, 13)")
        v_mask = a_masks = None
        if lengths is not None:
            steps = torch.arange(t, device=faces.device)
            v_mask = (steps[None, :] < lengths.to(faces.device)[:, None]).to(torch.float32)
            # audio time resolutions 4T, 2T, T: a video frame's mask covers its audio frames
            a_masks = [v_mask.repeat_interleave(r, dim=1) for r in (4, 2, 1)]
        x = faces.to(torch.float32).unsqueeze(1) / 255.0
        x = (x - VISUAL_MEAN) / VISUAL_STD
        visual = self.model.visualEncoder(x, v_mask)
        audio = self.model.audioEncoder(mfcc.to(torch.float32).unsqueeze(1).transpose(2, 3), a_masks)
        joint = self.model.GRU(visual + audio, lengths)
        return self.lossAV.FC(joint)[..., 1]

    def fused(self) -> "LightASD":
        """An inference copy with every BatchNorm folded into the convolution before it
        (about 25% less CPU time; same scores to float precision). Its state dict no longer
        matches the checkpoint, so load weights into the original, then call this."""
        fused = copy.deepcopy(self).eval()
        for encoder in (fused.model.visualEncoder, fused.model.audioEncoder):
            for block in (encoder.block1, encoder.block2, encoder.block3):
                first = "s" if isinstance(block, VisualBlock) else "m"
                for name in (f"{first}_3", "t_3", f"{first}_5", "t_5", "last"):
                    setattr(block, name, fuse_conv_bn_eval(getattr(block, name), getattr(block, f"bn_{name}")))
                    setattr(block, f"bn_{name}", nn.Identity())
        return fused


def load_lightasd(path: str, device: str | torch.device = "cpu") -> LightASD:
    """Build :class:`LightASD` and load a published checkpoint with ``strict=True``.

    Raises ``FileNotFoundError`` when ``path`` does not exist and ``RuntimeError`` (from
    ``load_state_dict``) when any key is missing or unexpected.
    """
    model = LightASD()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)
