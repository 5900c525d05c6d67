"""a3c.env: mask updates, rewards (eq. 12) and states, worked by hand."""
import torch

from a3c.config import Config
from a3c.env import PixelEnv, observe, pixel_reward, update_mask
from tests.conftest import t2


def test_env_mask_update_and_reward():
    gt = t2([[1, 0], [1, 0]])
    m0 = torch.ones(1, 1, 2, 2)
    a = torch.tensor([[[1, 0], [0, 1]]])
    m1 = update_mask(m0, a, "replace")
    assert torch.equal(m1, t2([[1, 0], [0, 1]]))
    # became right: (0,1) -> +1; became wrong: (1,0) -> -1; unchanged right (0,0) and wrong (1,1): 0
    assert torch.equal(pixel_reward(m0, m1, gt), t2([[0, 1], [-1, 0]]))
    a2 = torch.tensor([[[1, 1], [1, 1]]])
    assert torch.equal(update_mask(m1, a2, "replace"), torch.ones(1, 1, 2, 2))
    assert torch.equal(update_mask(m1, a2, "multiply"), m1)


def test_env_states():
    img = torch.arange(8.0).view(1, 2, 2, 2)
    mask = t2([[1, 0], [0, 1]])
    assert torch.equal(observe(img, mask, "masked"), img * mask)
    stacked = observe(img, mask, "stacked")
    assert stacked.shape == (1, 3, 2, 2) and torch.equal(stacked[:, 2:], mask)
    cfg = Config()
    env = PixelEnv(cfg.env, img, t2([[1, 1], [0, 0]]))
    s0 = env.reset()
    assert torch.equal(s0, img)
    s1, r = env.step(torch.zeros(1, 2, 2, dtype=torch.long))
    assert torch.equal(s1, torch.zeros_like(img))
    assert torch.equal(r, t2([[-1, -1], [1, 1]]))
