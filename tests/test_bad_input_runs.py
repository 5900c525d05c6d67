"""The trainer's bad inputs and faults (issue 18): one ``error:`` line, the right exit code, nothing
half-written, no tracebacks, and the final checkpoint kept on every stop."""
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import get_type_hints

import pytest
import torch

from a3c.checkpoint import FORMAT, save_checkpoint
from a3c.cli import UsageError
from a3c.config import Config, ConfigError, load_config
from a3c.model import build_model
from a3c.params import numel
from tests.conftest import wait_for
from tests.test_trainer import SMOKE, alive, child_pids, start_launch, updates_in, wait_until_training

# --- config time -------------------------------------------------------------------------------


def float_fields() -> list[str]:
    """Every ``section.key`` whose type is a float or a list of floats."""
    cfg, out = Config(), []
    for sec in dataclasses.fields(cfg):
        for name, hint in get_type_hints(type(getattr(cfg, sec.name))).items():
            if hint is float or hint == list[float]:
                out.append(f"{sec.name}.{name}")
    return out


def test_every_float_field_refuses_non_finite_values():
    fields = float_fields()
    assert {"optim.lr", "loss.gamma", "train.epochs", "env.deltas", "eval.poll_s"} <= set(fields)
    for key in fields:
        for bad in (".nan", ".inf", "-.inf"):
            value = f"[1.0, {bad}]" if key == "env.deltas" else bad
            with pytest.raises(ConfigError, match=f"^{key}: expected a finite number"):
                load_config(SMOKE, [f"{key}={value}"])


@pytest.mark.parametrize("override,message", [
    ("train.threads_per_worker=-1", "train.threads_per_worker: expected an integer >= 1, got -1"),
    ("train.threads_per_worker=0", "train.threads_per_worker: expected an integer >= 1, got 0"),
    ("data.image_size=-1", "data.image_size: expected an integer >= 0, got -1"),
    ("train.seed=-1", "train.seed: expected an integer >= 0, got -1"),
    ("train.epochs=-1", "train.epochs must be 0 (no epoch bound) or positive"),
    ("eval.poll_s=0", "eval.poll_s must be positive"),
])
def test_ints_and_intervals_out_of_range_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(SMOKE, [override])


# --- the launcher's bad input, in this process (it fails before any child starts) --------------


@pytest.fixture
def launch_main(capsys):
    """``a3c.launch.main(argv)`` -> (exit code, stderr lines); the signal handlers it installs are put back."""
    from a3c import launch

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def call(argv):
        try:
            code = launch.main([str(a) for a in argv])
        finally:
            for s, h in saved.items():
                signal.signal(s, h)
        return code, capsys.readouterr().err.strip().splitlines()

    return call


def base_args(store, run):
    return ["--workers", "1", "--config", SMOKE, "--data", store, "--run-dir", run, "--device", "cpu", "--no-progress"]


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its bytes and mtime (nothing at all when it does not exist)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder: (folder.read_bytes(), folder.stat().st_mtime_ns)}
    return {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def bad_case(tmp_path: Path, case: str) -> tuple[Path, list, str]:
    """(run folder, extra arguments, expected message) for one bad input."""
    run = tmp_path / "run"
    if case == "run-dir is a file":
        run.write_text("not a folder\n")
        return run, [], f"--run-dir {run}: exists and is not a folder"
    if case == "run-dir under a file":
        (tmp_path / "file").write_text("x\n")
        return tmp_path / "file" / "run", [], "cannot create the folder (Not a directory)"
    if case == "run-dir in a read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the case under a file stands in for it")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        return ro / "run", [], "cannot create the folder (Permission denied)"
    if case == "config not UTF-8":
        cfg = tmp_path / "latin1.yaml"
        cfg.write_bytes("# caf\xe9\ntrain:\n  max_updates: 3\n".encode("latin-1"))
        return run, ["--config", cfg], f"{cfg}: not a UTF-8 text file (byte 5 is 0xe9)"
    if case == "too many workers":
        return run, ["--workers", "100000"], "--workers 100000: at most 256 with --backend local"
    if case == "negative threads":
        return run, ["train.threads_per_worker=-1"], "train.threads_per_worker: expected an integer >= 1, got -1"
    if case == "negative image size":
        return run, ["data.image_size=-1"], "data.image_size: expected an integer >= 0, got -1"
    if case == "NaN learning rate":
        return run, ["optim.lr=.nan"], "optim.lr: expected a finite number, got nan"
    if case == "channels of the model and the store":
        return run, ["model.in_channels=3"], "images have 1 channels, model.in_channels is 3"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["run-dir is a file", "run-dir under a file", "run-dir in a read-only folder",
                                  "config not UTF-8", "too many workers", "negative threads", "negative image size",
                                  "NaN learning rate", "channels of the model and the store"])
def test_launch_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_store, tmp_path, launch_main, case):
    run, extra, message = bad_case(tmp_path, case)
    before = snapshot(run)
    code, err = launch_main(base_args(tiny_store, run) + extra)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert snapshot(run) == before


