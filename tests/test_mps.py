"""MPS: the launcher's choice (``plan_mps``; by default for several CUDA workers, ``--mps`` always,
``--no-mps`` never), cuDNN autotuning that follows it, and the private daemon's start and stop,
against a stand-in for nvidia-cuda-mps-control.

The stand-in records each call (arguments, the daemon folders it was given, the command on its
stdin); FAKE_MPS says how it behaves. On a GPU machine with the real program, the last test runs
a short CUDA training under it (skipped elsewhere), and bench/gpu_check.sh measures it.
"""
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from a3c.config import ConfigError, config_from_dict, cudnn_benchmark_on, load_config
from tests.conftest import run_module, wait_for
from workers.mps import (
    DEFAULT_PIPE,
    ENV_KEYS,
    MPSError,
    MPSPlan,
    gpu_settings_line,
    mps_served,
    plan_mps,
    start_mps,
    stop_mps,
)

SMOKE = "configs/smoke.yaml"

FAKE = """#!/bin/sh
# a stand-in for nvidia-cuda-mps-control: FAKE_MPS = ok | fail_start | mute | serve
cmd=""
[ "$1" = "-d" ] || read -r cmd
echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY cmd=$cmd" >> "$FAKE_MPS_RECORD"
if [ "$1" = "-d" ]; then
  echo "daemon started" > "$CUDA_MPS_LOG_DIRECTORY/control.log"
  [ "$FAKE_MPS" = fail_start ] && { echo "permission denied" >&2; echo "cannot open the GPU" >> "$CUDA_MPS_LOG_DIRECTORY/control.log"; exit 1; }
  exit 0
fi
[ "$FAKE_MPS" = mute ] && { echo "Cannot find MPS control daemon process" >&2; exit 1; }
[ "$cmd" = get_server_list ] && [ "$FAKE_MPS" = serve ] && echo 4242
exit 0
"""  # noqa: E501 (a shell script: its long line stays one line)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    binary = tmp_path / "bin" / "nvidia-cuda-mps-control"
    binary.parent.mkdir()
    binary.write_text(FAKE)
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    record = tmp_path / "record.txt"
    monkeypatch.setenv("FAKE_MPS_RECORD", str(record))
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ['PATH']}")
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    return record


def calls(record: Path) -> list[str]:
    return record.read_text().splitlines()


def quit_calls(record: Path, folder: Path | None = None) -> list[str]:
    """The stand-in's calls once the detached quit has run (and removed ``folder``)."""
    wait_for(lambda: record.exists() and calls(record)[-1].endswith("cmd=quit") and not (folder and folder.exists()),
             timeout=10, what="the detached quit")
    return calls(record)


@pytest.mark.parametrize("mode, served", [("ok", "no process connected"), ("serve", "1 server(s) served this run")])
def test_start_exports_the_folders_and_stop_undoes_it(fake, tmp_path, monkeypatch, mode, served):
    monkeypatch.setenv("FAKE_MPS", mode)
    mps = start_mps()
    pipe, log = os.environ["CUDA_MPS_PIPE_DIRECTORY"], os.environ["CUDA_MPS_LOG_DIRECTORY"]
    assert Path(pipe).is_dir() and Path(log).is_dir() and len(pipe) < 80  # a Unix socket path must stay short
    keep = tmp_path / "run" / "logs" / "mps"
    keep.parent.mkdir(parents=True)
    said = stop_mps(mps, keep)
    assert served in said
    assert all(k not in os.environ for k in ENV_KEYS)
    assert (keep / "control.log").read_text() == "daemon started\n"
    lines = quit_calls(fake, mps.folder)  # the quit is sent by a detached shell, which then removes the folder
    assert not mps.folder.exists()
    assert [line.split(" pipe=")[0] for line in lines] == ["args=-d", "args=", "args=", "args="]
    assert [line.split("cmd=")[1] for line in lines] == ["", "get_server_list", "get_server_list", "quit"]
    assert all(f"pipe={pipe} log={log}" in line for line in lines)


