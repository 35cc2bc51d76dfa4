"""Draws results onto frames for the annotated video: top-K text, boxes, translucent masks."""

from __future__ import annotations

import cv2
import numpy as np

from ..frame import FrameFlags
from ..messages import Result
from ..tasks import Task

__all__ = ["draw_result", "palette"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MASK_ALPHA = 0.45
_BACKGROUND = {"background", "bg", "void", "unlabeled", "unlabelled"}


def _scale(height: int) -> tuple[float, int, int]:
    s = max(0.4, height / 720.0)
    return 0.7 * s, max(1, round(2 * s)), round(28 * s)


def palette(n: int) -> np.ndarray:
    """``n`` distinct, stable RGB colours (uint8 [n, 3]); class 0 of a segmentor is usually background."""
    golden = 0.618033988749895
    hues = (np.arange(n) * golden) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 235)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _rgb(color: np.ndarray) -> tuple[int, int, int]:
    return int(color[0]), int(color[1]), int(color[2])


def _text_panel(img: np.ndarray, lines: list[str], colors: list[tuple[int, int, int]], swatches: bool = False) -> None:
    """Lines of text on a translucent dark panel in the top-left corner (optionally with colour swatches)."""
    if not lines:
        return
    font_scale, thick, line_h = _scale(img.shape[0])
    sw = line_h - 8 if swatches else 0
    width = max(cv2.getTextSize(t, _FONT, font_scale, thick)[0][0] for t in lines) + 16 + (sw + 6 if sw else 0)
    panel = img[4 : 8 + line_h * len(lines), 4 : 4 + width]
    panel[:] = (panel * 0.45).astype(np.uint8)  # translucent backing keeps text readable
    for k, (text, color) in enumerate(zip(lines, colors)):
        x = 12
        if sw:
            y0 = line_h * k + 10
            cv2.rectangle(img, (x, y0), (x + sw, y0 + sw), color, -1)
            x += sw + 6
            color = (255, 255, 255)
        cv2.putText(img, text, (x, line_h * (k + 1)), _FONT, font_scale, color, thick, cv2.LINE_AA)


def _draw_boxes(img: np.ndarray, result: Result, colors: np.ndarray) -> None:
    font_scale, thick, _ = _scale(img.shape[0])
    for det in reversed(result.detections):  # best last, so it is drawn on top
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        color = _rgb(colors[det.class_id % len(colors)])
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick + 1)
        text = f"{det.label} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale * 0.8, thick)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y1 + th + 4
        cv2.rectangle(img, (x1, ty - th - 3), (x1 + tw + 4, ty + base - 1), color, -1)
        cv2.putText(img, text, (x1 + 2, ty), _FONT, font_scale * 0.8, (0, 0, 0), thick, cv2.LINE_AA)


def _draw_mask(img: np.ndarray, result: Result, colors: np.ndarray) -> None:
    mask = result.mask
    if mask is None:
        return
    overlay = colors[mask] if mask.dtype == np.uint8 else colors[mask % len(colors)]
    tinted = cv2.addWeighted(img, 1 - _MASK_ALPHA, overlay, _MASK_ALPHA, 0.0)
    # a class named background stays as filmed: only the objects are painted
    background = [c.class_id for c in result.class_fractions if c.label.strip("_ ").lower() in _BACKGROUND]
    if background:
        keep = np.isin(mask, background)
        tinted[keep] = img[keep]
    img[:] = tinted
    ranked = sorted(result.class_fractions, key=lambda c: -c.fraction)[:8]
    _text_panel(
        img,
        [f"{c.label} {c.fraction * 100:.1f}%" for c in ranked],
        [_rgb(colors[c.class_id % len(colors)]) for c in ranked],
        swatches=True,
    )


_PALETTE = palette(256)


def draw_result(result: Result, max_labels: int = 5) -> np.ndarray:
    """A copy of the result's frame (RGB uint8) with its task outputs and timestamp drawn in."""
    img = result.frame.image.copy()
    font_scale, thick, _ = _scale(img.shape[0])
    colors = _PALETTE
    if result.task is Task.DETECTION:
        _draw_boxes(img, result, colors)
        _text_panel(img, [f"{len(result.detections)} objects"], [(80, 255, 80)])
    elif result.task is Task.SEGMENTATION:
        _draw_mask(img, result, colors)
    else:
        lines = [f"{p.label} {p.score:.2f}" for p in result.classes[:max_labels]]
        if not lines and result.task is Task.MULTILABEL:
            lines = ["(no class above threshold)"]
        _text_panel(img, lines, [(80, 255, 80)] + [(255, 255, 255)] * (len(lines) - 1))
    pts = result.frame.pts
    footer = f"{result.source_id} #{result.index}" + (f"  t={pts:.2f}s" if pts is not None else "")
    if result.frame.flags & FrameFlags.CORRUPT:
        footer += "  CORRUPT"
    y = img.shape[0] - 10
    cv2.putText(img, footer, (10, y), _FONT, font_scale * 0.8, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, footer, (10, y), _FONT, font_scale * 0.8, (255, 255, 255), thick, cv2.LINE_AA)
    return img
