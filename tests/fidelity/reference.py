"""AutoTimm's own answer for each frame, and the same answer from a perturbed resize.

The network input of a frame is what the case's DataModule validation set yields for it: AutoTimm's
dataset reads the PNG (torchvision ``ImageFolder``: ``PIL.Image.open(...).convert("RGB")``;
``ImageFolderCV2``, ``COCODetectionDataset``, ``SemanticSegmentationDataset``: ``cv2.imread`` then
``BGR2RGB``) and applies the eval transform the DataModule built. The trained model (in memory,
eval mode) runs on it alone (a batch of one; detectors: two copies, see :func:`decode`), and its
output is decoded as AutoTimm does:

- classification: softmax (sigmoid when ``multi_label``), top-K;
- detection: ``model.predict`` (``decode_fcos_detections``), boxes in network-input pixels, mapped
  to the frame through the letterbox the transform really applied: ``x = (x_in - pad_left) / sx``,
  with the pads and scale read off the transformed full-frame box of the frame's annotation. Of
  AutoTimm's list, the boxes that do not exist on the frame are left out and the rest clipped to
  it, as docs/detection.md specifies (inverted boxes; boxes wholly in the padding);
- segmentation: logits upsampled bilinearly (``align_corners=False``) to the frame, argmax.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checkpoints import Case

__all__ = ["Reference", "Letterbox", "reference", "inputs", "perturbed_input", "decode"]

TOP_K = 5  # the export's default --top-k


@dataclass(frozen=True)
class Letterbox:
    """Where the eval transform put a frame in the network input: pads (left, top), resized (w, h)."""

    pad_left: int
    pad_top: int
    width: int
    height: int
    sx: float  # resized width / frame width
    sy: float


@dataclass
class Reference:
    """AutoTimm's answer for one frame."""

    name: str
    hw: tuple[int, int]
    x: torch.Tensor  # [3, h, w] the network input the DataModule's validation set yields
    classes: list[tuple[int, float]] = field(default_factory=list)  # (class id, probability), best first
    boxes: np.ndarray | None = None  # [N, 4] float64 frame pixels
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    mask: np.ndarray | None = None  # [H, W] int64 class ids
    letterbox: Letterbox | None = None
    raw_boxes: int = 0  # boxes AutoTimm returned before the frame's filter


def _letterbox(sample: dict[str, Any], hw: tuple[int, int]) -> Letterbox:
    """The geometry read off the frame's transformed full-frame box ``[pl, pt, pl + rw, pt + rh]``."""
    x1, y1, x2, y2 = (float(v) for v in sample["boxes"][0])
    ints = [round(v) for v in (x1, y1, x2 - x1, y2 - y1)]
    assert max(abs(a - b) for a, b in zip(ints, (x1, y1, x2 - x1, y2 - y1))) < 1e-3, (x1, y1, x2, y2)
    pl, pt, rw, rh = ints
    return Letterbox(pl, pt, rw, rh, rw / hw[1], rh / hw[0])


def inputs(case: Case) -> dict[str, tuple[torch.Tensor, tuple[int, int], Letterbox | None]]:
    """Frame name -> (network input, frame (H, W), letterbox for detection), from the case's
    DataModule validation set."""
    ds = case.val_dataset
    out = {}
    for i in range(len(ds)):
        item = ds[i]
        if case.task == "classification":
            path = ds.samples[i][0]
            x, lb = item[0], None
            with Image.open(path) as im:
                hw = (im.height, im.width)
        elif case.task == "detection":
            path = ds.img_id_to_info[ds.image_ids[i]]["file_name"]
            x, hw = item["image"], (int(item["orig_size"][0]), int(item["orig_size"][1]))
            lb = _letterbox(item, hw)
        else:
            path = ds.samples[i]["image_path"]
            x, hw, lb = item["image"], (int(item["orig_size"][0]), int(item["orig_size"][1])), None
        out[os.path.basename(path)] = (x, hw, lb)
    return out


