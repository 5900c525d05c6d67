"""``train.rollout: auto`` (``a3c.memory``): the measured graph of one step, the free memory, the choice."""
import pytest
import torch

from a3c.config import ConfigError, load_config
from a3c.memory import (
    MIB,
    cgroup_room,
    choose_rollout,
    free_ram,
    parse_meminfo,
    resolve_rollout,
    step_graph_bytes,
)
from tests.conftest import run_module

SMOKE = "configs/smoke.yaml"
GIB = 2**30


@pytest.mark.parametrize("step, t_max, sharers, free, mode", [
    (100 * MIB, 10, 8, 20 * GIB, "full"),       # 9 x 100 MiB x 8 = 7.0 GiB <= 60% of 20 GiB
    (100 * MIB, 10, 8, 10 * GIB, "onestep"),    # 7.0 GiB > 6 GiB
    (100 * MIB, 10, 1, 10 * GIB, "full"),       # one process: 0.9 GiB
    (100 * MIB, 1, 64, 1 * MIB, "full"),        # t_max 1: both modes keep one graph
    (100 * MIB, 10, 8, None, "onestep"),        # free memory unknown
    (0, 10, 8, 0, "full"),                      # nothing to keep
])
def test_choose_rollout_by_hand(step, t_max, sharers, free, mode):
    got, why = choose_rollout(step, t_max, sharers, free)
    assert got == mode, why
    assert f"{t_max - 1} more step graph(s)" in why


def test_choose_rollout_edge_is_the_share_of_free_memory():
    # 9 x 10 MiB x 2 = 180 MiB: fits 60% of 300 MiB exactly, not of 299 MiB
    assert choose_rollout(10 * MIB, 10, 2, 300 * MIB)[0] == "full"
    assert choose_rollout(10 * MIB, 10, 2, 299 * MIB)[0] == "onestep"
    assert choose_rollout(10 * MIB, 10, 2, 299 * MIB, share=0.7)[0] == "full"
    assert "180 MiB exceed 60% of the 299 MiB free" in choose_rollout(10 * MIB, 10, 2, 299 * MIB)[1]


def test_free_ram_reads_meminfo_and_the_cgroup(tmp_path):
    meminfo = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   2048 kB\n"
    assert parse_meminfo(meminfo) == 2048 * 1024 and parse_meminfo("MemTotal: 5 kB\n") is None
    assert cgroup_room("max\n", "100\n") is None and cgroup_room("1000\n", "400\n") == 600
    assert cgroup_room("100", "400") == 0
    (tmp_path / "meminfo").write_text(meminfo)
    cg = tmp_path / "cg"
    cg.mkdir()
    assert free_ram(tmp_path / "meminfo", cg) == 2048 * 1024            # no cgroup files
    (cg / "memory.max").write_text("1048576\n")
    (cg / "memory.current").write_text("524288\n")
    assert free_ram(tmp_path / "meminfo", cg) == 524288                 # the cgroup's room is smaller
    assert free_ram(tmp_path / "missing", tmp_path / "none") is None


def test_step_graph_counts_saved_storages_once_and_not_the_parameters():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    x = torch.rand(2, 1, 8, 8)
    # conv1 saves x; ReLU saves its output r, which conv2 saves too (one storage); the weights are parameters
    assert step_graph_bytes(net, x) == x.nbytes + 2 * 4 * 8 * 8 * 4
    with torch.no_grad():
        assert step_graph_bytes(net, x) == 0


def test_step_graph_of_the_network_grows_with_the_image():
    cfg = load_config(SMOKE)
    from a3c.model import build_model, tune_for_training

    model = tune_for_training(build_model(cfg.model, 1, cfg.env), "cpu", cfg.train)
    small, large = (step_graph_bytes(model, torch.rand(2, 1, s, s)) for s in (16, 32))
    assert small > 0 and 3.5 < large / small < 4.5  # activations scale with the pixels


def test_resolve_rollout_keeps_explicit_modes_and_measures_auto():
    from a3c.model import build_model

    x, g = torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    for mode in ("onestep", "full"):
        cfg = load_config(SMOKE, [f"train.rollout={mode}"])
        assert resolve_rollout(build_model(cfg.model, 1, cfg.env), x, g, cfg) == (mode, "set in the config")
    cfg = load_config(SMOKE)
    assert cfg.train.rollout == "auto"  # the package default; smoke.yaml does not set it
    model = build_model(cfg.model, 1, cfg.env)
    assert resolve_rollout(model, x, g, cfg, 2, free_bytes=64 * GIB)[0] == "full"
    assert resolve_rollout(model, x, g, cfg, 2, free_bytes=MIB)[0] == "onestep"
    assert resolve_rollout(model, x, g, cfg)[0] == "full"  # this machine's RAM holds a tiny net's graphs


def test_rollout_setting_is_checked():
    assert load_config(SMOKE, ["train.rollout=auto"]).train.rollout == "auto"
    with pytest.raises(ConfigError, match="train.rollout: expected one of auto, onestep, full"):
        load_config(SMOKE, ["train.rollout=most"])


def test_shipped_configs_keep_their_rollout():
    assert load_config("configs/default.yaml").train.rollout == "full"
    assert load_config("configs/paper.yaml").train.rollout == "auto"


@pytest.mark.slow
def test_trainer_workers_choose_and_say_it(tiny_store, tmp_path):
    run = tmp_path / "run"
    res = run_module(["-m", "a3c.launch", "--workers", "2", "--config", SMOKE, "--data", str(tiny_store),
                      "--run-dir", str(run), "--device", "cpu", "--no-progress", "train.max_updates=4"])
    assert res.returncode == 0, res.stderr
    for rank in (0, 1):
        log = (run / "logs" / f"worker{rank}.log").read_text()
        assert f"worker {rank}: train.rollout auto -> full (2 more step graph(s) of " in log, log
        assert "x 2 process(es)" in log
    server = (run / "logs" / "server.log").read_text()
    assert server.count("its train.rollout: full") == 2, server
    assert "train.rollout auto" not in res.stderr and "MPS" not in res.stderr  # CPU: nothing said about MPS
    assert "rollout: auto" in (run / "config.yaml").read_text()  # the run's config keeps the setting
