"""compare_outputs: the int8-vs-fp32 report judges results with AutoTimm's own decisions."""

from __future__ import annotations

import pytest
import torch

from autotimm_stream.export.quantize import compare_outputs
from autotimm_stream.runtime.bundle import BundleMeta


@pytest.mark.parametrize(
    "ref, out, threshold, agreement",
    [
        # sigmoid(0) == 0.5 is not above 0.5: neither network turns the label on
        ([[0.0, 3.0, -3.0]], [[-1e-3, 3.0, -3.0]], 0.5, 1.0),
        ([[0.0, 3.0, -3.0]], [[1e-3, 3.0, -3.0]], 0.5, 2 / 3),
        # both sigmoids saturate to 1.0: threshold 1.0 turns nothing on in either
        ([[20.0, 0.0, 0.0]], [[30.0, 0.0, 0.0]], 1.0, 1.0),
    ],
)
def test_multilabel_agreement_uses_autotimm_decision(ref, out, threshold, agreement):
    """AutoTimm's ImageClassifier: a label is on where ``logits.sigmoid() > threshold``."""
    meta = BundleMeta(task="multilabel", class_names=["a", "b", "c"], input_size=(8, 8), threshold=threshold)
    ref_t, out_t = torch.tensor(ref), torch.tensor(out)
    want = float(((ref_t.sigmoid() > threshold) == (out_t.sigmoid() > threshold)).float().mean())
    assert want == pytest.approx(agreement)
    report = compare_outputs(meta, (ref_t,), (out_t,))
    assert report["label_agreement"] == pytest.approx(agreement, abs=1e-4)
