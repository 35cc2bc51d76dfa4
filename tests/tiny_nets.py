"""Small networks shaped like AutoTimm's detector and segmentor, for engine tests that need no AutoTimm.

Their weights are random (seeded); the FCOS-shaped one biases its class and centerness logits so
a few hundred locations pass a 0.05 score threshold and NMS has real work to do.
"""

from __future__ import annotations

import torch
from torch import nn

from autotimm_stream.export.timm import export_module
from autotimm_stream.runtime.bundle import BundleMeta

CLASSES = ["circle", "square", "triangle"]


class TinyFCOS(nn.Module):
    """Outputs (cls[L], reg[L], ctr[L]) over ``strides``, like ObjectDetector(detection_arch='fcos')."""

    def __init__(self, num_classes: int = 3, strides: tuple[int, ...] = (8, 16, 32), centerness: bool = True):
        super().__init__()
        self.strides = strides
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.cls = nn.Conv2d(8, num_classes, 3, padding=1)
        self.reg = nn.Conv2d(8, 4, 3, padding=1)
        self.ctr = nn.Conv2d(8, 1, 3, padding=1) if centerness else None

    def forward(self, x: torch.Tensor):
        feats = [nn.functional.avg_pool2d(torch.relu(self.stem(x)), s) for s in self.strides]
        # A distinct offset per location keeps flat image regions from producing equal scores:
        # ties would make NMS's choice depend on float noise between batch compositions.
        cls = [self.cls(f) - 1.0 + _ramp(f) for f in feats]
        reg = [torch.relu(self.reg(f)) * s * 2 + s for f, s in zip(feats, self.strides)]
        if self.ctr is None:
            return cls, reg
        return cls, reg, [self.ctr(f) + 1.0 for f in feats]


def _ramp(f: torch.Tensor) -> torch.Tensor:
    # built from ones_like so that a traced bundle makes it on the input's device (CPU or CUDA)
    ones = torch.ones_like(f[:1, :1])
    h, w = f.shape[-2:]
    index = (ones.cumsum(2) - 1) * w + (ones.cumsum(3) - 1)
    return index * (0.5 / (h * w))


class TinySeg(nn.Module):
    """Logits at 1/4 of the input, like SemanticSegmentor(head_type='deeplabv3plus')."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, stride=2, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * 4.0


def export_tiny_detector(path, size: int = 128, head: str = "fcos", seed: int = 0, **export_kwargs) -> BundleMeta:
    torch.manual_seed(seed)
    net = TinyFCOS(centerness=head == "fcos")
    meta = BundleMeta(
        task="detection",
        head=head,
        class_names=list(CLASSES),
        input_size=(size, size),
        resize="letterbox",
        transform_backend="albumentations",
        decode={"score_thresh": 0.05, "nms_thresh": 0.5, "max_detections": 50, "strides": list(net.strides)},
        model_name=f"tiny-{head}",
    )
    return export_module(net, meta, path, **export_kwargs)


def export_tiny_segmentor(path, size: int = 96, seed: int = 0) -> BundleMeta:
    torch.manual_seed(seed)
    meta = BundleMeta(
        task="segmentation",
        head="deeplabv3plus",
        class_names=["background", *CLASSES],
        input_size=(size, size),
        resize="squash",
        transform_backend="albumentations",
        model_name="tiny-seg",
    )
    return export_module(TinySeg(num_classes=4), meta, path)
