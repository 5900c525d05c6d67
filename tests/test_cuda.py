"""The CUDA path: channels-last, bf16 autocast, shared CUDA tensors between the server and workers.

The channels-last check runs everywhere (it is a layout change, testable on the CPU); the rest
needs a GPU and is skipped without one.
"""
import json

import pytest
import torch

from a3c.config import load_config
from a3c.model import build_model, tune_for_device, use_channels_last
from a3c.params import flatten
from a3c.rollout import reference_update
from tests.conftest import run_module

SMOKE = "configs/smoke.yaml"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def conv_inputs(model, x):
    """Run model(x) and return the memory layout of every convolution's input, in call order."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    out = model(x)
    for h in hooks:
        h.remove()
    return out, seen


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_changes_layout_not_values(channels):
    cfg = load_config(SMOKE)
    torch.manual_seed(0)
    model = build_model(cfg.model, channels)
    x = torch.rand(2, channels, 24, 24)
    (ref_logits, ref_value), before = conv_inputs(model, x)
    assert not all(before[1:]), "the plain model already runs channels-last"
    ref_logits.sum().backward()
    ref_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)

    (logits, value), after = conv_inputs(use_channels_last(model), x)
    assert all(after), "a convolution still got an NCHW input"
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(value, ref_value, atol=1e-5)
    logits.sum().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert rel_err(grad, ref_grad) < 1e-5
    assert all(p.is_contiguous() for p in model.parameters()), "parameters must stay NCHW views of the flat vector"


def test_tune_for_device_on_cpu_follows_channels_last():
    model = build_model(load_config(SMOKE).model, 1)
    tune_for_device(model, "cpu", load_config(SMOKE, ["train.channels_last=false"]).train)
    assert not getattr(model, "_channels_last", False)
    tune_for_device(model, "cpu")
    assert getattr(model, "_channels_last", False)


@needs_cuda
def test_cuda_forward_matches_cpu_in_fp32_and_bf16():
    cfg = load_config(SMOKE, ["model.width=8", "model.head_channels=16"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 3)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.double()(x.double())[0]
        gpu = tune_for_device(model.float().cuda(), "cuda")
        fp32 = gpu(x.cuda())[0].cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = gpu(x.cuda())[0].float().cpu()
    assert rel_err(fp32, ref) < 3e-3  # TF32 convolutions
    assert rel_err(bf16, ref) < 3e-2


@needs_cuda
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_onestep_gradient_equals_full(amp):
    grads = {}
    for mode in ("full", "onestep"):
        cfg = load_config(SMOKE, [f"train.rollout={mode}", f"train.amp={amp}",
                                  "model.width=8", "model.head_channels=16"])
        torch.manual_seed(0)
        model = tune_for_device(build_model(cfg.model, 1).cuda(), "cuda")
        x = torch.rand(2, 1, 48, 48, device="cuda")
        g = (torch.rand(2, 1, 48, 48, device="cuda") > 0.6).float()
        reference_update(model, x, g, cfg, torch.Generator(device="cuda").manual_seed(1))
        grads[mode] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.isfinite(grads["onestep"]).all()
    # bf16 rounds differently in the re-run forward, so the two modes agree less closely under amp
    assert rel_err(grads["onestep"], grads["full"]) < (5e-2 if amp else 1e-3)


def host_syncs(fn) -> list[str]:
    """The synchronising CUDA calls ``fn()`` makes (PyTorch's sync debug mode, as warnings), each as
    ``file:line``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


@needs_cuda
@pytest.mark.parametrize("mode", ["full", "onestep"])
def test_cuda_update_syncs_with_the_host_once_whatever_t_max(mode):
    """The rollout's inner loop never waits for the GPU: one sync per update (the stats), for any t_max.

    Two warm-up updates, then the fewer syncs of two updates: a one-off lazy initialisation (one
    H200 run saw a second sync once, in the first measured update of the process) is not the
    inner loop, which would sync in every update, t_max times."""
    counts, seen = {}, {}
    for t_max in (2, 6):
        cfg = load_config(SMOKE, [f"train.rollout={mode}", f"env.t_max={t_max}",
                                  "model.width=8", "model.head_channels=16"])
        model = tune_for_device(build_model(cfg.model, 1).cuda(), "cuda")
        x = torch.rand(2, 1, 48, 48, device="cuda")
        g = (torch.rand(2, 1, 48, 48, device="cuda") > 0.6).float()
        gen = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(2):
            reference_update(model, x, g, cfg, gen)
        seen[t_max] = [host_syncs(lambda: reference_update(model, x, g, cfg, gen)) for _ in range(2)]
        counts[t_max] = min(len(s) for s in seen[t_max])
    assert counts[2] == counts[6] <= 1, seen


@needs_cuda
@pytest.mark.slow
def test_cuda_trainer_learns_and_evaluates(tmp_path):
    """Two CUDA workers and the server share theta and the gradient slots by CUDA IPC; the run must learn."""
    from tests.test_learning import make_blob_store

    store = tmp_path / "blobs.h5"
    make_blob_store(store)
    run = tmp_path / "run"
    res = run_module(["-m", "a3c.launch", "--config", SMOKE, "--workers", "2", "--data", str(store),
                      "--run-dir", str(run), "--device", "cuda", "--no-progress", "train.max_updates=300",
                      "train.checkpoint_interval_s=3"],
                     timeout=300)
    assert res.returncode == 0, res.stderr
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["dice"] > 0.6, best
    logs = "".join(p.read_text() for p in (run / "logs").glob("worker*.log"))
    assert "peak_cuda_mib=" in logs and "on cuda" in logs
    assert logs.count("train.rollout auto -> full") == 2, logs  # smoke.yaml leaves it auto; tiny graphs fit

    out = tmp_path / "eval.json"
    res = run_module(["tools/eval_ckpt.py", "--ckpt", str(run / "checkpoints" / "best.pt"), "--data", str(store),
                      "--device", "cuda", "--json", str(out), "--no-progress"])
    assert res.returncode == 0, res.stderr
    assert 0.0 <= json.loads(out.read_text())["dice"] <= 1.0


@needs_cuda
def test_cuda_step_graph_predicts_what_the_full_rollout_adds():
    """train.rollout auto's measure: (t_max - 1) step graphs should be about the extra peak memory of
    ``full`` over ``onestep``, and never much less (an underestimate could run out of memory)."""
    from a3c.env import PixelEnv
    from a3c.memory import step_graph_bytes

    t_max = 6
    cfg = load_config(SMOKE, [f"env.t_max={t_max}", "model.width=8", "model.head_channels=16"])
    torch.manual_seed(0)
    model = tune_for_device(build_model(cfg.model, 1).cuda(), "cuda")
    x = torch.rand(2, 1, 128, 128, device="cuda")
    g = (torch.rand(2, 1, 128, 128, device="cuda") > 0.6).float()
    peaks = {}
    for mode in ("onestep", "full", "onestep", "full"):  # the first of each warms up (workspaces, casts)
        cfg.train.rollout = mode
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        reference_update(model, x, g, cfg, torch.Generator(device="cuda").manual_seed(1))
        torch.cuda.synchronize()
        peaks[mode] = torch.cuda.max_memory_allocated() - base
    grown = peaks["full"] - peaks["onestep"]
    predicted = (t_max - 1) * step_graph_bytes(model, PixelEnv(cfg.env, x, g).reset(), cfg.train.amp)
    assert 0.7 * grown <= predicted <= 3 * grown, (predicted, grown, peaks)


def test_flatten_is_unaffected_by_channels_last():
    model = build_model(load_config(SMOKE).model, 1)
    before = flatten(model)
    use_channels_last(model)
    assert torch.equal(flatten(model), before)


@needs_cuda
def test_flat_adam_on_cuda_matches_the_cpu():
    from a3c.adam import FlatAdam

    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(1000, generator=gen)
    grads = [torch.randn(1000, generator=gen) for _ in range(5)]
    results = {}
    for device in ("cpu", "cuda"):
        t = theta.clone().to(device)
        adam = FlatAdam(t, [torch.Size([10, 100])], lr=1e-3)
        for g in grads:
            adam.step(g.to(device), lr=1e-3)
        results[device] = t.cpu()
    torch.testing.assert_close(results["cuda"], results["cpu"], rtol=1e-5, atol=1e-6)
