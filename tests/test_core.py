"""Core pieces: returns and losses worked by hand, the environment, the network's shapes."""
import math

import pytest
import torch

from a3c.config import Config, ConfigError, load_config, parse_overrides
from a3c.env import PixelEnv, observe, pixel_reward, update_mask
from a3c.losses import class_weights, discounted_returns, entropy_map, step_losses
from a3c.model import RewardConv, build_model
from a3c.params import numel
from a3c.rollout import greedy_episode, reference_update, sample_actions


def t2(rows):
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, 2, 2)


R0 = t2([[1, 0], [-1, 0]])
R1 = t2([[0, 1], [0, 0]])


def test_returns_by_hand_zero_bootstrap():
    rets = discounted_returns([R0, R1], torch.zeros(1, 1, 2, 2), gamma=0.5)
    assert torch.equal(rets[1], R1)
    assert torch.allclose(rets[0], t2([[1, 0.5], [-1, 0]]))


def test_returns_by_hand_value_bootstrap_and_advantage():
    rets = discounted_returns([R0, R1], torch.full((1, 1, 2, 2), 2.0), gamma=0.5)
    assert torch.allclose(rets[1], t2([[1, 2], [1, 1]]))
    assert torch.allclose(rets[0], t2([[1.5, 1], [-0.5, 0.5]]))
    terms = step_losses(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                        torch.full((1, 1, 2, 2), 0.5), rets[0])
    # A = R - V = [[1, .5], [-1, 0]]; log pi = -ln 2 everywhere
    assert terms["advantage"].item() == pytest.approx(0.125)
    assert terms["policy"].item() == pytest.approx(math.log(2) * 0.125, rel=1e-6)
    assert terms["value"].item() == pytest.approx((1 + 0.25 + 1 + 0) / 4)
    assert terms["entropy"].item() == pytest.approx(math.log(2), rel=1e-6)


def test_returns_with_a_neighbour_kernel_by_hand():
    conv = RewardConv(3)
    with torch.no_grad():
        conv.weight[0, 0, 1, 2] = 0.5  # out[i, j] = x[i, j] + 0.5 * x[i, j + 1]
    rets = discounted_returns([R0, R1], torch.zeros(1, 1, 2, 2), gamma=0.5, reward_conv=conv)
    assert torch.allclose(rets[0], t2([[1.25, 0.5], [-1, 0]]))


def test_identity_kernel_equals_plain_discounted_sum():
    g = torch.Generator().manual_seed(0)
    rewards = [torch.randn(2, 1, 9, 11, generator=g) for _ in range(5)]
    boot = torch.randn(2, 1, 9, 11, generator=g)
    with_conv = discounted_returns(rewards, boot, 0.95, RewardConv(33))
    for t in range(5):
        plain = sum(0.95 ** (k - t) * rewards[k] for k in range(t, 5)) + 0.95 ** (5 - t) * boot
        assert torch.allclose(with_conv[t], plain, atol=1e-5)


def test_kernel_gets_gradient_through_value_loss_only():
    conv = RewardConv(3)
    rewards = [torch.randn(1, 1, 6, 6) for _ in range(3)]
    rets = discounted_returns(rewards, torch.zeros(1, 1, 6, 6), 0.9, conv)
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    acts = torch.randint(0, 2, (1, 6, 6))
    value = torch.randn(1, 1, 6, 6, requires_grad=True)
    terms = step_losses(logits, acts, value, rets[0])
    terms["policy"].backward(retain_graph=True)
    assert conv.weight.grad is None or conv.weight.grad.abs().sum() == 0
    terms["value"].backward()
    assert conv.weight.grad.abs().sum() > 0


