"""Draws results onto frames for the annotated video."""

from __future__ import annotations

import cv2
import numpy as np

from .frame import FrameFlags, Result

__all__ = ["draw_result"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _scale(height: int) -> tuple[float, int, int]:
    s = max(0.4, height / 720.0)
    return 0.7 * s, max(1, round(2 * s)), round(28 * s)


def draw_result(result: Result, max_labels: int = 5) -> np.ndarray:
    """A copy of the result's frame (RGB uint8) with its top classes and timestamp drawn in."""
    img = result.frame.image.copy()
    font_scale, thick, line_h = _scale(img.shape[0])
    lines = [f"{p.label} {p.score:.2f}" for p in result.classes[:max_labels]]
    if not lines and result.task == "multilabel":
        lines = ["(no class above threshold)"]
    pts = result.frame.pts
    footer = f"{result.source_id} #{result.index}" + (f"  t={pts:.2f}s" if pts is not None else "")
    if result.frame.flags & FrameFlags.CORRUPT:
        footer += "  CORRUPT"
    width = max([cv2.getTextSize(t, _FONT, font_scale, thick)[0][0] for t in lines] or [0]) + 16
    if lines:
        overlay = img[4 : 8 + line_h * len(lines), 4 : 4 + width]
        overlay[:] = (overlay * 0.45).astype(np.uint8)  # translucent backing keeps text readable
    for k, text in enumerate(lines):
        color = (255, 255, 255) if k else (80, 255, 80)
        cv2.putText(img, text, (12, line_h * (k + 1)), _FONT, font_scale, color, thick, cv2.LINE_AA)
    y = img.shape[0] - 10
    cv2.putText(img, footer, (10, y), _FONT, font_scale * 0.8, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, footer, (10, y), _FONT, font_scale * 0.8, (255, 255, 255), thick, cv2.LINE_AA)
    return img
