"""Preprocessing: exactly the tensor the training library's eval transform builds, on every path.

The references are the libraries themselves: torchvision's ``Resize`` + ``CenterCrop`` +
``ToTensor`` + ``Normalize`` on PIL images (timm's and AutoTimm's classification eval transform),
and albumentations' ``Resize`` / ``LongestMaxSize`` + ``PadIfNeeded`` / ``CenterCrop`` +
``Normalize`` on arrays (AutoTimm's detection, segmentation and albumentations classification
eval transforms). "Exact" means ``torch.equal`` on the float32 tensors, not a tolerance.
"""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from autotimm_stream.runtime.preprocess import (
    LETTERBOX_FILL,
    PreprocessSpec,
    _host_inputs,
    _tensor_inputs,
    exact_for,
    plan,
    preprocess_batch,
)
from tests.helpers import rng_frames

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# landscape 16:9 and 4:3, portrait, odd sizes, square, smaller than the input
SIZES = [(720, 1280), (240, 320), (481, 359), (224, 224), (57, 75)]
INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def torchvision_reference(img: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """timm / AutoTimm's torchvision eval transform on the PIL image."""
    size = spec.size[0]
    resize = int(size / spec.crop_pct)
    t = T.Compose(
        [
            T.Resize(
                resize if spec.resize == "center_crop" else (resize, resize), interpolation=INTERP[spec.interpolation]
            ),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean=spec.mean, std=spec.std),
        ]
    )
    return t(Image.fromarray(img))


