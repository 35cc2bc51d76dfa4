"""Generated footage: scenes of moving shapes, with ground truth, and H.264 clips made from them.

Used by the demo (its clip and the training data of its model), by the tests and benchmarks.
Deterministic for a given seed. No files are committed: everything is generated on demand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

__all__ = ["SHAPES", "Shape", "ShapeScene", "write_clip"]

SHAPES = ("circle", "square", "triangle")
_COLORS = ((230, 60, 60), (60, 200, 80), (70, 110, 240), (240, 200, 40), (200, 70, 220), (40, 210, 220))


@dataclass(slots=True)
class Shape:
    """One shape in a scene: its class, centre, radius, velocity and colour."""

    kind: str
    cx: float
    cy: float
    r: float
    vx: float
    vy: float
    color: tuple[int, int, int]

    def box(self) -> tuple[float, float, float, float]:
        """Tight axis-aligned box (x1, y1, x2, y2) in pixels of the shape as :meth:`ShapeScene.render` draws it."""
        cx, cy, r = int(self.cx), int(self.cy), int(self.r)
        if self.kind == "square":
            side = int(r * 0.85)
            return (cx - side, cy - side, cx + side + 1, cy + side + 1)
        if self.kind == "triangle":
            half = int(r * 0.93)
            return (cx - half, cy - r, cx + half + 1, cy + r // 2 + 1)
        return (cx - r, cy - r, cx + r + 1, cy + r + 1)


def _draw(img: np.ndarray, s: Shape, color: tuple[int, int, int] | int) -> None:
    """Draw ``s`` filled into ``img`` (RGB, or one channel for a coverage map)."""
    c = (int(s.cx), int(s.cy))
    r = int(s.r)
    if s.kind == "circle":
        cv2.circle(img, c, r, color, -1, cv2.LINE_AA)
    elif s.kind == "square":
        side = int(r * 0.85)
        cv2.rectangle(img, (c[0] - side, c[1] - side), (c[0] + side, c[1] + side), color, -1)
    else:
        pts = np.array([[c[0], c[1] - r], [c[0] - int(r * 0.93), c[1] + r // 2], [c[0] + int(r * 0.93), c[1] + r // 2]])
        cv2.fillPoly(img, [pts.astype(np.int32)], color, cv2.LINE_AA)


class ShapeScene:
    """A textured background with shapes that move and bounce off the borders.

    ``dominant`` mode (the classifier demo) shows one large shape whose class changes every
    ``switch_every`` frames; otherwise ``n_shapes`` shapes of random classes move around.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 360,
        seed: int = 0,
        n_shapes: int = 3,
        dominant: bool = False,
        switch_every: int = 50,
    ):
        self.width, self.height = width, height
        self.rng = np.random.default_rng(seed)
        self.dominant = dominant
        self.switch_every = switch_every
        self.t = 0
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = self.rng.uniform(40, 120, size=3)
        grad = self.rng.uniform(-40, 40, size=(2, 3))
        bg = base + grad[0] * (xx / width)[..., None] + grad[1] * (yy / height)[..., None]
        bg += self.rng.normal(0, 6, size=bg.shape)
        self.background = np.clip(bg, 0, 255).astype(np.uint8)
        self.shapes = [self._new_shape() for _ in range(1 if dominant else n_shapes)]

    def _new_shape(self, kind: str | None = None) -> Shape:
        m = min(self.width, self.height)
        r = self.rng.uniform(0.22, 0.32) * m if self.dominant else self.rng.uniform(0.06, 0.14) * m
        speed = self.rng.uniform(1.5, 4.0) * m / 360
        angle = self.rng.uniform(0, 2 * np.pi)
        return Shape(
            kind=kind or str(self.rng.choice(SHAPES)),
            cx=self.rng.uniform(r, self.width - r),
            cy=self.rng.uniform(r, self.height - r),
            r=r,
            vx=speed * np.cos(angle),
            vy=speed * np.sin(angle),
            color=_COLORS[int(self.rng.integers(len(_COLORS)))],
        )

    def step(self) -> None:
        """Advance one frame."""
        self.t += 1
        if self.dominant and self.t % self.switch_every == 0:
            current = self.shapes[0].kind
            self.shapes[0] = self._new_shape(SHAPES[(SHAPES.index(current) + 1) % len(SHAPES)])
        for s in self.shapes:
            s.cx += s.vx
            s.cy += s.vy
            if not s.r <= s.cx <= self.width - s.r:
                s.vx = -s.vx
                s.cx = float(np.clip(s.cx, s.r, self.width - s.r))
            if not s.r <= s.cy <= self.height - s.r:
                s.vy = -s.vy
                s.cy = float(np.clip(s.cy, s.r, self.height - s.r))

    def render(self) -> np.ndarray:
        """The current frame, uint8 RGB [H, W, 3]."""
        img = self.background.copy()
        for s in self.shapes:
            _draw(img, s, s.color)
        return img

    def render_mask(self) -> np.ndarray:
        """Ground-truth class map of the current frame: uint8 [H, W], 0 background, ``1 + SHAPES.index(kind)``.

        Each shape is drawn with exactly the geometry of :meth:`render` (same calls, same
        anti-aliasing) as a coverage map; a pixel belongs to the shape when the shape covers at
        least half of it, i.e. when :meth:`render` gave it more of the shape's colour than of what
        lies below. Shapes are drawn in the same order, so a later shape hides an earlier one
        exactly as in the frame.
        """
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        coverage = np.empty_like(mask)
        for s in self.shapes:
            coverage.fill(0)
            _draw(coverage, s, 255)
            mask[coverage >= 128] = SHAPES.index(s.kind) + 1
        return mask

    def labels(self) -> list[str]:
        """Classes of the shapes in the current frame."""
        return [s.kind for s in self.shapes]

    def frames(self, n: int):
        """Yield ``n`` consecutive frames (rendering then stepping)."""
        for _ in range(n):
            yield self.render()
            self.step()


def write_clip(
    path: str | os.PathLike[str],
    frames: int = 75,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    seed: int = 0,
    dominant: bool = True,
    gop: int = 25,
    codec: str = "libx264",
    n_shapes: int = 3,
) -> str:
    """Write a generated H.264 (yuv420p) clip of moving shapes; returns its path.

    ``dominant`` shows one large shape (the classifier demo); otherwise ``n_shapes`` move around.
    """
    path = os.fspath(path)
    scene = ShapeScene(width, height, seed=seed, n_shapes=n_shapes, dominant=dominant)
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps), options={"preset": "veryfast", "crf": "20", "g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, img in enumerate(scene.frames(frames)):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