def test_workers_beyond_the_open_file_limit_are_refused(monkeypatch):
    from a3c import launch

    monkeypatch.setattr(launch.resource, "getrlimit", lambda what: (1024, 4096))
    launch.check_workers(200, "local")  # 864 files
    with pytest.raises(UsageError, match=r"--workers 250: needs about 1064 open files, the limit is 1024 \(raise it"):
        launch.check_workers(250, "local")
    launch.check_workers(250, "ray")  # Ray's workers hold no pipes in the launcher


# --- resume: the network of the checkpoint, the channels of the store ---------------------------


def fake_run(run: Path, channels: int) -> None:
    """A run folder as a run of the smoke config leaves it: config, meta and a checkpoint at update 3."""
    cfg = load_config(SMOKE)
    cfg.model.in_channels = channels
    model = build_model(cfg.model, channels, cfg.env)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "meta.json").write_text('{"resumed_at_update": 0}\n')
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "image_channels": channels, "image_size": [32, 32],
                     "params": numel(model), "model": model.state_dict(),
                     "counters": {"updates": 3, "images": 6, "epoch": 0.375, "rejected": 0, "lr": 1e-3},
                     "rng": torch.get_rng_state()}, run / "checkpoints" / "latest.pt")


@pytest.mark.parametrize("overrides,message", [
    (["model.width=8"], "model.width 4 -> 8"),
    (["train.max_updates=30", "env.state=stacked"], "env.state 'masked' -> 'stacked'"),
])
def test_resume_refuses_a_different_network_and_touches_nothing(tiny_store, tmp_path, launch_main, overrides, message):
    run = tmp_path / "run"
    fake_run(run, 1)
    time.sleep(0.01)
    before = snapshot(run)
    code, err = launch_main(["--workers", "1", "--run-dir", run, "--resume", "--data", tiny_store, "--device", "cpu",
                             "--no-progress", *overrides])
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: --resume cannot change the network of "), err
    assert message in err[0] and "max_updates" not in err[0]
    assert snapshot(run) == before


def test_network_changes_leave_out_what_keeps_the_parameters():
    from a3c.launch import network_changes

    old = load_config(SMOKE)
    assert network_changes(old, load_config(SMOKE, ["optim.lr=0.01", "env.t_max=5", "train.max_updates=9"]), 1) == []
    assert (network_changes(old, load_config(SMOKE, ["model.sam=false", "loss.gamma=0.9"]), 1)
            == ["model.sam True -> False"])


def test_resume_on_a_store_of_other_channels_is_exit_2_and_touches_nothing(tiny_store, tmp_path, launch_main):
    run = tmp_path / "run"
    fake_run(run, 2)
    before = snapshot(run)
    code, err = launch_main(["--workers", "1", "--run-dir", run, "--resume", "--data", tiny_store, "--device", "cpu",
                             "--no-progress"])
    assert code == 2, err
    assert err == [f"error: {tiny_store}: images have 1 channels, the resumed model takes 2"]
    assert snapshot(run) == before


# --- a run whose gradients are all rejected stops (the server's side: tests/test_param_server.py) -----


@pytest.mark.slow
def test_a_run_of_non_finite_gradients_ends_with_one_line(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 1, "train.max_updates=100000", env={"PIXELDRL_FAULT_NAN_EVERY": "1"})
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("error: the last 100 gradients were all non-finite and rejected: "
                                                   "training has diverged"), err
    assert "Traceback" not in err
    assert updates_in(run / "checkpoints" / "latest.pt") == 0


# --- stops on an error keep the training; faults print no tracebacks ----------------------------


def server_log(run: Path) -> str:
    path = run / "logs" / "server.log"
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
def test_a_dead_monitor_stops_the_run_with_a_final_checkpoint(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 1, "train.max_updates=100000", "train.checkpoint_interval_s=1000")
    try:
        wait_for(lambda: "update 10 applied" in server_log(run) and "monitor" in child_pids(run), what="10 updates")
        os.kill(child_pids(run)["monitor"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("error: the monitor died (exit code -9)"), err
    assert "checkpoint (stop requested)" in server_log(run)
    assert updates_in(run / "checkpoints" / "latest.pt") >= 10


@pytest.mark.slow
def test_a_killed_server_gives_one_line_and_no_worker_tracebacks(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=100000")
    try:
        pids = wait_until_training(run)
        os.kill(pids["server"], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("error: the parameter server died (exit code -9)"), err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "ConnectionResetError" not in err, err
    assert not [name for name, pid in pids.items() if alive(pid)]


@pytest.mark.slow
def test_ctrl_c_again_during_the_stop_is_ignored(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=100000")
    try:
        wait_until_training(run)
        while proc.poll() is None:  # Ctrl-C, then again and again while the launcher stops
            proc.send_signal(signal.SIGINT)
            time.sleep(0.1)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "checkpoint (stop requested)" in server_log(run)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_ctrl_c_to_the_group_during_start_up_is_quiet(tiny_store, tmp_path):
    run = tmp_path / "run"
    proc = start_launch(tiny_store, run, 2, "train.max_updates=100000", own_group=True)
    try:
        wait_for(lambda: (run / "meta.json").exists(), what="the launcher to start its children")
        time.sleep(0.2)  # the children import torch now
        assert not (run / "logs" / "server.log").exists(), "too late: the server is up already"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    wait_for(lambda: not group_alive(proc.pid), timeout=10, what="every child to end")
