"""The PixelRL refinement baseline of Fig. 5: coarse-map stores, the refine environment, its training."""
import json

import h5py
import numpy as np
import pytest
import torch

from a3c.config import ConfigError, load_config
from a3c.env import PixelEnv, n_actions, refine_update
from a3c.model import build_model
from a3c.rollout import greedy_actions, greedy_episode, reference_update, sample_actions
from datasets.store import SliceStore
from tests.conftest import run_module

SMOKE = "configs/smoke.yaml"
REFINE = ["env.kind=refine", "env.state=stacked"]


def test_refine_update_adds_the_chosen_delta_and_clips():
    deltas = torch.tensor([1.0, -1.0, 0.4, -0.4, 0.2, -0.2, 0.1, -0.1])
    p = torch.tensor([0.5, 0.95, 0.05, 0.3]).view(1, 1, 2, 2)
    a = torch.tensor([6, 0, 5, 3]).view(1, 2, 2)  # +0.1, +1.0, -0.2, -0.4
    out = refine_update(p, a, deltas).flatten().tolist()
    assert out == pytest.approx([0.6, 1.0, 0.0, 0.0])


def test_refine_env_starts_from_the_coarse_channel_and_rewards_squared_error_decrease():
    cfg = load_config(SMOKE, REFINE).env
    image = torch.rand(1, 1, 2, 2)
    coarse = torch.tensor([0.5, 0.9, 0.2, 0.6]).view(1, 1, 2, 2)
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    env = PixelEnv(cfg, torch.cat([image, coarse], dim=1), gt)
    s0 = env.reset()
    assert torch.equal(s0, torch.cat([image, coarse], dim=1))  # stacked: [I, p(0)]
    actions = torch.tensor([2, 0, 5, 7]).view(1, 2, 2)  # +0.4, +1.0, -0.2, -0.1
    s1, r = env.step(actions)
    p1 = torch.tensor([0.9, 1.0, 0.0, 0.5])
    assert env.mask.flatten().tolist() == pytest.approx(p1.tolist())
    # (p0 - g)^2 - (p1 - g)^2 by hand: 0.25-0.01, 0.01-0, 0.04-0, 0.36-0.25
    assert r.flatten().tolist() == pytest.approx([0.24, 0.01, 0.04, 0.11])
    assert torch.equal(s1[:, :1], image)


def test_refine_network_has_one_logit_per_delta_and_takes_image_plus_map():
    cfg = load_config(SMOKE, REFINE + ["env.deltas=[0.5, -0.5, 0.0]"])
    assert n_actions(cfg.env) == 3
    model = build_model(cfg.model, 4, cfg.env)  # 3 image channels + the coarse map in the store
    assert model.in_channels == 4  # [I (3), p]
    logits, value = model(torch.rand(2, 4, 16, 16))
    assert logits.shape == (2, 3, 16, 16) and value.shape == (2, 1, 16, 16)
    with pytest.raises(ConfigError, match="env.deltas"):
        load_config(SMOKE, ["env.kind=refine", "env.deltas=[1.0]"])
    with pytest.raises(ConfigError, match="env.kind"):
        load_config(SMOKE, ["env.kind=threshold"])


def test_many_action_sampling_follows_the_softmax_and_the_generator():
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3])).view(1, 3, 1, 1).expand(1, 3, 200, 200).contiguous()
    a = sample_actions(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(a.flatten(), minlength=3).float() / a.numel()
    assert freq.tolist() == pytest.approx([0.1, 0.6, 0.3], abs=0.01)  # 40,000 draws: sd < 0.0025
    assert torch.equal(a, sample_actions(logits, torch.Generator().manual_seed(0)))
    assert torch.equal(greedy_actions(logits), torch.ones(1, 200, 200, dtype=torch.long))


def test_refine_reference_update_and_greedy_episode_run():
    cfg = load_config(SMOKE, REFINE)
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, cfg.env)
    x = torch.cat([torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)], dim=1)
    g = (torch.rand(2, 1, 16, 16) > 0.5).float()
    stats = reference_update(model, x, g, cfg, torch.Generator().manual_seed(0))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(t).all() for t in grads) and any(t.abs().sum() > 0 for t in grads)
    assert np.isfinite(stats.policy_loss) and np.isfinite(stats.value_loss)
    masks = greedy_episode(model, x, cfg.env)
    assert len(masks) == cfg.env.t_max and masks[-1].shape == (2, 16, 16) and masks[-1].dtype == torch.bool


def test_refine_env_without_a_coarse_channel_is_refused():
    cfg = load_config(SMOKE, REFINE).env
    with pytest.raises(ValueError, match="coarse-map channel"):
        PixelEnv(cfg, torch.rand(1, 1, 8, 8))


@pytest.fixture(scope="module")
def baseline_ckpt(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("unet")
    res = run_module(["-m", "baselines.train", "unet", "--data", str(tiny_store), "--out", str(out),
                      "--max-updates", "3", "--width", "tiny", "--device", "cpu", "--no-progress"], timeout=300)
    assert res.returncode == 0, res.stderr
    return out / "best.pt"


@pytest.mark.slow
def test_coarse_store_adds_the_baseline_probability_channel(tiny_store, baseline_ckpt, tmp_path):
    out = tmp_path / "coarse.h5"
    res = run_module(["-m", "baselines.coarse", "--ckpt", str(baseline_ckpt), "--data", str(tiny_store),
                      "--out", str(out), "--device", "cpu", "--no-progress"], timeout=300)
    assert res.returncode == 0, res.stderr
    src, dst = SliceStore(tiny_store), SliceStore(out)
    c, h, w = src.image_shape
    assert dst.image_shape == (c + 1, h, w) and dst.n == src.n
    for split in ("train", "val", "test", "train_50", "fold0/test"):
        assert np.array_equal(src.indices(split), dst.indices(split))
    with h5py.File(tiny_store, "r") as a, h5py.File(out, "r") as b:
        assert np.array_equal(a["masks"][()], b["masks"][()])
        assert np.array_equal(a["images"][()], b["images"][:, :c])
        coarse = b["images"][:, c]
        assert json.loads(b.attrs["coarse_from"])["baseline"] == "unet"
    assert coarse.min() >= 0.0 and coarse.max() <= 1.0 and coarse.std() > 0

    # the maps are the baseline's own probabilities
    from baselines.train import model_from_baseline_checkpoint

    model, _ = model_from_baseline_checkpoint(baseline_ckpt)
    images, _ = src.read(np.arange(4))
    with torch.no_grad():
        expect = torch.sigmoid(model(torch.from_numpy(images)))[:, 0].numpy()
    assert np.allclose(coarse[:4], expect, atol=1e-5)

    again = run_module(["-m", "baselines.coarse", "--ckpt", str(baseline_ckpt), "--data", str(tiny_store), "--out",
                        str(out), "--no-progress"], timeout=120)
    assert (again.returncode == 2
            and again.stderr.strip().splitlines()[-1] == f"error: {out}: exists (--overwrite replaces it)")


def test_coarse_store_refuses_a_pixeldrl_checkpoint(tiny_store, tmp_path):
    bogus = tmp_path / "not-a-baseline.pt"
    torch.save({"format": 1, "kind": "pixeldrl"}, bogus)
    out = tmp_path / "coarse.h5"
    res = run_module(["-m", "baselines.coarse", "--ckpt", str(bogus), "--data", str(tiny_store), "--out", str(out),
                      "--no-progress"], timeout=120)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bogus) in last
    assert not out.exists() and not list(tmp_path.glob(".coarse.h5.*"))
