"""a3c.augment: the symmetries by hand, image and mask kept aligned, and the option's plumbing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from a3c.augment import (
    AUGMENT_MODES,
    Jitter,
    affine_warp,
    augment_batch,
    dihedral,
    dihedral_tensor,
    draw_transforms,
    gamma_curve,
    jitter_batch,
    symmetric_mean,
    symmetries,
    undo_dihedral_tensor,
)
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
    cfg.write_text("data:\n  augment: d4\n  image_size: 32\n  jitter_rotate: 15\n  jitter_gamma: 0.3\n")
    args = reproduce.parse_args(["cv", "--data", "x.h5", "--config", str(cfg), "--folds", "0",
                                 "--baselines", "unet"])
    cell = next(c for c in reproduce.plan(args) if c.method != "pixeldrl")
    cmd = reproduce.command(cell, args, Path(tmp_path / "run"), resume=False)
    assert cmd[cmd.index("--augment") + 1] == "d4"
    assert cmd[cmd.index("--image-size") + 1] == "32"
    jitter = [cmd[cmd.index(f"--jitter-{k}") + 1] for k in ("rotate", "scale", "gamma")]
    assert jitter == ["15", "0", "0.3"]
    assert set(AUGMENT_MODES) == {"none", "flip", "d4"}


# --- continuous jitter -------------------------------------------------------------------------

GRID = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)


def test_a_quarter_turn_of_the_warp_is_the_symmetry_for_image_and_mask():
    masks = (GRID[:, 0] > 7).astype(np.uint8)  # the bottom two rows
    out_i, out_m = affine_warp(GRID, masks, np.array([90.0]), np.array([1.0]))
    assert np.allclose(out_i[0, 0], np.rot90(GRID[0, 0]), atol=1e-5)  # counter-clockwise, as np.rot90
    assert out_m.dtype == np.uint8 and np.array_equal(out_m[0], np.rot90(masks[0]))
    assert out_i.dtype == np.float32 and out_i.shape == GRID.shape


def test_a_half_turn_of_a_non_square_slice_by_hand():
    wide = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    out_i, _ = affine_warp(wide, np.zeros((1, 2, 4), np.uint8), np.array([180.0]), np.array([1.0]))
    assert np.allclose(out_i[0, 0], [[7, 6, 5, 4], [3, 2, 1, 0]], atol=1e-5)


def test_a_zoom_by_hand():
    # zoom 2: output pixel (0, 0), 1.5 px up-left of the centre, samples the input 0.75 px up-left of
    # it, at (row, col) = (0.75, 0.75): bilinear 4 * 0.75 + 0.75 = 3.75; a zoom 0.5 leaves zero corners
    out_i, _ = affine_warp(GRID, np.zeros((1, 4, 4), np.uint8), np.array([0.0]), np.array([2.0]))
    assert out_i[0, 0, 0, 0] == pytest.approx(3.75) and out_i[0, 0, 3, 3] == pytest.approx(11.25)
    out_i, _ = affine_warp(GRID, np.zeros((1, 4, 4), np.uint8), np.array([0.0]), np.array([0.5]))
    assert out_i[0, 0, 0, 0] == pytest.approx(0.0) and out_i[0, 0, 1:3, 1:3].min() > 0


def test_gamma_curve_by_hand():
    x = np.array([[[[0.0, 0.25], [1.0, 0.5]], [[2.0, 3.0], [6.0, 6.0]], [[5.0, 5.0], [5.0, 5.0]]]], np.float32)
    out = gamma_curve(x, np.array([[0.5, 2.0, 3.0]]))
    assert np.allclose(out[0, 0], [[0.0, 0.5], [1.0, np.sqrt(0.5)]])
    assert np.allclose(out[0, 1], [[2.0, 2.25], [6.0, 6.0]])  # lo 2, span 4: 3 -> 2 + 4 * (1/4)^2
    assert np.array_equal(out[0, 2], x[0, 2])  # a constant channel stays as it is


def test_jitter_off_returns_the_batch_and_draws_nothing():
    rng = np.random.default_rng(0)
    images, masks = np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 4, 4), np.uint8)
    out_i, out_m = jitter_batch(images, masks, Jitter(), rng)
    assert out_i is images and out_m is masks
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)


def test_jitter_draws_one_warp_and_one_gamma_per_slice_and_channel():
    rng = np.random.default_rng(5)
    images = rng.random((3, 2, 8, 8)).astype(np.float32)
    masks = (images[:, 0] > 0.5).astype(np.uint8)
    jitter = Jitter(rotate=30.0, scale=0.2, gamma=0.5)
    out_i, out_m = jitter_batch(images, masks, jitter, np.random.default_rng(7))
    draws = np.random.default_rng(7)
    angles, zooms = draws.uniform(-30, 30, 3), draws.uniform(0.8, 1.2, 3)
    gammas = np.exp(draws.uniform(-np.log(1.5), np.log(1.5), (3, 2)))
    assert np.abs(angles).max() <= 30 and gammas.min() >= 1 / 1.5 and gammas.max() <= 1.5
    warped_i, warped_m = affine_warp(images, masks, angles, zooms)
    assert np.array_equal(out_m, warped_m) and set(np.unique(out_m)) <= {0, 1}
    assert np.allclose(out_i, gamma_curve(warped_i, gammas))
    assert not np.allclose(out_i, images)


def test_jitter_ranges_checked_in_the_config_and_the_baseline_trainer(tmp_path):
    cfg = load_config(None, ["data.jitter_rotate=15", "data.jitter_gamma=0.3"])
    assert cfg.data.jitter() == Jitter(rotate=15.0, scale=0.0, gamma=0.3)
    assert load_config(None).data.jitter() == Jitter()  # off by default, as the paper
    with pytest.raises(ConfigError, match=r"data.jitter_scale must be in \[0, 1\), got 1.5"):
        load_config(None, ["data.jitter_scale=1.5"])
    with pytest.raises(ConfigError, match="data.jitter_rotate must be in"):
        load_config(None, ["data.jitter_rotate=-1"])
    from baselines.train import BaselineError, train_baseline
    with pytest.raises(BaselineError, match="--jitter-gamma must be in"):
        train_baseline("unet", tmp_path / "missing.h5", tmp_path / "out", jitter=Jitter(gamma=-0.1))


# --- test-time averaging ---------------------------------------------------------------------------

def test_tensor_symmetries_match_the_array_ones_and_undo_them():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    for k in range(8):
        assert np.array_equal(dihedral_tensor(x, k).numpy(), dihedral(x.numpy(), k))
        assert torch.equal(undo_dihedral_tensor(dihedral_tensor(x, k), k), x)
    assert symmetries("none") == (0,) and symmetries("flip") == (0, 4) and symmetries("d4") == tuple(range(8))
    with pytest.raises(ValueError, match="unknown augmentation 'rot'"):
        symmetries("rot")


def test_symmetric_mean_of_a_column_ramp_by_hand():
    # predict(s) = s * column index: transformed back, the ramp becomes w, W-1-w (flip) and also
    # h, H-1-h (the rotations), so both means are x * (W-1)/2 on a square; none is predict itself.
    x = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ramp = torch.arange(4.0).view(1, 1, 1, 4)
    calls = []

    def predict(s):
        calls.append(s.shape)
        return s * ramp

    assert torch.equal(symmetric_mean(predict, x, "none"), x * ramp) and len(calls) == 1
    assert torch.allclose(symmetric_mean(predict, x, "flip"), x * 1.5)
    assert torch.allclose(symmetric_mean(predict, x, "d4"), x * 1.5)
    assert len(calls) == 1 + 2 + 8


class ColumnPolicy(torch.nn.Module):
    """A stand-in policy whose keep-minus-zero logit ignores the state: 4 on column 0, -1 elsewhere
    (p(keep) 0.982 and 0.269). Logits [B, 2, H, W], value zeros [B, 1, H, W]."""

    def forward(self, state):
        b, _, h, w = state.shape
        diff = torch.full((b, 1, h, w), -1.0)
        diff[..., 0] = 4.0
        return torch.cat([torch.zeros_like(diff), diff], dim=1), torch.zeros(b, 1, h, w)

    def unet(self, x):  # the same map as one probability logit [B, 1, H, W], as a baseline gives
        return self.forward(x)[0][:, 1:]


def column_policy_masks():
    """What averaging makes of ColumnPolicy on 5x5, by hand: none keeps column 0; flip also keeps
    column 4 (each border pixel averages 0.982 and 0.269: 0.63); d4 keeps only the 4 corners (a corner
    lands in column 0 under 4 of the 8 symmetries: 0.63; another border pixel under 2: 0.45)."""
    none = torch.zeros(5, 5, dtype=torch.bool)
    none[:, 0] = True
    flip = none.clone()
    flip[:, 4] = True
    d4 = torch.zeros(5, 5, dtype=torch.bool)
    d4[[0, 0, 4, 4], [0, 4, 0, 4]] = True
    return {"none": none, "flip": flip, "d4": d4}


@pytest.mark.parametrize("tta", ["none", "flip", "d4"])
def test_greedy_episode_and_baseline_prediction_average_over_symmetries(tta):
    from a3c.config import EnvConfig
    from a3c.rollout import ActionRule, greedy_episode
    from baselines.train import predict

    expected = column_policy_masks()[tta]
    images = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    policy = ColumnPolicy()
    masks = greedy_episode(policy, images, EnvConfig(t_max=3), rule=ActionRule(tta=tta))
    assert len(masks) == 3 and all(torch.equal(m, expected.expand(2, 5, 5)) for m in masks)
    assert torch.equal(predict(policy.unet, images, tta=tta), expected.expand(2, 5, 5))
