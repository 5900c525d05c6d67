"""a3c.augment: the symmetries by hand, image and mask kept aligned, and the option's plumbing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from a3c.augment import AUGMENT_MODES, augment_batch, dihedral, draw_transforms
from a3c.config import ConfigError, load_config

SQUARE = np.array([[1, 2], [3, 4]])


@pytest.mark.parametrize("k,expected", [
    (0, [[1, 2], [3, 4]]),
    (1, [[2, 4], [1, 3]]),   # a quarter turn counter-clockwise
    (2, [[4, 3], [2, 1]]),
    (3, [[3, 1], [4, 2]]),
    (4, [[2, 1], [4, 3]]),   # left-right mirror
    (5, [[4, 2], [3, 1]]),
])
def test_dihedral_by_hand(k, expected):
    assert dihedral(SQUARE, k).tolist() == expected


def test_the_eight_symmetries_are_distinct_and_act_on_the_last_two_axes():
    a = np.arange(9).reshape(3, 3)
    outs = {dihedral(a, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    stacked = np.stack([a, a + 10])  # [C, H, W]
    for k in range(8):
        assert np.array_equal(dihedral(stacked, k)[1], dihedral(a + 10, k))


def test_draws_by_mode():
    rng = np.random.default_rng(0)
    assert draw_transforms("none", 5, rng).tolist() == [0] * 5
    flips = draw_transforms("flip", 200, rng)
    assert set(flips.tolist()) == {0, 4}
    assert set(draw_transforms("d4", 400, rng).tolist()) == set(range(8))
    with pytest.raises(ValueError, match="unknown augmentation 'rot'"):
        draw_transforms("rot", 1, rng)


def test_image_and_mask_get_the_same_transform():
    rng = np.random.default_rng(3)
    images = rng.random((16, 3, 8, 8)).astype(np.float32)
    masks = (images[:, 0] > 0.5).astype(np.float32)  # the mask is a function of channel 0
    out_i, out_m = augment_batch(images, masks, "d4", rng)
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    assert out_i.flags["C_CONTIGUOUS"] and out_m.flags["C_CONTIGUOUS"]
    assert np.array_equal(out_m, (out_i[:, 0] > 0.5).astype(np.float32))
    assert not np.array_equal(out_i, images)  # 16 draws: some slice moved
    # every slice is one of its own 8 symmetries
    for src, got in zip(images, out_i):
        assert any(np.array_equal(dihedral(src, k), got) for k in range(8))


def test_none_returns_the_batch_and_draws_nothing():
    rng = np.random.default_rng(0)
    images, masks = np.zeros((2, 1, 4, 4)), np.zeros((2, 4, 4))
    out_i, out_m = augment_batch(images, masks, "none", rng)
    assert out_i is images and out_m is masks
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)


def test_config_field_checked():
    assert load_config(None, ["data.augment=flip"]).data.augment == "flip"
    assert load_config(None).data.augment == "none"  # the paper names no augmentation
    with pytest.raises(ConfigError, match="data.augment: expected one of none, flip, d4"):
        load_config(None, ["data.augment=mirror"])


def test_baseline_trainer_refuses_an_unknown_augmentation(tmp_path):
    from baselines.train import BaselineError, train_baseline
    with pytest.raises(BaselineError, match="unknown augmentation 'x'"):
        train_baseline("unet", tmp_path / "missing.h5", tmp_path / "out", augment="x")


def test_reproduce_gives_the_baselines_the_configs_augmentation(tmp_path):
    from tools import reproduce
    cfg = tmp_path / "aug.yaml"
    cfg.write_text("data:\n  augment: d4\n  image_size: 32\n")
    args = reproduce.parse_args(["cv", "--data", "x.h5", "--config", str(cfg), "--folds", "0",
                                 "--baselines", "unet"])
    cell = next(c for c in reproduce.plan(args) if c.method != "pixeldrl")
    cmd = reproduce.command(cell, args, Path(tmp_path / "run"), resume=False)
    assert cmd[cmd.index("--augment") + 1] == "d4"
    assert cmd[cmd.index("--image-size") + 1] == "32"
    assert set(AUGMENT_MODES) == {"none", "flip", "d4"}
