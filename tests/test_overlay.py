"""tools.overlay: the one overlay picture of tools/eval_ckpt.py and tools/segment.py."""
from __future__ import annotations

import numpy as np

from tools.overlay import overlay_picture


def test_grey_red_fill_green_contour():
    image = np.zeros((2, 6, 6), np.float32)
    image[0, :, 3:] = 4.0  # left half black, right half white after min-max scaling
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[0, 5] = True
    pic = overlay_picture(image, mask)
    assert pic.dtype == np.uint8 and pic.shape == (6, 6, 3)
    assert pic[5, 0].tolist() == [0, 0, 0] and pic[5, 5].tolist() == [255, 255, 255]
    assert pic[0, 0].tolist() == [128, 0, 0] and pic[0, 5].tolist() == [255, 127, 127]  # white is 1 - 1e-8
    gt = np.zeros((6, 6), bool)
    gt[1:5, 1:5] = True
    framed = overlay_picture(image, mask, contour=gt)
    assert framed[1, 1].tolist() == [0, 255, 0] and framed[2, 2].tolist() == pic[2, 2].tolist()
    assert np.array_equal(framed[0], pic[0])
