"""Face tracking across consecutive frames, and the grayscale face crops Light-ASD reads.

Source: showlab/livecc ``data/production/distributed_lighter_asd/face_tracker.py`` and
``asd_utils.py``: a detection continues a track when its IoU with the track's box in the
previous frame is above 0.7; tracks shorter than 5 frames are dropped; crops are the box,
grayscale, resized to 112x112.

Differences from the reference, on purpose:

* Matching is one-to-one and greedy by IoU. When two detections overlap the same track the
  reference keeps the better one and loses the other; here the other starts its own track.
* A frame without detections ends every track (as in the reference); so does a frame that is
  missing from the video (``None``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLD = 0.7   # reference: iou4track
MIN_TRACK_FRAMES = 5  # reference: min_num_tracks


@dataclass
class Track:
    """One face over consecutive frames: ``frames[i]`` is a frame index into the window,
    ``boxes[i]`` its ``x1, y1, x2, y2`` box in pixels."""
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def box_array(self) -> np.ndarray:
        """``(len, 4)`` float32 boxes."""
        return np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)`` -> ``(N, M)``.
    Boxes are ``x1, y1, x2, y2`` (pixels); degenerate boxes have IoU 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def track_faces(detections: list[np.ndarray | None], iou_threshold: float = IOU_THRESHOLD,
                min_frames: int = MIN_TRACK_FRAMES) -> list[Track]:
    """Link per-frame detections into tracks.

    ``detections[t]``: ``(K, 4+)`` boxes of frame ``t`` (extra columns such as the score are
    ignored), an empty array, or ``None`` for a frame missing from the video. Returns the
    tracks with at least ``min_frames`` frames, in order of their first frame.
    """
    done: list[Track] = []
    active: list[Track] = []
    for t, dets in enumerate(detections):
        boxes = np.zeros((0, 4), np.float32) if dets is None or len(dets) == 0 else \
            np.asarray(dets, dtype=np.float32).reshape(len(dets), -1)[:, :4]
        if len(boxes) == 0:
            done += active
            active = []
            continue
        continued: list[Track] = []
        used = np.zeros(len(boxes), dtype=bool)
        if active:
            iou = iou_matrix(np.stack([tr.boxes[-1] for tr in active]), boxes)
            # greedy one-to-one matching, best pairs first
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(flat), len(boxes))
                if iou[i, j] <= iou_threshold:
                    break
                if active[i] is None or used[j]:
                    continue
                active[i].frames.append(t)
                active[i].boxes.append(boxes[j])
                continued.append(active[i])
                active[i] = None
                used[j] = True
            done += [tr for tr in active if tr is not None]
        for j in np.flatnonzero(~used):
            continued.append(Track([t], [boxes[j]]))
        active = continued
    done += active
    kept = [tr for tr in done if len(tr) >= min_frames]
    kept.sort(key=lambda tr: (tr.frames[0], tuple(tr.boxes[0])))
    return kept


def crop_faces(gray_frames: np.ndarray, track: Track, size: int = 112) -> np.ndarray:
    """The track's face crops: ``(len(track), size, size)`` uint8.

    ``gray_frames``: ``(T, H, W)`` uint8 grayscale frames of the window. Each crop is the box
    (clipped to the frame, at least 1 pixel) resized to ``size`` x ``size``, as in the
    reference (no margin, aspect ratio not kept).
    """
    import cv2

    h, w = gray_frames.shape[1:3]
    out = np.empty((len(track), size, size), dtype=np.uint8)
    for i, (t, box) in enumerate(zip(track.frames, track.boxes)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box[:4])
        x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
        x2, y2 = max(min(x2, w), x1 + 1), max(min(y2, h), y1 + 1)
        face = gray_frames[t, y1:y2, x1:x2]
        shrink = face.shape[0] > size and face.shape[1] > size
        out[i] = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out
