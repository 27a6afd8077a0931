"""Where a rover can go: hazard and safe ground in a predicted mask, and the biggest safe circle.

Pure functions on (H, W) class-index masks. Rocks (small and large) grown by a margin
are hazard; ground outside the hazard is safe; sky is neither. The answer a landing or
driving team acts on is the largest circle of safe ground: its centre is the point
farthest from anything unsafe (the maximum of a distance transform).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from lunar_cli.classes import class_index

HAZARD_RGB = (255, 0, 0)
SAFE_RGB = (0, 255, 0)
CIRCLE_RGB = (255, 255, 0)  # outline of the largest safe circle on the hazard map


def hazard_and_safe(indices: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (hazard, safe) boolean masks: every pixel within ``margin`` px of a rock, and ground outside that.

    The margin is a Euclidean distance from the nearest rock pixel (one exact distance
    transform), so its cost does not grow with the margin.
    """
    indices = np.asarray(indices)
    rocks = np.isin(indices, (class_index("small_rocks"), class_index("large_rocks")))
    if margin > 0 and rocks.any():
        distance = cv2.distanceTransform((~rocks).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        hazard = distance <= margin
    else:
        hazard = rocks
    safe = (indices == class_index("ground")) & ~hazard
    return hazard, safe


def largest_safe_circle(safe: np.ndarray) -> dict[str, Any] | None:
    """Return the largest circle of safe ground (None when nothing is safe).

    ``{"center_xy": [x, y], "radius_px": r, "bbox": [x0, y0, x1, y1], "area_px": n}``:
    every pixel closer than ``r`` to the centre is safe; ``bbox`` (inclusive) and
    ``area_px`` are those of that disc. Outside the photo counts as unsafe (unknown
    terrain), so the circle never runs off the frame.
    """
    safe = np.asarray(safe, dtype=bool)
    if not safe.any():
        return None
    padded = np.pad(safe.astype(np.uint8), 1)  # a ring of "unsafe" around the frame
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    radius = float(dist[y, x])
    reach = int(np.ceil(radius))
    y0, y1 = max(0, y - reach), min(safe.shape[0], y + reach + 1)
    x0, x1 = max(0, x - reach), min(safe.shape[1], x + reach + 1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    # Strictly inside: the nearest unsafe pixel is exactly ``radius`` away.
    disc = (yy - y) ** 2 + (xx - x) ** 2 < radius * radius
    ys, xs = np.nonzero(disc)
    return {
        "center_xy": [int(x), int(y)],
        "radius_px": round(radius, 2),
        "bbox": [int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max()), int(y0 + ys.max())],
        "area_px": int(disc.sum()),
    }


def assess_hazard(indices: np.ndarray, margin: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Return (summary for the JSON record, hazard mask, safe mask) for a class-index mask."""
    hazard, safe = hazard_and_safe(indices, margin)
    total = max(1, hazard.size)
    summary = {
        "margin_px": int(margin),
        "hazard_fraction": round(float(hazard.sum()) / total, 6),
        "safe_fraction": round(float(safe.sum()) / total, 6),
        "largest_safe_region": largest_safe_circle(safe),
    }
    return summary, hazard, safe


def hazard_image(hazard: np.ndarray, safe: np.ndarray, circle: dict[str, Any] | None = None) -> np.ndarray:
    """Return an RGB hazard map: red hazard, green safe ground, black sky; the safe circle outlined in yellow."""
    rgb = np.zeros((*np.asarray(hazard).shape, 3), np.uint8)
    rgb[np.asarray(safe, bool)] = SAFE_RGB
    rgb[np.asarray(hazard, bool)] = HAZARD_RGB
    if circle is not None and circle["radius_px"] >= 2:
        cx, cy = circle["center_xy"]
        cv2.circle(rgb, (cx, cy), max(1, int(circle["radius_px"]) - 1), CIRCLE_RGB, 1, cv2.LINE_8)
        cv2.drawMarker(rgb, (cx, cy), CIRCLE_RGB, cv2.MARKER_CROSS, min(9, 2 * int(circle["radius_px"]) - 1), 1)
    return rgb
