"""The throughput benchmark runs in CI-sized settings and prints comparable JSON lines."""
import json

import pytest

from bench.throughput import steady_rate
from tests.conftest import ROOT, run_module

KEYS = {"mode", "workers", "batch", "t_max", "size", "device", "img_steps_per_s", "peak_mem_mib", "flops_per_img_step"}


@pytest.mark.slow
def test_throughput_benchmark_output_format(tmp_path):
    # a config whose budget is epochs only, like configs/paper.yaml: the benchmark sets its own
    config = tmp_path / "epochs_only.yaml"
    smoke = (ROOT / "configs" / "smoke.yaml").read_text()
    config.write_text(smoke.replace("epochs: 0", "epochs: 3").replace("max_updates: 20", "max_updates: 0"))
    res = run_module(["bench/throughput.py", "--config", str(config), "--size", "32", "--updates", "6",
                      "--workers", "1"], timeout=180)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert {line["mode"] for line in lines} == {"async", "batched"}
    for line in lines:
        assert KEYS <= set(line), KEYS - set(line)
        assert line["img_steps_per_s"] > 0 and line["peak_mem_mib"] > 0 and line["flops_per_img_step"] > 1e6
        assert (line["workers"], line["batch"], line["t_max"], line["size"]) == (1, 2, 3, 32)
    async_line = next(line for line in lines if line["mode"] == "async")
    assert async_line["ratio_to_batched"] > 0 and async_line["backend"] == "local" and async_line["mps"] is False


def test_steady_rate_counts_updates_between_log_flushes():
    # flushes (updates, wall s, logged rate): 8 workers pushing in bursts, as on the H200 under MPS
    steps = [(0, 0.0), (8, 2.0), (8, 4.0), (16, 6.0), (16, 8.0), (24, 10.0), (24, 12.0), (24, 12.5)]
    flushes = [(u, t, 99.0) for u, t in steps]
    # from update 8 (t=2) to the first flush at the final 24 (t=10): 16 updates x 20 img-steps / 8 s
    assert steady_rate(flushes, 6, 20) == pytest.approx(40.0)
    assert steady_rate(flushes, 9, 20) == pytest.approx(8 * 20 / 4.0)  # from (16, t=6)
    # too short a run for an interval from the start: from the first flush instead
    assert steady_rate(flushes, 25, 20) == pytest.approx(24 * 20 / 10.0)
    assert steady_rate([(0, 0.0, 0.0), (5, 2.0, 7.0)], 5, 20) == pytest.approx(50.0)
    # a single flush (a run shorter than the flush interval): its own logged rate
    assert steady_rate([(6, 1.5, 31.0)], 1, 20) == 31.0 and steady_rate([], 0, 20) == 0.0
    # every update before the first flush, then the close's flush with nothing new: the first one's rate
    assert steady_rate([(6, 1.5, 31.0), (6, 2.2, 0.0)], 1, 20) == 31.0
