"""Classification outputs: softmax top-K and multi-label sigmoid + threshold.

Pure tensor functions (shapes in the docstrings), testable without threads or models.
"""

from __future__ import annotations

import torch

from ..messages import Prediction

__all__ = ["topk", "multilabel", "to_predictions"]


def topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax top-K per row.

    Args:
        logits (Tensor[B, C]): raw scores.
        k: how many classes to keep (clamped to C).

    Returns:
        scores (Tensor[B, k]) best first, and class ids (Tensor[B, k]).
    """
    probs = torch.softmax(logits.float(), dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)


def multilabel(logits: torch.Tensor, threshold: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores and which classes pass their threshold.

    A class passes when its score is strictly above its threshold, as AutoTimm's
    ``ImageClassifier`` decides (``logits.sigmoid() > threshold``).

    Args:
        logits (Tensor[B, C]): raw scores.
        threshold: one value, or Tensor[C] with one threshold per class.

    Returns:
        scores (Tensor[B, C]) and a boolean mask (Tensor[B, C]) of classes above threshold.
    """
    scores = torch.sigmoid(logits.float())
    thr = torch.as_tensor(threshold, dtype=scores.dtype, device=scores.device)
    return scores, scores > thr


def to_predictions(
    scores: torch.Tensor, ids: torch.Tensor, names: list[str], keep: torch.Tensor | None = None
) -> list[list[Prediction]]:
    """Per-row lists of :class:`Prediction`, best first.

    ``scores``/``ids`` are Tensor[B, K]; ``keep`` (Tensor[B, K] bool) filters entries when given.
    """
    scores_l = scores.cpu().tolist()
    ids_l = ids.cpu().tolist()
    keep_l = keep.cpu().tolist() if keep is not None else None
    out: list[list[Prediction]] = []
    for r, (row_s, row_i) in enumerate(zip(scores_l, ids_l)):
        preds = [
            Prediction(int(c), names[int(c)], float(s))
            for j, (s, c) in enumerate(zip(row_s, row_i))
            if keep_l is None or keep_l[r][j]
        ]
        out.append(preds)
    return out
