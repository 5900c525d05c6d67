"""The asynchronous trainer end to end, on a tiny synthetic store, and the faults it must survive."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from a3c.checkpoint import load_checkpoint
from a3c.config import load_config
from a3c.learner import Learner, lr_at, train_single_process
from a3c.model import build_model
from a3c.params import flatten, numel
from tests.conftest import ROOT, run_module, wait_for

SMOKE = "configs/smoke.yaml"


def launch_args(store, run_dir, workers=2, *overrides):
    return ["-m", "a3c.launch", "--workers", str(workers), "--config", SMOKE, "--data", str(store),
            "--run-dir", str(run_dir), "--device", "cpu", "--no-progress", *overrides]


def start_launch(store, run_dir, workers=2, *overrides, env=None, own_group=False) -> subprocess.Popen:
    """The launcher in a subprocess; ``own_group``: in a process group of its own (for killpg)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, *launch_args(store, run_dir, workers, *overrides)], cwd=ROOT,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=own_group)


def child_pids(run_dir: Path) -> dict[str, int]:
    """pid of each child from its log's first line (``... name pid=N INFO started``); the last start wins."""
    pids = {}
    for log in (run_dir / "logs").glob("*.log"):
        for line in log.read_text().splitlines():
            if line.endswith("INFO started"):
                pids[log.stem] = int(line.split("pid=")[1].split()[0])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until_training(run: Path) -> dict[str, int]:
    """Wait for a 2-worker run's checkpoint with updates and all four children; their pids."""
    latest = run / "checkpoints" / "latest.pt"
    wait_for(lambda: latest.exists() and updates_in(latest) > 0 and len(child_pids(run)) == 4,
             what="a running trainer")
    return child_pids(run)


def updates_in(path: Path) -> int:
    return int(load_checkpoint(path)["counters"]["updates"])


