"""Face detection with SCRFD (insightface) through onnxruntime, batched across frames.

Source: Guo et al., "Sample and Computation Redistribution for Efficient Face Detection"
(SCRFD, ICLR 2022); the reference uses insightface's ``buffalo_sc`` detector
(``det_500m.onnx``, SCRFD-500M) at 288x160 with score threshold 0.5 and NMS IoU 0.4
(insightface's defaults), key points off (showlab/livecc
``data/production/distributed_lighter_asd/face_detector.py``).

The model has three heads (strides 8, 16, 32), two anchors per cell. For each anchor it
outputs a face probability and the distances (in units of the stride) from the anchor centre
to the box's left, top, right and bottom edges.

Batching: insightface's exports come either with dynamic axes (``buffalo_sc``) or fixed to
``1x3x640x640`` (``scrfd_500m_bnkps_640.onnx``). A fixed export is rewritten in memory before
loading: symbolic batch/height/width, the FPN's fixed-size ``Resize`` turned into a 2x scale
and the output ``Reshape``'s batch of 1 turned into "copy". This needs the ``onnx`` package;
the file on disk is never changed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: insightface SCRFD defaults
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression (OpenCV's ``cv2.dnn.NMSBoxes``).

    ``boxes``: ``(N, 4)`` float ``x1, y1, x2, y2`` in pixels; ``scores``: ``(N,)``, > 0.
    Returns the kept indices, highest score first.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    import cv2

    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).astype(np.float64)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float64).tolist(), 0.0, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def anchor_centers(height: int, width: int) -> np.ndarray:
    """``(A, 2)`` anchor centres ``x, y`` in pixels, in the model's output order
    (stride 8, 16, 32; row-major cells; two anchors per cell)."""
    centers = []
    for stride in STRIDES:
        ys, xs = np.mgrid[: height // stride, : width // stride]
        c = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        centers.append(np.repeat(c, ANCHORS_PER_CELL, axis=0))
    return np.concatenate(centers)


def decode_boxes(scores: np.ndarray, distances: np.ndarray, centers: np.ndarray,
                 score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = NMS_IOU) -> np.ndarray:
    """One frame's raw outputs -> ``(K, 5)`` boxes ``x1, y1, x2, y2, score`` after threshold and NMS.

    ``scores``: ``(A,)`` probabilities; ``distances``: ``(A, 4)`` in pixels (already times the
    stride); ``centers``: ``(A, 2)`` from :func:`anchor_centers`.
    """
    keep = scores >= score_threshold
    if not keep.any():
        return np.zeros((0, 5), dtype=np.float32)
    c, d, s = centers[keep], distances[keep], scores[keep]
    boxes = np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1)
    order = nms(boxes, s, iou_threshold)
    return np.column_stack([boxes[order], s[order]]).astype(np.float32)


@dataclass
class ScrfdOutputs:
    """Indices of the score and box outputs of one stride in the session's output list."""
    score: int
    bbox: int
    stride: int


