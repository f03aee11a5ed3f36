"""Camera shake + motion blur (the Early-Fire robustness block), with OpenCV, deterministic per seed.

The shake is a small random rotation about the centre plus a translation; borders are filled by
replicating the edge pixels, as a stabiliser's crop would. The blur is a straight line kernel at a
random angle. The same affine moves the true boxes, so localisation is still scored correctly.
"""

from __future__ import annotations

import zlib

import numpy as np

MAX_ROTATION_DEG = 2.0


def perturbation_seed(base_seed: int, sample_id: str) -> int:
    """A stable per-sample seed (Python's ``hash`` of a string changes between processes)."""
    return zlib.crc32(f"{base_seed}:{sample_id}".encode())


def _motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    import cv2

    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    centre = ((length - 1) / 2, (length - 1) / 2)
    rotation = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length), flags=cv2.INTER_LINEAR)
    return kernel / kernel.sum()


def shake_and_blur(image, seed: int, shake: float = 0.03, blur: float = 0.02):
    """Return ``(perturbed PIL image, 2x3 affine matrix in pixels)``.

    ``shake``: the largest shift, as a fraction of the width/height (with up to ``MAX_ROTATION_DEG`` of
    rotation; 0 turns the shake off); ``blur``: the motion-blur length as a fraction of the longer side
    (at least 3 pixels; 0 turns the blur off).
    """
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = image.size
    shift = rng.uniform(-shake, shake, 2) * (w, h)
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) if shake > 0 else 0.0
    blur_angle = rng.uniform(0.0, 180.0)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    matrix[:, 2] += shift
    pixels = cv2.warpAffine(np.asarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    if blur > 0:
        length = max(3, int(round(blur * max(w, h))) | 1)
        pixels = cv2.filter2D(pixels, -1, _motion_kernel(length, blur_angle), borderType=cv2.BORDER_REPLICATE)
    return Image.fromarray(pixels), matrix


def transform_boxes(boxes: list[list[float]], matrix: np.ndarray, size: tuple[int, int]) -> list[list[float]]:
    """Move normalised ``[cx, cy, w, h]`` boxes by the affine: the bounding box of the moved corners,
    clipped to the image; a box pushed wholly out of the frame is dropped."""
    w, h = size
    moved = []
    for cx, cy, bw, bh in boxes:
        x0, x1, y0, y1 = (cx - bw / 2) * w, (cx + bw / 2) * w, (cy - bh / 2) * h, (cy + bh / 2) * h
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]])
        xs, ys = (corners @ matrix.T).T
        nx0, nx1 = np.clip([xs.min(), xs.max()], 0, w) / w
        ny0, ny1 = np.clip([ys.min(), ys.max()], 0, h) / h
        if nx1 > nx0 and ny1 > ny0:
            moved.append([float((nx0 + nx1) / 2), float((ny0 + ny1) / 2), float(nx1 - nx0), float(ny1 - ny0)])
    return moved
