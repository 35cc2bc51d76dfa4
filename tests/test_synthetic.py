import numpy as np
import pytest

from autotimm_stream.synthetic import ShapeScene


@pytest.mark.parametrize("seed", range(6))
def test_boxes_are_tight_around_what_is_drawn(seed):
    scene = ShapeScene(320, 240, seed=seed, n_shapes=1)
    shape = scene.shapes[0]
    drawn = np.any(scene.render() != scene.background, axis=2)
    ys, xs = np.nonzero(drawn)
    x1, y1, x2, y2 = shape.box()
    # anti-aliased edges may add a pixel; the box must hug the shape within 2 px on every side
    assert abs(xs.min() - x1) <= 2 and abs(ys.min() - y1) <= 2
    assert abs(xs.max() + 1 - x2) <= 2 and abs(ys.max() + 1 - y2) <= 2, (shape.kind, (x1, y1, x2, y2))


def test_same_seed_same_frames():
    a = list(ShapeScene(64, 48, seed=3).frames(5))
    b = list(ShapeScene(64, 48, seed=3).frames(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