class FaceDetector:
    """SCRFD on batches of frames.

    ``path``: the ONNX file; ``providers``: onnxruntime execution providers (names or
    ``(name, options)``), in order of preference, those not installed skipped; ``threads``: intra-op threads on CPU (``None``: onnxruntime's default).
    Call :meth:`detect` with ``(N, H, W, 3)`` uint8 RGB frames, H and W multiples of 32.
    """

    def __init__(self, path: str, providers: list[str] | None = None, threads: int | None = None,
                 score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = NMS_IOU,
                 batch_size: int = 32):
        import onnxruntime as ort

        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the rewrite leaves unused initialisers; not worth a warning
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # idle threads must not spin: decode threads share these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        # entries are names or (name, options); keep those this onnxruntime build has
        providers = [p for p in (providers or ["CPUExecutionProvider"])
                     if (p[0] if isinstance(p, tuple) else p) in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(_dynamic_model_bytes(path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self._outputs = _output_layout(self.session)
        self._centers: dict[tuple[int, int], np.ndarray] = {}

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """``(N, H, W, 3)`` uint8 RGB -> N arrays ``(K, 5)``: ``x1, y1, x2, y2, score`` in pixels.

        Raises ``ValueError`` when H or W is not a multiple of 32 (the FPN needs it).
        """
        n, h, w = frames.shape[:3]
        if h % 32 or w % 32:
            raise ValueError(f"detector input {w}x{h} must be multiples of 32 pixels")
        if (h, w) not in self._centers:
            self._centers[(h, w)] = anchor_centers(h, w)
        centers = self._centers[(h, w)]
        out: list[np.ndarray] = []
        for i in range(0, n, self.batch_size):
            blob = _to_blob(frames[i:i + self.batch_size])
            raw = self.session.run(None, {self.input_name: blob})
            scores = np.concatenate([raw[o.score].reshape(len(blob), -1) for o in self._outputs], axis=1)
            dists = np.concatenate([raw[o.bbox].reshape(len(blob), -1, 4) * o.stride for o in self._outputs], axis=1)
            for j in range(len(blob)):
                out.append(decode_boxes(scores[j], dists[j], centers, self.score_threshold, self.iou_threshold))
        return out


def _to_blob(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, 3, H, W)``, ``(x - 127.5) / 128`` (insightface)."""
    blob = frames.transpose(0, 3, 1, 2).astype(np.float32)
    blob -= 127.5
    blob *= 1.0 / 128.0
    return blob


def _output_layout(session) -> list[ScrfdOutputs]:
    """Find the score/box outputs per stride: by name (``score_8``, ``bbox_8``) or, for
    exports with generic names, by position (scores, boxes, key points; each by stride)."""
    names = [o.name for o in session.get_outputs()]
    if all(f"score_{s}" in names and f"bbox_{s}" in names for s in STRIDES):
        return [ScrfdOutputs(names.index(f"score_{s}"), names.index(f"bbox_{s}"), s) for s in STRIDES]
    if len(names) not in (6, 9):
        raise ValueError(f"not an SCRFD model: outputs {names}")
    return [ScrfdOutputs(i, i + 3, s) for i, s in enumerate(STRIDES)]


def _dynamic_model_bytes(path: str) -> bytes:
    """The ONNX model at ``path``, rewritten to dynamic batch/height/width when it is fixed."""
    with open(path, "rb") as f:
        data = f.read()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    probe = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    shape = probe.get_inputs()[0].shape
    if all(not isinstance(d, int) for d in (shape[0], shape[2], shape[3])):
        return data  # already dynamic (insightface's buffalo_sc det_500m.onnx)
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{path} has a fixed input shape {shape}; batching it needs the 'onnx' "
                          f"package (pip install onnx) or a dynamic export such as insightface's "
                          f"buffalo_sc/det_500m.onnx") from exc
    model = onnx.load_from_string(data)
    graph = model.graph
    for name, dim in zip(("batch", None, "height", "width"), graph.input[0].type.tensor_type.shape.dim):
        if name:
            dim.ClearField("dim_value")
            dim.dim_param = name
    for out in graph.output:
        for name, dim in zip(("batch", "anchors"), out.type.tensor_type.shape.dim):
            dim.ClearField("dim_value")
            dim.dim_param = name
    del graph.value_info[:]  # stale fixed shapes; onnxruntime re-infers them
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in initializers:
            target = initializers[node.input[1]]
            dims = numpy_helper.to_array(target).copy()
            if dims[0] == 1:
                dims[0] = 0  # 0 = copy the input's batch dimension
                target.CopyFrom(numpy_helper.from_array(dims, target.name))
        elif node.op_type == "Resize" and len(node.input) == 4 and node.input[3]:
            # FPN top-down path: a fixed output size becomes a 2x nearest upsampling
            scales = f"{node.output[0]}__scales"
            graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), scales))
            node.input[2] = scales
            del node.input[3]
    return model.SerializeToString()