def albumentations_reference(img: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """AutoTimm's albumentations eval transforms (detection, segmentation, classification)."""
    size = spec.size[0]
    steps: list = {
        "letterbox": [
            A.LongestMaxSize(max_size=size),
            A.PadIfNeeded(size, size, position="center", border_mode=cv2.BORDER_CONSTANT, fill=LETTERBOX_FILL),
        ],
        "squash": [A.Resize(size, size)],
        "squash_crop": [A.Resize(int(size / spec.crop_pct), int(size / spec.crop_pct)), A.CenterCrop(size, size)],
    }[spec.resize]
    out = A.Compose([*steps, A.Normalize(mean=spec.mean, std=spec.std)])(image=img)["image"]
    return torch.from_numpy(out).permute(2, 0, 1)


TORCHVISION = [
    PreprocessSpec((224, 224), "center_crop", 0.95, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    PreprocessSpec((64, 64), "center_crop", 224 / 256, "bilinear", MEAN, STD),
    # timm's crop_mode "squash"; a margin of 3, which torchvision's CenterCrop splits 2 + 1
    PreprocessSpec((27, 27), "squash_crop", 0.9, "bicubic", MEAN, STD),
]
ALBUMENTATIONS = [
    PreprocessSpec((128, 128), "letterbox", 1.0, "bilinear", MEAN, STD, "albumentations"),
    PreprocessSpec((160, 160), "squash", 1.0, "bilinear", MEAN, STD, "albumentations"),
    PreprocessSpec((64, 64), "squash_crop", 224 / 256, "bilinear", MEAN, STD, "albumentations"),
]


@pytest.mark.parametrize(
    "spec", TORCHVISION + ALBUMENTATIONS, ids=lambda s: f"{s.backend}-{s.resize}-{s.interpolation}"
)
def test_exact_input_equals_the_training_transform(spec):
    reference = torchvision_reference if spec.backend == "torchvision" else albumentations_reference
    frames = [rng_frames(1, h, w, seed=i)[0] for i, (h, w) in enumerate(SIZES)]
    got = preprocess_batch(frames, spec)  # mixed sizes in one batch
    for k, img in enumerate(frames):
        want = reference(img, spec)
        assert got[k].shape == want.shape
        assert torch.equal(got[k], want), f"{img.shape}: max difference {float((got[k] - want).abs().max())}"


@pytest.mark.parametrize(
    "spec", TORCHVISION + ALBUMENTATIONS, ids=lambda s: f"{s.backend}-{s.resize}-{s.interpolation}"
)
def test_the_device_kernels_equal_the_host_libraries(spec):
    """The integer kernels CUDA uses, run here on CPU tensors: the same bytes as OpenCV / Pillow."""
    frames = rng_frames(2, 181, 243, seed=4) + rng_frames(1, 90, 60, seed=5)
    host = _host_inputs(frames, spec)
    device = _tensor_inputs(frames, spec, torch.device("cpu"), exact=True)
    assert np.array_equal(device.permute(0, 2, 3, 1).numpy(), host)


@pytest.mark.parametrize(
    "spec", TORCHVISION + ALBUMENTATIONS, ids=lambda s: f"{s.backend}-{s.resize}-{s.interpolation}"
)
def test_fast_input_is_within_one_grey_level(spec):
    frames = rng_frames(2, 240, 320, seed=7)
    exact = preprocess_batch(frames, spec)
    fast = preprocess_batch(frames, spec, exact=False)
    grey = 1 / 255 / min(spec.std)
    assert float((fast - exact).abs().max()) <= 1.01 * grey


def test_fp16_and_channels_last_round_the_exact_input_once():
    spec = ALBUMENTATIONS[0]
    frames = rng_frames(2, 100, 150, seed=8)
    exact = preprocess_batch(frames, spec)
    half = preprocess_batch(frames, spec, dtype=torch.float16, channels_last=True)
    assert half.dtype == torch.float16 and half.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(half, exact.half())


def test_mixed_sizes_keep_order():
    spec = PreprocessSpec((64, 64), "squash", 1.0, "bilinear", MEAN, STD)
    a, b = rng_frames(1, 100, 200, seed=1)[0], rng_frames(1, 50, 60, seed=2)[0]
    batch = preprocess_batch([a, b, a], spec)
    alone = preprocess_batch([b], spec)
    assert batch.shape == (3, 3, 64, 64)
    torch.testing.assert_close(batch[1], alone[0])
    torch.testing.assert_close(batch[0], batch[2])


def test_letterbox_pads_centred_with_114():
    spec = PreprocessSpec((64, 64), "letterbox", 1.0, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    img = np.full((32, 64, 3), 200, np.uint8)  # wide: resized to 32x64, 16 rows of padding above and below
    out = preprocess_batch([img], spec)[0] * 255
    geo = plan(32, 64, spec)
    assert geo.resized == (32, 64) and geo.pad == (16, 0)
    assert torch.allclose(out[:, :16], torch.tensor(float(LETTERBOX_FILL)))
    assert torch.allclose(out[:, 48:], torch.tensor(float(LETTERBOX_FILL)))
    assert torch.allclose(out[:, 16:48], torch.tensor(200.0), atol=0.5)


@pytest.mark.parametrize(
    "src, spec, resized, crop",
    [
        ((720, 1280), PreprocessSpec((224, 224), "center_crop", 0.95), (235, 417), (6, 96)),
        ((1280, 720), PreprocessSpec((224, 224), "center_crop", 0.95), (417, 235), (96, 6)),
        ((720, 1280), PreprocessSpec((512, 512), "squash"), (512, 512), (0, 0)),
        # albumentations Resize(int(s * 256 / 224)) square + CenterCrop, offsets rounded down
        ((720, 1280), PreprocessSpec((224, 224), "squash_crop", 224 / 256), (256, 256), (16, 16)),
        ((90, 40), PreprocessSpec((97, 97), "squash_crop", 224 / 256, backend="albumentations"), (110, 110), (6, 6)),
        # torchvision's CenterCrop rounds the offset half to even (a margin of 3 puts 2 above),
        # albumentations' rounds it down (1 above)
        ((90, 40), PreprocessSpec((27, 27), "squash_crop", 0.9), (30, 30), (2, 2)),
        ((90, 40), PreprocessSpec((27, 27), "squash_crop", 0.9, backend="albumentations"), (30, 30), (1, 1)),
    ],
)
def test_plan_geometry(src, spec, resized, crop):
    geo = plan(*src, spec)
    assert geo.resized == resized and geo.crop == crop


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": (224, 224), "resize": "crop"}, "resize must be one of"),
        ({"size": (224, 224), "interpolation": "lanczos"}, "interpolation must be one of"),
        ({"size": (224, 224), "backend": "opencv"}, "backend must be one of"),
        ({"size": (0, 224)}, "size must be"),
        ({"size": (224, 224), "crop_pct": 1.5}, "crop_pct"),
        ({"size": (224, 224), "std": (1.0, 0.0, 1.0)}, "std"),
    ],
)
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessSpec(**kwargs)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="at least one image"):
        preprocess_batch([], PreprocessSpec((8, 8)))


def test_a_single_flipped_view_is_accepted():
    img = rng_frames(1, 40, 60)[0]
    spec = PreprocessSpec((32, 32), "squash", 1.0, "bilinear", MEAN, STD)
    flipped = img[..., ::-1]  # BGR<->RGB view with a negative stride
    torch.testing.assert_close(preprocess_batch([flipped], spec), preprocess_batch([flipped.copy()], spec))


@pytest.mark.parametrize(
    "fidelity, backend, device, exact",
    [
        ("auto", "albumentations", "cpu", True),  # OpenCV: exact and faster than torch
        ("auto", "torchvision", "cpu", False),  # Pillow costs 4-6x torch's kernel on the CPU
        ("auto", "torchvision", "cuda", True),  # integer kernels on the device
        ("exact", "torchvision", "cpu", True),
        ("fast", "albumentations", "cuda", False),
    ],
)
def test_which_fidelity_is_exact(fidelity, backend, device, exact):
    spec = PreprocessSpec((64, 64), backend=backend)
    assert exact_for(fidelity, spec, torch.device(device)) is exact


def test_an_unknown_fidelity_is_refused():
    with pytest.raises(ValueError, match="fidelity must be one of"):
        exact_for("perfect", PreprocessSpec((8, 8)), torch.device("cpu"))
