"""Task post-processing: network output -> per-frame predictions."""

from __future__ import annotations

import torch

from ..frame import Prediction
from ..runtime.bundle import BundleMeta
from .classification import multilabel, to_predictions, topk

__all__ = ["Postprocessor", "topk", "multilabel", "to_predictions"]


class Postprocessor:
    """Turns a batch of raw outputs into one prediction list per frame, as the bundle's task says."""

    def __init__(self, meta: BundleMeta, top_k: int | None = None, threshold: float | list[float] | None = None):
        self.meta = meta
        self.task = meta.task
        self.top_k = top_k or meta.top_k
        thr = meta.threshold if threshold is None else threshold
        self.threshold = torch.as_tensor(thr, dtype=torch.float32)

    def __call__(self, logits: torch.Tensor) -> list[list[Prediction]]:
        """logits (Tensor[B, C]) -> B lists of predictions, best first."""
        names = self.meta.class_names
        if self.task == "multilabel":
            scores, mask = multilabel(logits, self.threshold.to(logits.device))
            order = scores.argsort(dim=1, descending=True)
            return to_predictions(scores.gather(1, order), order, names, mask.gather(1, order))
        scores, ids = topk(logits, self.top_k)
        return to_predictions(scores, ids, names)