@torch.no_grad()
def decode(case: Case, name: str, x: torch.Tensor, hw: tuple[int, int], lb: Letterbox | None = None) -> Reference:
    """Run the trained model on ``x`` alone and decode as AutoTimm does (see the module docstring)."""
    model = case.made.model.eval()
    ref = Reference(name, hw, x)
    batch = x[None].float()
    if case.task == "classification":
        logits = model(batch)
        multi = bool(case.made.hparams.get("multi_label", False))
        probs = (torch.sigmoid(logits) if multi else torch.softmax(logits, dim=1))[0]
        p, i = probs.topk(min(TOP_K, probs.numel()))
        ref.classes = list(zip(i.tolist(), p.tolist()))
    elif case.task == "detection":
        assert lb is not None, "detection needs the frame's letterbox"
        # A batch of two copies: alone, a 128-px input's 1x1 P7 map trips F.group_norm's "more than one
        # value per channel" guard (AutoTimm's own predict fails on it; its validation loader batches
        # 4). GroupNorm is per sample, so the copy changes nothing else.
        det = model.predict(batch.expand(2, -1, -1, -1).contiguous())[0]
        b = det["boxes"].double().numpy()
        ref.raw_boxes = len(b)
        upright = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
        on_frame = (
            (b[:, 0] <= lb.pad_left + lb.width)
            & (b[:, 2] >= lb.pad_left)
            & (b[:, 1] <= lb.pad_top + lb.height)
            & (b[:, 3] >= lb.pad_top)
        )
        keep = upright & on_frame
        frame = b[keep].copy()
        frame[:, 0::2] = ((frame[:, 0::2] - lb.pad_left) / lb.sx).clip(0, hw[1])
        frame[:, 1::2] = ((frame[:, 1::2] - lb.pad_top) / lb.sy).clip(0, hw[0])
        ref.boxes, ref.letterbox = frame, lb
        ref.labels = det["labels"][torch.from_numpy(keep)].tolist()
        ref.scores = det["scores"][torch.from_numpy(keep)].tolist()
    else:
        logits = model(batch)
        up = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
        ref.mask = up.argmax(1)[0].numpy()
    return ref


def reference(case: Case) -> dict[str, Reference]:
    """AutoTimm's answer for every frame of the case's validation set, by frame name."""
    return {name: decode(case, name, x, hw, lb) for name, (x, hw, lb) in inputs(case).items()}


# -- the sensitivity guard: the old engine's resize in place of the library's ----------------------------
def _torch_resize(image: np.ndarray, size: tuple[int, int], mode: str, antialias: bool) -> np.ndarray:
    """uint8 [H, W, 3] resized by torch's uint8 kernel to ``size`` (h, w): what the engine did before."""
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # a writable copy (PIL arrays are read-only)
    y = F.interpolate(t, size=size, mode=mode, antialias=antialias, align_corners=False)
    return y[0].permute(1, 2, 0).contiguous().numpy()


def perturbed_input(case: Case, path: str) -> torch.Tensor:
    """The frame's network input with the transform's resize swapped for torch's uint8 kernel (as the
    engine resized before issue 16: bilinear without antialiasing for OpenCV-trained models, with it
    for PIL-trained ones), every other step of AutoTimm's eval transform unchanged."""
    import cv2

    transform = case.val_dataset.transform if case.task != "segmentation" else case.val_dataset.transforms
    if case.backend == "torchvision":
        from torchvision.transforms import InterpolationMode

        with Image.open(path) as im:
            rgb = im.convert("RGB")
        resize, rest = transform.transforms[0], transform.transforms[1:]
        w, h = resize(rgb).size
        mode = "bicubic" if resize.interpolation == InterpolationMode.BICUBIC else "bilinear"
        img: Any = Image.fromarray(_torch_resize(np.asarray(rgb), (h, w), mode, True))
        for t in rest:
            img = t(img)
        return img
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    steps = list(transform.transforms)
    h, w = steps[0](image=rgb)["image"].shape[:2]
    img = _torch_resize(rgb, (h, w), "bilinear", False)
    for t in steps[1:]:
        img = t(image=img)["image"]
    return img