def test_loss_finite_with_extreme_logits():
    logits = torch.tensor([1e4, -1e4]).view(1, 2, 1, 1).repeat(2, 1, 4, 4).requires_grad_()
    acts = torch.zeros(2, 4, 4, dtype=torch.long)  # the action with probability ~0
    terms = step_losses(logits, acts, torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    total = terms["policy"] + terms["value"] - 0.01 * terms["entropy"]
    total.backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(logits.grad).all()
    ent = entropy_map(torch.log_softmax(logits.detach().float(), dim=1))
    assert torch.isfinite(ent).all() and torch.equal(ent.mean(), terms["entropy"].detach())


def smoke_cfg(**over):
    cfg = load_config("configs/smoke.yaml")
    for k, v in over.items():
        sec, name = k.split("__")
        setattr(getattr(cfg, sec), name, v)
    return cfg


def test_gradients_reach_features_from_policy_and_value():
    torch.manual_seed(0)
    cfg = smoke_cfg()
    model = build_model(cfg.model, 1)
    x = torch.randn(2, 1, 16, 16)
    logits, value = model(x)
    acts = torch.randint(0, 2, (2, 16, 16))
    terms = step_losses(logits, acts, value, torch.randn(2, 1, 16, 16))
    first = model.features.blocks[0][0].weight
    for name in ("policy", "value"):
        model.zero_grad()
        terms[name].backward(retain_graph=True)
        assert first.grad is not None and first.grad.abs().sum() > 0, name


@pytest.mark.parametrize("channels,size", [(1, (32, 32)), (3, (32, 32)), (1, (181, 217)), (3, (45, 37))])
@pytest.mark.parametrize("sam,dilation", [(True, True), (False, False), (True, False), (False, True)])
def test_network_shapes(channels, size, sam, dilation):
    cfg = smoke_cfg(model__sam=sam, model__dilation=dilation)
    model = build_model(cfg.model, channels)
    with torch.no_grad():
        logits, value = model(torch.randn(2, channels, *size))
    assert logits.shape == (2, 2, *size)
    assert value.shape == (2, 1, *size)


def test_paper_configuration_parameter_count_near_paper():
    cfg = load_config("configs/paper.yaml")
    n = numel(build_model(cfg.model, 3))
    assert abs(n - 7.14e6) / 7.14e6 < 0.10, n
    ablated = load_config("configs/paper.yaml", ["model.sam=false"])
    assert numel(build_model(ablated.model, 3)) < n


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


def test_sample_actions_follow_policy():
    logits = torch.zeros(1, 2, 100, 100)
    logits[:, 1] = math.log(3.0)  # p(keep) = 0.75
    a = sample_actions(logits, torch.Generator().manual_seed(0))
    assert a.dtype == torch.long and set(a.unique().tolist()) == {0, 1}
    assert abs(a.float().mean().item() - 0.75) < 0.02


@pytest.mark.parametrize("state,update,extra", [
    ("masked", "replace", {}),
    ("stacked", "multiply", {}),
    # the options for real patients: live-pixel masking, cross-entropy, capped class weights
    ("masked", "multiply", {"loss__live_only": True, "loss__ce_coef": 1.0, "loss__class_weight_cap": 5.0}),
    ("masked", "replace", {"loss__live_only": True, "loss__ce_coef": 1.0, "loss__class_weight_cap": 5.0}),
])
def test_onestep_and_full_rollouts_give_equal_gradients(state, update, extra):
    cfg = smoke_cfg(env__state=state, env__mask_update=update, loss__bootstrap="value", **extra)
    torch.manual_seed(1)
    model = build_model(cfg.model, 2, state)
    x = torch.randn(2, 2, 24, 20)
    gt = (torch.rand(2, 1, 24, 20) > 0.6).float()
    grads = {}
    for mode in ("full", "onestep"):
        cfg.train.rollout = mode
        model.zero_grad()
        reference_update(model, x, gt, cfg, torch.Generator().manual_seed(7))
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    for g_full, g_one in zip(grads["full"], grads["onestep"]):
        assert torch.allclose(g_full, g_one, rtol=1e-4, atol=1e-7)
    assert model.reward_conv.weight.grad.abs().sum() > 0


def test_greedy_episode_returns_t_max_masks():
    cfg = smoke_cfg()
    model = build_model(cfg.model, 1)
    masks = greedy_episode(model, torch.randn(3, 1, 16, 16), cfg.env, t_max=4)
    assert len(masks) == 4 and masks[-1].shape == (3, 16, 16) and masks[-1].dtype == torch.bool


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["train.max_updates=7", "model.sam=false", "optim.lr=0.01"])
    assert cfg.train.max_updates == 7 and cfg.model.sam is False and cfg.optim.lr == 0.01
    assert parse_overrides(["model.head_dilations=[1,2]"]) == {"model": {"head_dilations": [1, 2]}}
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("configs/smoke.yaml", ["train.nope=1"])
    with pytest.raises(ConfigError, match="expected one of"):
        load_config("configs/smoke.yaml", ["env.state=weird"])
    with pytest.raises(ConfigError, match="expected true/false"):
        load_config("configs/smoke.yaml", ["model.sam=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_base_file_is_applied_first(tmp_path):
    (tmp_path / "a.yaml").write_text("env:\n  t_max: 7\ntrain:\n  batch_size: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  batch_size: 5\n")
    cfg = load_config(tmp_path / "b.yaml", ["env.state=stacked"])
    assert (cfg.env.t_max, cfg.train.batch_size, cfg.env.state) == (7, 5, "stacked")
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    lgg, paper = load_config("configs/lgg.yaml"), load_config("configs/paper.yaml")
    assert lgg.model == paper.model and lgg.train == paper.train and lgg.env == paper.env


def test_class_weights_balance_each_image():
    gt = torch.zeros(2, 1, 4, 4)
    gt[0, 0, 0, :1] = 1  # 1 of 16 pixels
    gt[1, 0, :2] = 1     # 8 of 16
    w = class_weights(gt, 1.0)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(2))
    # image 0: object and background each carry half the total weight
    assert torch.allclose((w[0] * gt[0]).sum(), (w[0] * (1 - gt[0])).sum())
    assert torch.allclose(w[1], torch.ones(1, 4, 4))
    assert torch.equal(class_weights(gt, 0.0), torch.ones_like(gt))


def test_weighted_policy_term_removes_the_majority_bias():
    """With beta = 1 the expected push on a shared keep/zero bias cancels between the classes."""
    gt = torch.zeros(1, 1, 10, 10)
    gt[..., :1, :5] = 1  # 5% object
    logits = torch.zeros(1, 2, 10, 10, requires_grad=True)
    grads = {}
    for beta in (0.0, 1.0):
        logits.grad = None
        w = class_weights(gt, beta)
        # expected gradient: both actions, each with probability 1/2, rewards of eq. 12 from m = 1
        total = 0.0
        for a in (0, 1):
            acts = torch.full((1, 10, 10), a, dtype=torch.long)
            r = (1 - gt) ** 2 - (acts.unsqueeze(1).float() - gt) ** 2
            total = total + 0.5 * step_losses(logits, acts, torch.zeros_like(gt), r, w)["policy"]
        total.backward()
        grads[beta] = (logits.grad[:, 1] - logits.grad[:, 0]).sum().item()
    assert grads[0.0] > 1e-3          # plain mean: net push towards "zero" on a shared bias
    assert abs(grads[1.0]) < 1e-6     # balanced: no net push


def test_limit_batches_cuts_the_last_batch_and_reads_no_further():
    import numpy as np

    from a3c.evaluate import limit_batches

    def batches(n=3, size=3, fail_after=None):
        for k in range(n):
            if fail_after is not None and k >= fail_after:
                raise AssertionError("read a batch past the limit")
            idx = np.arange(k * size, (k + 1) * size)
            yield np.zeros((size, 1, 2, 2)), np.zeros((size, 2, 2)), idx

    assert [len(b[2]) for b in limit_batches(batches(), 5)] == [3, 2]
    assert [len(b[2]) for b in limit_batches(batches(), 0)] == [3, 3, 3]
    assert [len(b[2]) for b in limit_batches(batches(fail_after=2), 6)] == [3, 3]


# PyTorch's own inductor code calls torch.jit.script_method while it compiles; nothing of ours does
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_training_model_gives_the_eager_gradients_after_a_parameter_update():
    """train.compile: a worker's compiled net, bound to a flat vector that the server's new
    parameters are copied into, computes the same gradients as the eager net (no stale weights)."""
    from a3c.model import tune_for_training
    from a3c.params import bind_grads, bind_to_flat, flatten, numel

    cfg = smoke_cfg(train__rollout="full", env__t_max=2)  # one graph to compile (and its backward)
    cfg.train.compile = True
    torch.manual_seed(3)
    eager = build_model(cfg.model, 1, cfg.env)
    compiled = tune_for_training(build_model(cfg.model, 1, cfg.env), "cpu", cfg.train)
    x = torch.rand(2, 1, 16, 16)
    gt = (torch.rand(2, 1, 16, 16) > 0.6).float()
    nets = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        flat, grad = torch.zeros(numel(model)), torch.zeros(numel(model))
        bind_to_flat(model, flat)
        bind_grads(model, grad)
        nets[name] = (model, flat, grad)
    start = flatten(eager)
    for version in range(2):  # the second round runs on new parameters, as after a pull
        theta = start + 0.05 * version * torch.randn(start.shape, generator=torch.Generator().manual_seed(version))
        for model, flat, grad in nets.values():
            flat.copy_(theta)
            grad.zero_()
            reference_update(model, x, gt, cfg, torch.Generator().manual_seed(11))
        torch.testing.assert_close(nets["compiled"][2], nets["eager"][2], rtol=1e-4, atol=1e-6)
    assert nets["compiled"][2].abs().sum() > 0
