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


@pytest.mark.parametrize("seed", range(6))
def test_mask_paints_each_shape_inside_its_box_with_its_class(seed):
    from autotimm_stream.synthetic import SHAPES

    scene = ShapeScene(320, 240, seed=seed, n_shapes=1)
    for _ in range(3):
        shape = scene.shapes[0]
        mask = scene.render_mask()
        assert mask.dtype == np.uint8 and mask.shape == (240, 320)
        assert set(np.unique(mask)) == {0, SHAPES.index(shape.kind) + 1}
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = shape.box()
        # every painted pixel lies in the shape's box, and the paint reaches the box's sides
        # (a pixel of the outermost row or column may be less than half covered: 1 px slack)
        assert xs.min() >= x1 and ys.min() >= y1 and xs.max() < x2 and ys.max() < y2
        assert xs.min() - x1 <= 1 and ys.min() - y1 <= 1 and x2 - 1 - xs.max() <= 1 and y2 - 1 - ys.max() <= 1
        # and it is what render() draws: pixels left as background are background in the mask
        drawn = np.any(scene.render() != scene.background, axis=2)
        assert not (mask.astype(bool) & ~drawn).any()
        assert (drawn & ~mask.astype(bool)).sum() <= 0.25 * mask.astype(bool).sum()  # only anti-aliased rims
        scene.step()


def test_mask_puts_later_shapes_over_earlier_ones_as_drawn():
    from autotimm_stream.synthetic import SHAPES

    on_top = 0  # pixels where a shape was drawn over an earlier shape of another class
    for seed in range(20):
        scene = ShapeScene(320, 240, seed=seed, n_shapes=5)
        for _ in range(4):
            img, mask = scene.render(), scene.render_mask()
            assert set(np.unique(mask)) <= {SHAPES.index(s.kind) + 1 for s in scene.shapes} | {0}
            boxes = [tuple(max(0, v) for v in s.box()) for s in scene.shapes]
            inside_any = np.zeros(mask.shape, dtype=bool)
            for x1, y1, x2, y2 in boxes:
                inside_any[y1:y2, x1:x2] = True
            assert not (mask.astype(bool) & ~inside_any).any()  # nothing painted outside every box
            colors = [s.color for s in scene.shapes]
            for k, shape in enumerate(scene.shapes):
                if colors.count(shape.color) > 1:
                    continue
                # a pixel rendered in exactly this shape's (unique) colour is this shape, fully
                # covering whatever was drawn before: the mask must name this shape's class there
                x1, y1, x2, y2 = boxes[k]
                own = np.zeros(mask.shape, dtype=bool)
                own[y1:y2, x1:x2] = np.all(img[y1:y2, x1:x2] == shape.color, axis=2)
                assert (mask[own] == SHAPES.index(shape.kind) + 1).all(), (seed, k, shape.kind)
                for j in range(k):
                    if scene.shapes[j].kind != shape.kind:
                        bx1, by1, bx2, by2 = boxes[j]
                        on_top += int(own[by1:by2, bx1:bx2].sum())
            scene.step()
    assert on_top > 1000  # the scenes above do overlap shapes of different classes


def test_mask_leaves_render_unchanged():
    a = ShapeScene(160, 120, seed=4, n_shapes=4)
    b = ShapeScene(160, 120, seed=4, n_shapes=4)
    for _ in range(5):
        a.render_mask()
        assert np.array_equal(a.render(), b.render())
        a.step()
        b.step()
