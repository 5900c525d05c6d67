"""The throughput benchmark runs in CI-sized settings and prints comparable JSON lines."""
import json

from tests.conftest import run_module

KEYS = {"mode", "workers", "batch", "t_max", "size", "device", "img_steps_per_s", "peak_mem_mib", "flops_per_img_step"}


def test_throughput_benchmark_output_format():
    res = run_module(["bench/throughput.py", "--config", "configs/smoke.yaml", "--size", "32", "--updates", "6",
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
