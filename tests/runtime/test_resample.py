"""The integer resize kernels against the libraries they reproduce, on random sizes and frames.

``resize_opencv_linear`` must equal ``cv2.resize(INTER_LINEAR)`` and ``resize_pillow`` Pillow's
``Image.resize`` on every uint8 value. Noise frames are the hardest case: every pixel is an edge,
so any difference in weights, rounding or pass order shows. The same kernels run on CUDA tensors
where a GPU is present (the engine's device path) and must give the same bytes.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from autotimm_stream.runtime.resample import (
    DEVICE_KERNELS,
    resize_host,
    resize_opencv_linear,
    resize_pillow,
    resize_tensor,
)

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
)
DEVICES = ["cpu", CUDA]
# (src_h, src_w, dst_h, dst_w): frame sizes the engine sees, exact halvings (OpenCV's INTER_AREA fast
# path), one-pixel sides, upscaling, one axis up and the other down (Pillow 13 reorders its passes)
FIXED = [
    (1080, 1920, 360, 640),
    (720, 1280, 512, 512),
    (480, 640, 240, 320),
    (1080, 1920, 540, 960),
    (1, 1, 7, 5),
    (9, 7, 1, 1),
    (245, 99, 136, 236),
    (60, 300, 90, 30),
    (37, 53, 37, 20),
]


def random_cases(n: int, seed: int) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(1, 200, 4)) for _ in range(n)]  # type: ignore[misc]


def frame(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def as_tensor(img: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].to(device)  # [1, 3, H, W], NHWC memory


def as_image(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_opencv_kernel_equals_cv2_resize(device):
    cases = FIXED + random_cases(60, seed=1)
    for i, (h, w, dh, dw) in enumerate(cases):
        img = frame(h, w, seed=i)
        want = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        got = as_image(resize_opencv_linear(as_tensor(img, device), (dh, dw)))
        assert np.array_equal(got, want), f"{w}x{h} -> {dw}x{dh}: {int((got != want).sum())} values differ"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_pillow_kernel_equals_image_resize(device, interpolation):
    cases = FIXED + random_cases(40, seed=2)
    for i, (h, w, dh, dw) in enumerate(cases):
        img = frame(h, w, seed=100 + i)
        want = resize_host(img, (dh, dw), "torchvision", interpolation)  # PIL's Image.resize
        got = as_image(resize_pillow(as_tensor(img, device), (dh, dw), interpolation))
        assert np.array_equal(got, want), f"{w}x{h} -> {dw}x{dh}: {int((got != want).sum())} values differ"


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_resize_a_batch_as_its_frames(device):
    frames = [frame(90, 160, seed=s) for s in range(3)]
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).to(device)
    for backend, interpolation in sorted(DEVICE_KERNELS):
        batch = resize_tensor(x, (40, 50), backend, interpolation)
        for k, img in enumerate(frames):
            assert np.array_equal(
                batch[k].permute(1, 2, 0).cpu().numpy(), resize_host(img, (40, 50), backend, interpolation)
            )


def test_a_pair_without_a_kernel_is_refused():
    with pytest.raises(ValueError, match="resize on the host"):
        resize_tensor(torch.zeros((1, 3, 8, 8), dtype=torch.uint8), (4, 4), "albumentations", "bicubic")
