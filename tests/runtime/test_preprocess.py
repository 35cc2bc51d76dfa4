import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from autotimm_stream.runtime.preprocess import LETTERBOX_FILL, PreprocessSpec, plan, preprocess_batch
from tests.helpers import rng_frames

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def reference_center_crop(img: np.ndarray, size: int, crop_pct: float, interp: str) -> torch.Tensor:
    """timm's eval transform (Resize(int(size / crop_pct)) + CenterCrop + Normalize) via torchvision."""
    x = torch.from_numpy(img).permute(2, 0, 1)
    mode = InterpolationMode.BICUBIC if interp == "bicubic" else InterpolationMode.BILINEAR
    x = TF.resize(x, [int(size / crop_pct)], interpolation=mode, antialias=True)
    x = TF.center_crop(x, [size, size])
    return TF.normalize(x.float() / 255.0, MEAN, STD)


@pytest.mark.parametrize("h, w", [(240, 320), (720, 1280), (480, 360), (224, 224)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_center_crop_matches_torchvision(h, w, interp):
    spec = PreprocessSpec((224, 224), "center_crop", 0.95, interp, MEAN, STD)
    frames = rng_frames(3, h, w)
    got = preprocess_batch(frames, spec)
    for k, img in enumerate(frames):
        ref = reference_center_crop(img, 224, 0.95, interp)
        # same uint8 kernels; at most one grey level apart where rounding differs
        assert (got[k] - ref).abs().max().item() <= 1.01 / 255 / min(STD)


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
        ((90, 40), PreprocessSpec((97, 97), "squash_crop", 224 / 256), (110, 110), (6, 6)),
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
