"""Task post-processing: raw network outputs -> per-frame task outputs.

One :class:`Postprocessor` per run, chosen by the bundle's task and head. It returns, per frame,
the :class:`~autotimm_stream.messages.TaskOutputs` its task sets (``classes``, ``detections``, or
``mask`` + ``class_fractions``); boxes and masks are in source-frame pixels.
"""

from __future__ import annotations

import torch

from ..messages import ClassFraction, Detection, Prediction, TaskOutputs
from ..runtime.bundle import BundleMeta
from ..runtime.preprocess import Geometry, plan
from ..tasks import Task
from .classification import multilabel, to_predictions, topk
from .detection import decode_dense, on_frame, to_frame_pixels
from .segmentation import class_fractions, logits_to_mask

__all__ = [
    "Postprocessor",
    "topk",
    "multilabel",
    "to_predictions",
    "decode_dense",
    "on_frame",
    "to_frame_pixels",
    "logits_to_mask",
    "class_fractions",
]


class Postprocessor:
    """Turns a batch of raw outputs into one set of task outputs per frame, as the bundle says.

    Args:
        meta: the bundle's metadata (task, head, classes, decode parameters).
        top_k: classification: override the bundle's top-K.
        threshold: multi-label: override the bundle's threshold(s); detection: the score threshold.
    """

    def __init__(self, meta: BundleMeta, top_k: int | None = None, threshold: float | list[float] | None = None):
        self.meta = meta
        self.task = meta.task
        self.top_k = top_k or meta.top_k
        self.spec = meta.preprocess_spec()
        self.decode = dict(meta.decode)
        if self.task is Task.DETECTION:
            if threshold is not None:
                if isinstance(threshold, list):
                    raise ValueError("detection takes one score threshold, not one per class")
                self.decode["score_thresh"] = float(threshold)
        else:
            thr = meta.threshold if threshold is None else threshold
            self.threshold = torch.as_tensor(thr, dtype=torch.float32)
        self._geometry: dict[tuple[int, int], Geometry] = {}

    def geometry(self, frame_hw: tuple[int, int]) -> Geometry:
        geo = self._geometry.get(frame_hw)
        if geo is None:
            geo = self._geometry[frame_hw] = plan(frame_hw[0], frame_hw[1], self.spec)
        return geo

    def __call__(self, outputs: tuple[torch.Tensor, ...], frames_hw: list[tuple[int, int]]) -> list[TaskOutputs]:
        """``outputs``: the network's raw outputs for a batch; ``frames_hw``: each frame's (H, W)."""
        if self.task is Task.DETECTION:
            return self._detection(outputs, frames_hw)
        if self.task is Task.SEGMENTATION:
            return self._segmentation(outputs[0], frames_hw)
        return [TaskOutputs(classes=preds) for preds in self._classes(outputs[0])]

    def _classes(self, logits: torch.Tensor) -> list[list[Prediction]]:
        names = self.meta.class_names
        if self.task is Task.MULTILABEL:
            scores, mask = multilabel(logits, self.threshold.to(logits.device))
            order = scores.argsort(dim=1, descending=True)
            return to_predictions(scores.gather(1, order), order, names, mask.gather(1, order))
        scores, ids = topk(logits, self.top_k)
        return to_predictions(scores, ids, names)

    def _detection(self, outputs: tuple[torch.Tensor, ...], frames_hw: list[tuple[int, int]]) -> list[TaskOutputs]:
        d = self.decode
        levels = len(d["strides"])
        cls, reg = outputs[:levels], outputs[levels : 2 * levels]
        ctr = outputs[2 * levels : 3 * levels] if self.meta.head == "fcos" else None
        decoded = decode_dense(
            cls,
            reg,
            ctr,
            d["strides"],
            self.spec.size,
            float(d["score_thresh"]),
            float(d["nms_thresh"]),
            int(d["max_detections"]),
        )
        names = self.meta.class_names
        out = []
        for (boxes, scores, labels), hw in zip(decoded, frames_hw):
            geo = self.geometry(hw)
            # AutoTimm's boxes, zero-area ones included, less those wholly in the letterbox padding
            keep = on_frame(boxes, geo)
            pixels = to_frame_pixels(boxes[keep], geo, hw).cpu().tolist()
            dets = [
                Detection((b[0], b[1], b[2], b[3]), int(c), names[int(c)], float(s))
                for b, s, c in zip(pixels, scores[keep].cpu().tolist(), labels[keep].cpu().tolist())
            ]
            out.append(TaskOutputs(detections=dets))
        return out

    def _segmentation(self, logits: torch.Tensor, frames_hw: list[tuple[int, int]]) -> list[TaskOutputs]:
        names = self.meta.class_names
        out = []
        for i, hw in enumerate(frames_hw):
            mask = logits_to_mask(logits[i], self.geometry(hw), self.spec.size, hw).cpu().numpy()
            fractions = class_fractions(mask, len(names))
            present = [ClassFraction(c, names[c], f) for c, f in enumerate(fractions) if f > 0]
            out.append(TaskOutputs(mask=mask, class_fractions=present))
        return out
