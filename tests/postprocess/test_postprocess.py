import pytest
import torch

from autotimm_stream.postprocess import Postprocessor, multilabel, topk
from autotimm_stream.runtime.bundle import BundleMeta


def meta(task: str, threshold=0.5, top_k=2) -> BundleMeta:
    return BundleMeta(task=task, class_names=["a", "b", "c"], input_size=(8, 8), top_k=top_k, threshold=threshold)


def test_topk_is_softmax_ordered():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    scores, ids = topk(logits, 2)
    assert ids.tolist() == [[1, 2], [0, 1]]
    torch.testing.assert_close(scores[0], torch.softmax(logits[0], 0)[[1, 2]])


def test_topk_clamps_k_to_class_count():
    scores, ids = topk(torch.zeros(1, 3), 10)
    assert ids.shape == (1, 3)


@pytest.mark.parametrize(
    "threshold, expected",
    [
        (0.5, [["b", "a"], []]),
        ([0.9, 0.5, 0.1], [["b", "c"], ["c"]]),  # per-class thresholds
    ],
)
def test_multilabel_applies_thresholds(threshold, expected):
    # sigmoid: a=0.62, b=0.88, c=0.27 ; second row a=0.05, b=0.12, c=0.18
    logits = torch.tensor([[0.5, 2.0, -1.0], [-3.0, -2.0, -1.5]])
    post = Postprocessor(meta("multilabel", threshold=threshold))
    got = [[p.label for p in row] for row in (out.classes for out in post((logits,), [(8, 8)] * 2))]
    assert got == expected


def test_multilabel_scores_are_sigmoid():
    scores, mask = multilabel(torch.tensor([[0.0, 0.1]]), 0.5)
    assert scores[0, 0].item() == 0.5 and mask.tolist() == [[False, True]]


@pytest.mark.parametrize(
    "logits, threshold",
    [
        ([[0.0, -1.0, 2.0]], 0.5),  # sigmoid(0) == 0.5 exactly: not a label
        ([[20.0, 5.0, 30.0]], 1.0),  # sigmoid saturates to 1.0 in float32: threshold 1.0 means none
        ([[0.0, 0.0, 0.0]], [0.5, 0.4, 0.6]),  # per class
    ],
)
def test_multilabel_is_strictly_above_threshold_as_autotimm(logits, threshold):
    """AutoTimm's ImageClassifier: ``preds = (logits.sigmoid() > self._threshold)``."""
    logits = torch.tensor(logits)
    want = (logits.sigmoid() > torch.as_tensor(threshold)).tolist()
    _, mask = multilabel(logits, threshold)
    assert mask.tolist() == want
    (out,) = Postprocessor(meta("multilabel", threshold=threshold))((logits,), [(8, 8)])
    assert sorted(p.class_id for p in out.classes) == [c for c, on in enumerate(want[0]) if on]


def test_classification_postprocessor_names_classes():
    post = Postprocessor(meta("classification", top_k=2))
    (out,) = post((torch.tensor([[0.0, 0.0, 5.0]]),), [(8, 8)])
    row = out.classes
    assert [p.label for p in row] == ["c", "a"] or [p.label for p in row] == ["c", "b"]
    assert row[0].class_id == 2 and 0.98 < row[0].score <= 1.0