@pytest.mark.slow
def test_end_to_end_two_workers(tiny_store, tmp_path):
    run = tmp_path / "run"
    res = run_module(launch_args(tiny_store, run, 2, "train.max_updates=12"))
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt["counters"]["updates"] == 12
    assert ckpt["preprocess"]["image_shape"] == [1, 32, 32] and ckpt["preprocess"]["normalisation"]
    cfg = load_config(SMOKE)
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg.model, 1, cfg.env.state)
    assert any(not torch.equal(v, fresh.state_dict()[k]) for k, v in ckpt["model"].items()), "parameters unchanged"
    assert (run / "checkpoints" / "best.pt").exists() and (run / "checkpoints" / "best.json").exists()
    server_log = (run / "logs" / "server.log").read_text()
    heard = sorted(int(line.split("first gradient from worker ")[1].split()[0])
                   for line in server_log.splitlines() if "first gradient from worker" in line)
    assert heard == [0, 1], server_log  # the progress bar's warm-up count: once per worker rank
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and "DICE" in res.stdout
    assert metrics["selection"] == "best" and metrics["checkpoint"].endswith("best.pt")
    last = metrics["by_selection"]["last"]  # the final parameters are scored beside the headline
    assert last["checkpoint"].endswith("latest.pt") and last["updates"] == 12
    assert metrics["by_selection"]["best"]["per_image"] == metrics["per_image"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images, texts = set(), set(), set()
    for ev in (run / "tb").glob("events.*"):
        acc = EventAccumulator(str(ev), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
        texts |= set(acc.Tags()["tensors"])
    for tag in ("losses/policy_loss", "losses/value_loss", "losses/entropy", "charts/mean_reward",
                "charts/learning_rate", "charts/img_steps_per_s", "charts/staleness", "charts/rejected_grads",
                "val/dice", "val/ppv", "val/sen", "val/iou", "val/biou", "val/hd95", "val/kept_fraction",
                "val/object_fraction", "val_steps/dice_t01",
                "val_steps/dice_t03"):
        assert tag in scalars, tag
    assert any(t.startswith("val_examples/") for t in images)
    assert any("config" in t for t in texts)

    out = tmp_path / "eval.json"
    res = run_module(["tools/eval_ckpt.py", "--ckpt", str(run / "checkpoints" / "best.pt"), "--data", str(tiny_store),
                      "--json", str(out), "--no-progress"])
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["params"] == ckpt["params"]


@pytest.mark.slow
def test_one_worker_equals_sequential_reference_updates(tiny_store, tmp_path):
    """...and the served moving average of the parameters (``optim.ema_decay``) equals the reference's."""
    k = 4
    run = tmp_path / "run"
    overrides = [f"train.max_updates={k}", "optim.lr=0.01", "optim.ema_decay=0.9"]
    res = run_module(launch_args(tiny_store, run, 1, *overrides))
    assert res.returncode == 0, res.stderr
    served = load_checkpoint(run / "checkpoints" / "latest.pt")

    from datasets.store import SliceStore

    cfg = load_config(SMOKE, overrides)
    store = SliceStore(tiny_store)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker: the same summation order
    try:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, 1, cfg.env.state)
        learner = train_single_process(model, cfg, lambda rng: store.sample("train", cfg.train.batch_size, rng),
                                       len(store.indices("train")), k)
    finally:
        torch.set_num_threads(threads)
    for name, value in model.state_dict().items():
        assert torch.allclose(served["model"][name], value, rtol=1e-5, atol=1e-6), name
    for name, value in learner.ema_state_dict().items():
        assert torch.allclose(served["ema_model"][name], value, rtol=1e-5, atol=1e-6), name
        assert not torch.allclose(served["ema_model"][name], served["model"][name]), name
    assert served["counters"]["images"] == learner.images


@pytest.mark.parametrize("on, staleness, step", [(True, 4, 0.25), (True, 1, 1.0), (True, 0, 1.0), (False, 4, 1.0)])
def test_staleness_lr_divides_the_step_by_the_gradients_staleness(on, staleness, step):
    """Adam's first step moves every parameter by lr * g / (|g| + eps), i.e. by lr for g = 1; with
    ``staleness_lr`` a gradient ``k`` updates old moves it by lr / k."""
    cfg = load_config(SMOKE, [f"optim.staleness_lr={str(on).lower()}", "optim.lr=0.01"])
    model = build_model(cfg.model, 1)
    learner = Learner(model, torch.zeros(numel(model)), cfg.optim, 10)
    before = flatten(model).clone()
    assert learner.apply(torch.ones(numel(model)), 2, staleness=staleness)
    assert torch.allclose(flatten(model) - before, torch.full((numel(model),), -0.01 * step), rtol=1e-4, atol=1e-7)


def test_learner_rejects_non_finite_gradients():
    cfg = load_config(SMOKE)
    model = build_model(cfg.model, 1)
    learner = Learner(model, torch.zeros(numel(model)), cfg.optim, 10)
    before = flatten(model)
    bad = torch.zeros(numel(model))
    bad[3] = float("nan")
    assert not learner.apply(bad, 2)
    bad[3] = float("inf")
    assert not learner.apply(bad, 2)
    assert learner.rejected == 2 and learner.updates == 0
    assert torch.equal(flatten(model), before)
    assert learner.apply(torch.ones(numel(model)), 2)
    assert not torch.equal(flatten(model), before)


def test_lr_schedule_steps_every_25_epochs():
    cfg = load_config("configs/paper.yaml").optim
    assert lr_at(cfg, 0) == pytest.approx(1e-3)
    assert lr_at(cfg, 24.99) == pytest.approx(1e-3)
    assert lr_at(cfg, 25) == pytest.approx(9e-4)
    assert lr_at(cfg, 199) == pytest.approx(1e-3 * 0.9 ** 7)


@pytest.mark.slow
def test_nan_gradients_are_never_applied(tiny_store, tmp_path):
    run = tmp_path / "run"
    res = run_module(launch_args(tiny_store, run, 1, "train.max_updates=6"), env={"PIXELDRL_FAULT_NAN_EVERY": "2"})
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt["counters"]["rejected"] >= 3 and ckpt["counters"]["updates"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.slow
def test_worker_raising_repeatedly_stops_the_run(tiny_store, tmp_path):
    run = tmp_path / "run"
    res = run_module(launch_args(tiny_store, run, 2, "train.max_updates=1000", "train.max_worker_restarts=2"),
                     env={"PIXELDRL_FAULT_RAISE": "1"}, timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: workers failed") and "injected fault" in last
    # a stop on an error still writes the server's final checkpoint
    assert "checkpoint (stop requested)" in (run / "logs" / "server.log").read_text()
    assert updates_in(run / "checkpoints" / "latest.pt") == 0


@pytest.mark.slow
def test_killed_worker_is_replaced_and_run_completes(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=500")  # ~20 s; a replacement starts in ~3 s
    try:
        latest = run / "checkpoints" / "latest.pt"
        wait_for(lambda: "worker0" in child_pids(run) and latest.exists() and updates_in(latest) > 0,
                 what="a running worker 0")
        pid = child_pids(run)["worker0"]
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "worker 0 died (killed by signal 9)" in err
    assert (run / "logs" / "worker0.log").read_text().count("INFO started") == 2
    assert updates_in(run / "checkpoints" / "latest.pt") == 500


@pytest.mark.slow
def test_ctrl_c_writes_checkpoint_and_leaves_nothing(tiny_store, tmp_path):
    shm_before = set(os.listdir("/dev/shm"))
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=100000")
    try:
        pids = wait_until_training(run)
        # SIGUSR1 makes a child write its Python stacks into its log (for finding where a run hangs)
        os.kill(pids["worker0"], signal.SIGUSR1)
        log0 = run / "logs" / "worker0.log"
        wait_for(lambda: "most recent call first" in log0.read_text() and "worker.py" in log0.read_text(),
                 timeout=10, what="worker 0's stack dump")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"launcher still running 30 s after SIGINT; stderr: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() - t0 < 10.0
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert "checkpoint (stop requested)" in (run / "logs" / "server.log").read_text()
    assert updates_in(run / "checkpoints" / "latest.pt") > 0
    leftovers = {f for f in set(os.listdir("/dev/shm")) - shm_before
                 if "torch" in f or f.startswith(("psm_", "mp-", "sem.mp-"))}
    assert not leftovers


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_still_writes_the_final_checkpoint(tiny_store, tmp_path):
    """``timeout``, Slurm and ``kill -- -PGID`` signal every process of the run at once: the children
    must leave the orderly stop to the launcher instead of dying before the server's last checkpoint."""
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=100000", own_group=True)
    try:
        latest = run / "checkpoints" / "latest.pt"
        pids = wait_until_training(run)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint (stop requested)" in (run / "logs" / "server.log").read_text()
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert updates_in(latest) > 0


@pytest.mark.slow
def test_launcher_sigkill_then_resume_continues(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=100000")
    try:
        latest = run / "checkpoints" / "latest.pt"
        wait_for(lambda: latest.exists() and updates_in(latest) > 0, what="a checkpoint with updates")
        pids = child_pids(run)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    wait_for(lambda: not any(alive(p) for p in pids.values()), timeout=10, what="children to die with the launcher")
    saved = load_checkpoint(latest)
    u0 = int(saved["counters"]["updates"])
    res = run_module(["-m", "a3c.launch", "--workers", "2", "--run-dir", str(run), "--resume", "--device", "cpu",
                      "--no-progress", f"train.max_updates={u0 + 10}"])
    assert res.returncode == 0, res.stderr
    final = load_checkpoint(latest)
    assert final["counters"]["updates"] == u0 + 10
    assert final["counters"]["images"] > saved["counters"]["images"]
    assert f"resumed at update {u0}" in (run / "logs" / "server.log").read_text()
    # Adam's step count continued from the saved state rather than restarting
    steps = [s["step"] for s in final["optimizer"]["state"].values()]
    assert min(float(s) for s in steps) == u0 + 10


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", [
    (["--data", "/nonexistent/store.h5"], "/nonexistent/store.h5"),
    (["train.nope=1"], "unknown key train.nope"),
    (["env.state=weird"], "env.state"),
    (["--resume"], "needs --run-dir"),
    (["--run-dir", "/nonexistent/run", "--resume"], "no such checkpoint"),
])
def test_launch_bad_input_is_one_line_exit_2(tiny_store, extra, message):
    args = ["-m", "a3c.launch", "--workers", "1", "--config", SMOKE, "--no-progress"]
    if "--data" not in extra:
        args += ["--data", str(tiny_store)]
    res = run_module(args + extra, timeout=60)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr.strip().splitlines()[-1]


def test_progress_bar_shows_warm_up_until_every_worker_has_pushed():
    from workers.supervisor import progress_postfix

    status = {"epoch": 0.0, "img_steps_per_s": 0.0, "workers_ready": 0, "val_updates": 0, "val_dice": 0.0}
    assert progress_postfix(status, 8) == {"epoch": "0.00", "img-steps/s": "0.0", "warm-up": "0/8 workers"}
    status.update(epoch=0.5, img_steps_per_s=12.34, workers_ready=3)
    assert progress_postfix(status, 8)["warm-up"] == "3/8 workers"
    status.update(workers_ready=8, val_updates=40, val_dice=0.71234)
    assert progress_postfix(status, 8) == {"epoch": "0.50", "img-steps/s": "12.3", "val_dice": "0.7123"}


def test_more_cpu_workers_than_cores_gets_a_note_or_a_warning():
    from a3c.launch import oversubscribed

    assert oversubscribed(2, 1, 2, 0) is None and oversubscribed(4, 2, 8, 0) is None
    msg = oversubscribed(8, 1, 2, 2)  # auto: two compute at once
    assert msg.startswith("note: 8 workers x 1 thread(s) on 2 CPU core(s): at most 2 compute at once")
    assert "about 1 update(s) stale instead of 7" in msg
    msg = oversubscribed(8, 1, 2, 0)  # no limit (train.active_workers set to 8 or more)
    assert msg.startswith("warning: 8 workers") and "about 7 updates stale" in msg
    assert oversubscribed(3, 2, 4, 0).endswith("consider --workers 2 or train.active_workers=0")


def test_active_workers_resolution():
    from workers.common import active_workers

    assert active_workers(0, 8, "cpu", 1, cores=2) == 2
    assert active_workers(0, 2, "cpu", 1, cores=2) == 0   # they fit: no limit
    assert active_workers(0, 8, "cpu", 2, cores=2) == 1
    assert active_workers(0, 8, "cuda", 1, cores=2) == 0  # GPU workers: no limit
    assert active_workers(3, 8, "cuda", 1, cores=2) == 3 and active_workers(12, 8, "cpu", 1, cores=2) == 8


@pytest.mark.slow
def test_eight_workers_taking_turns_keep_gradients_fresh(tiny_store, tmp_path):
    """8 workers, at most 1 computing: after the first round every gradient is applied on the
    parameters it was computed on (staleness 0)."""
    run = tmp_path / "run"
    res = run_module(launch_args(tiny_store, run, 8, "train.max_updates=24", "train.active_workers=1"))
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["counters"]["updates"] == 24
    log = (run / "logs" / "server.log").read_text()
    assert "at most 1 of 8 workers compute at once" in log
    line = next(x for x in log.splitlines() if "staleness of the applied gradients" in x)
    counts = dict(tuple(int(v) for v in kv.split(": ")) for kv in line.split("count): ")[1].split(", "))
    assert sum(counts.values()) == 24
    assert sum(n for k, n in counts.items() if k > 0) <= 7, line  # only the first round is stale