def test_stop_restores_variables_the_user_had(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MPS", "ok")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/users/own/pipe")
    mps = start_mps()
    assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] != "/users/own/pipe"
    stop_mps(mps)
    assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == "/users/own/pipe" and "CUDA_MPS_LOG_DIRECTORY" not in os.environ
    quit_calls(fake, mps.folder)  # nothing of it left behind for the next test


@pytest.mark.parametrize("mode, message", [
    ("fail_start", "nvidia-cuda-mps-control -d failed (exit 1): permission denied; its log ends: cannot open the GPU"),
    ("mute", "the MPS daemon does not answer (exit 1): Cannot find MPS control daemon process; "
             "its log ends: daemon started"),
])
def test_a_daemon_that_fails_leaves_nothing(fake, monkeypatch, mode, message):
    monkeypatch.setenv("FAKE_MPS", mode)
    before = set(Path(tempfile.gettempdir()).glob("pixeldrl-mps-*"))
    with pytest.raises(MPSError, match="--mps: ") as err:
        start_mps()
    assert message in str(err.value)
    assert all(k not in os.environ for k in ENV_KEYS)
    assert set(Path(tempfile.gettempdir()).glob("pixeldrl-mps-*")) - before == set()


def test_missing_control_program_is_a_one_line_error(tiny_store, tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_module(["-m", "a3c.launch", "--mps", "--data", str(tiny_store), "--run-dir", str(tmp_path / "run")],
                     env={"PATH": str(tmp_path / "empty")})
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(
        "error: --mps: nvidia-cuda-mps-control is not on PATH")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra", [["--device", "cpu"], ["--backend", "ray"]])
def test_mps_needs_cuda_and_the_local_backend(tiny_store, tmp_path, extra):
    res = run_module(["-m", "a3c.launch", "--mps", *extra, "--data", str(tiny_store), "--run-dir", str(tmp_path / "r")])
    assert res.returncode == 2 and "--mps needs a CUDA device and --backend local" in res.stderr
    assert not (tmp_path / "r").exists()


def test_mps_without_a_gpu_stops_the_daemon_it_started(fake, tiny_store, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the run would start")
    res = run_module(["-m", "a3c.launch", "--mps", "--data", str(tiny_store), "--run-dir", str(tmp_path / "run")],
                     env={"FAKE_MPS": "ok"})
    assert res.returncode == 2 and "error: --mps: CUDA is not available on this machine" in res.stderr
    assert ("MPS: a private daemon for this run (--mps); cuDNN autotuning on (train.cudnn_benchmark=auto); "
            "CUDA_MPS_PIPE_DIRECTORY=") in res.stderr
    assert "MPS: no process connected" in res.stderr
    assert [line.split("cmd=")[1] for line in quit_calls(fake)] == ["", "get_server_list", "get_server_list", "quit"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode, workers, backend, cuda, control, served, start, why", [
    ("auto", 8, "local", True, "/bin/mps", None, True, "8 CUDA workers share the GPU; --no-mps to go without"),
    ("auto", 8, "local", False, "/bin/mps", None, False, ""),  # not on CUDA: nothing to say
    ("off", 8, "local", True, "/bin/mps", None, False, "--no-mps"),
    ("off", 8, "local", False, "/bin/mps", None, False, ""),
    ("on", 1, "local", False, None, "x", True, "--mps"),  # forced: start_mps fails loudly where it cannot
    ("auto", 1, "local", True, "/bin/mps", None, False, "one CUDA worker: no other process shares the GPU"),
    ("auto", 8, "ray", True, "/bin/mps", None, False, "--backend ray: start MPS on each node yourself"),
    ("auto", 8, "local", True, None, None, False, "nvidia-cuda-mps-control is not on PATH (it comes with the NVIDIA "
                                                  "driver)"),
    ("auto", 8, "local", True, "/bin/mps", "/tmp/nvidia-mps/control exists", False,
     "an MPS daemon already serves this machine: /tmp/nvidia-mps/control exists"),
])
def test_plan_mps(mode, workers, backend, cuda, control, served, start, why):
    assert plan_mps(mode, workers, backend, cuda, control, served) == MPSPlan(start, why)


def test_mps_served_by_the_users_variable_or_the_default_folder(tmp_path):
    assert DEFAULT_PIPE == Path("/tmp/nvidia-mps")
    pipe = tmp_path / "nvidia-mps"
    assert mps_served({}, pipe) is None
    assert mps_served({"CUDA_MPS_PIPE_DIRECTORY": "/own/pipe"}, pipe) == "CUDA_MPS_PIPE_DIRECTORY=/own/pipe is set"
    pipe.mkdir()
    assert mps_served({"CUDA_MPS_PIPE_DIRECTORY": ""}, pipe) is None  # an empty folder: no daemon
    (pipe / "control").symlink_to(tmp_path / "gone")  # a dangling entry counts: --mps overrides
    assert mps_served({}, pipe) == f"{pipe / 'control'} exists"


def test_cudnn_benchmark_is_auto_true_or_false():
    assert load_config(SMOKE).train.cudnn_benchmark == "auto"
    for raw, value in (("true", "true"), ("false", "false"), ("auto", "auto"), ("yes", "true"), ("'false'", "false")):
        assert load_config(SMOKE, [f"train.cudnn_benchmark={raw}"]).train.cudnn_benchmark == value
    with pytest.raises(ConfigError, match="train.cudnn_benchmark: expected one of auto, true, false, got 'fast'"):
        load_config(SMOKE, ["train.cudnn_benchmark=fast"])
    old = load_config(SMOKE).to_dict()
    old["train"]["cudnn_benchmark"] = False  # a checkpoint's config from before the auto setting
    assert config_from_dict(old).train.cudnn_benchmark == "false"
    stored = load_config(SMOKE, ["train.cudnn_benchmark=true"]).to_dict()
    assert config_from_dict(stored).train.cudnn_benchmark == "true"
    assert [cudnn_benchmark_on(s, m) for s in ("auto", "true", "false") for m in (False, True)] == [
        False, True, True, True, False, False]


def test_gpu_settings_line_says_why_in_one_line():
    started = gpu_settings_line(MPSPlan(True, "8 CUDA workers share the GPU"), True, "auto", True)
    assert started == ("MPS: a private daemon for this run (8 CUDA workers share the GPU); "
                       "cuDNN autotuning on (train.cudnn_benchmark=auto)")
    off = gpu_settings_line(MPSPlan(False, "--no-mps"), False, "auto", False)
    assert off == ("MPS: not used (--no-mps); cuDNN autotuning off (train.cudnn_benchmark=auto), "
                   "today's safe setting without MPS")
    assert gpu_settings_line(MPSPlan(False, "--no-mps"), False, "true", True).endswith(
        "cuDNN autotuning on (train.cudnn_benchmark=true)")
    assert "\n" not in off


def test_a_daemon_the_launcher_chose_that_fails_costs_the_run_only_mps(fake, monkeypatch):
    from a3c.launch import start_planned_mps

    monkeypatch.setenv("FAKE_MPS", "fail_start")
    mps, plan = start_planned_mps(MPSPlan(True, "2 CUDA workers share the GPU"), "auto")
    assert mps is None and not plan.start
    assert plan.why == ("its private daemon did not start: nvidia-cuda-mps-control -d failed (exit 1): permission "
                        "denied; its log ends: cannot open the GPU; --no-mps skips trying")
    with pytest.raises(MPSError, match="^--mps: nvidia-cuda-mps-control -d failed"):
        start_planned_mps(MPSPlan(True, "--mps"), "on")
    assert start_planned_mps(MPSPlan(False, "--no-mps"), "off") == (None, MPSPlan(False, "--no-mps"))


def cuda_args(tiny_store, tmp_path, *extra):
    return ["-m", "a3c.launch", "--device", "cuda", *extra, "--data", str(tiny_store), "--run-dir",
            str(tmp_path / "run")]


def no_machine_daemon():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the run would start")
    if mps_served({}) is not None:
        pytest.skip("an MPS daemon serves this machine")


def test_several_cuda_workers_start_the_daemon_by_default(fake, tiny_store, tmp_path):
    """No flag: the launcher starts the (stand-in) daemon for 2 CUDA workers; then, without a GPU here,
    the device check fails and the daemon is stopped."""
    no_machine_daemon()
    res = run_module(cuda_args(tiny_store, tmp_path, "--workers", "2"), env={"FAKE_MPS": "ok"})
    assert res.returncode == 2 and "error: --device cuda: CUDA is not available" in res.stderr
    assert ("MPS: a private daemon for this run (2 CUDA workers share the GPU; --no-mps to go without); "
            "cuDNN autotuning on (train.cudnn_benchmark=auto); CUDA_MPS_PIPE_DIRECTORY=") in res.stderr
    assert [line.split("cmd=")[1] for line in quit_calls(fake)] == ["", "get_server_list", "get_server_list", "quit"]


@pytest.mark.parametrize("extra", [["--workers", "2", "--no-mps"], ["--workers", "1"]])
def test_no_daemon_with_no_mps_or_one_worker(fake, tiny_store, tmp_path, extra):
    no_machine_daemon()
    res = run_module(cuda_args(tiny_store, tmp_path, *extra), env={"FAKE_MPS": "ok"})
    assert res.returncode == 2 and "error: --device cuda: CUDA is not available" in res.stderr
    assert "MPS" not in res.stderr and not fake.exists()  # the stand-in was never called


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_a_cpu_run_says_nothing_about_mps(fake, tmp_path, device):
    if device == "auto" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = run_module(["-m", "a3c.launch", "--device", device, "--workers", "2", "--data", str(tmp_path / "no.h5")],
                     env={"FAKE_MPS": "ok"})
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "MPS" not in res.stderr and not fake.exists()


@pytest.mark.slow
def test_bench_passes_mps_to_the_launcher_before_the_overrides(tmp_path):
    """The launcher's own check answers (not argparse's "unrecognized arguments" for a flag among overrides)."""
    res = run_module(["bench/throughput.py", "--mps", "--modes", "async", "--workers", "1", "--updates", "2",
                      "--size", "16", "--config", "configs/smoke.yaml"], timeout=300)
    assert res.returncode != 0
    assert "--mps needs a CUDA device and --backend local" in res.stderr, res.stderr[-500:]


@pytest.mark.skipif(not (torch.cuda.is_available() and shutil.which("nvidia-cuda-mps-control")),
                    reason="needs a CUDA GPU and nvidia-cuda-mps-control")
def test_real_mps_serves_a_short_cuda_run(tiny_store, tmp_path):
    """The default (no flag) for 2 CUDA workers: the launcher's own daemon, autotuning on in the workers."""
    if mps_served(os.environ) is not None:
        pytest.skip(f"an MPS daemon already serves this machine ({mps_served(os.environ)})")
    run = tmp_path / "run"
    res = run_module(["-m", "a3c.launch", "--device", "cuda", "--workers", "2",
                      "--config", "configs/smoke.yaml", "--data", str(tiny_store), "--run-dir", str(run),
                      "--no-progress", "train.max_updates=20"],
                     timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MPS: a private daemon for this run (2 CUDA workers share the GPU" in res.stderr, res.stderr[-2000:]
    assert "server(s) served this run" in res.stderr, res.stderr[-2000:]
    assert json.loads((run / "meta.json").read_text())["cudnn_benchmark"] is True
    assert (run / "logs" / "mps" / "control.log").exists()
    # once the launcher has exited, the daemon quits and its folder goes (the detached quit)
    pipe = Path(res.stderr.split("CUDA_MPS_PIPE_DIRECTORY=")[1].split()[0])
    wait_for(lambda: not pipe.parent.exists(), what="the MPS daemon to quit after the run")
