"""Throughput and memory of the trainer: the asynchronous system against a batched reference.

    python bench/throughput.py [--config FILE] [--size S] [--batch B] [--t-max T] [--workers 1,2]
                               [--updates N] [--device cpu|cuda] [--modes async,batched]
                               [--rollout auto|onestep|full] [--peak-tflops X] [--backend local|ray]
                               [--mps | --no-mps] [--keep-runs DIR] [overrides ...]

For each worker count W it prints one JSON line per mode:

* ``async``: the real trainer (``python -m a3c.launch --backend BACKEND``, with the launcher's own
  choices: MPS, cuDNN autotuning, the rollout mode) with W workers of batch B on a synthetic
  store of S x S slices, one torch thread per worker; image-steps/s is the updates applied from
  the first quarter of the run to its end over the time between (``steady_rate``); memory is the
  largest worker peak (RSS; CUDA allocated memory on a GPU) from the workers' logs, with every
  worker's in ``peak_mem_mib_workers``.
* ``batched``: one process running ``reference_update`` on batches of W * B with W threads, the
  same total work per update, the same cores, and ``updates / W`` updates (the same images).

Each line carries ``mode, workers, batch, t_max, size, device, rollout`` (the mode that ran:
``train.rollout: auto`` is resolved per process), ``img_steps_per_s, updates_per_s,
peak_mem_mib, flops_per_img_step`` (forward and backward as that rollout mode does them,
counted with ``torch.utils.flop_counter``), ``useful_flops_per_img_step`` (the ``full`` mode's
count: one forward and one backward per step), ``mfu`` and ``mfu_useful`` on CUDA with
``--peak-tflops``, and for async its ``backend``, ``mps`` (whether the launcher ran its MPS
daemon) and the ratio to the batched line of the same W. Figures are for comparison on one
machine; on a shared machine compare ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from a3c.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def flops_per_img_step(cfg, channels: int, size: int, device: str, rollout: str) -> float:
    """FLOPs of one reference update in ``rollout`` mode (onestep or full) on one image, divided by
    t_max (includes the backward)."""
    from dataclasses import replace

    from torch.utils.flop_counter import FlopCounterMode

    from a3c.model import build_model
    from a3c.rollout import reference_update

    cfg = replace(cfg, train=replace(cfg.train, rollout=rollout))
    model = build_model(cfg.model, channels, cfg.env).to(device)
    x = torch.rand(1, channels, size, size, device=device)
    g = (torch.rand(1, 1, size, size, device=device) > 0.7).float()
    with FlopCounterMode(display=False) as counter:
        reference_update(model, x, g, cfg, torch.Generator(device=device).manual_seed(0))
    return counter.get_total_flops() / cfg.env.t_max


def batched(cfg, store_path: str, workers: int, updates: int, device: str) -> dict:
    """The single-process reference: batch workers * B, ``workers`` threads."""
    import numpy as np

    from a3c.batch import prepare_batch
    from a3c.memory import resolve_rollout
    from a3c.model import build_model, tune_for_training
    from a3c.rollout import reference_update
    from datasets.store import SliceStore

    torch.set_num_threads(workers)
    store = SliceStore(store_path)
    model = tune_for_training(build_model(cfg.model, store.image_shape[0], cfg.env).to(device), device, cfg.train)
    rng, gen = np.random.default_rng(0), torch.Generator(device=device).manual_seed(0)
    batch = workers * cfg.train.batch_size
    warm = max(2, updates // 5)
    for u in range(updates + warm):
        if u == warm:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        images, masks, _ = store.sample("train", batch, rng)
        x, g = prepare_batch(images, masks, device, cfg.data.image_size)
        if cfg.train.rollout == "auto":  # as a worker does, alone on the device
            cfg.train.rollout = resolve_rollout(model, x, g, cfg)[0]
        model.zero_grad(set_to_none=True)
        reference_update(model, x, g, cfg, gen)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
    return {"img_steps_per_s": updates * batch * cfg.env.t_max / dt, "updates_per_s": updates / dt, "peak_mem_mib": mem,
            "rollout": cfg.train.rollout}


def worker_log_facts(logs: list[str], device: str) -> dict:
    """From the workers' log texts: every worker's peak memory (MiB: CUDA allocated on cuda, else RSS) and
    the rollout modes ``train.rollout: auto`` chose (sorted, distinct)."""
    key = "peak_cuda_mib=" if device == "cuda" else "peak_rss_mib="
    mems = [float(m) for text in logs for m in re.findall(re.escape(key) + r"([0-9.]+)", text)]
    modes = sorted({m for text in logs for m in re.findall(r"train\.rollout auto -> (\w+)", text)})
    return {"mems": mems, "rollouts": modes}


def steady_rate(flushes: list[tuple[int, float, float]], start: int, img_steps_per_update: int) -> float:
    """Image-steps/s after update ``start``, from the server's log flushes [(updates, wall time s,
    logged img-steps/s)].

    The counters at a flush are exact at its time, so the rate between the first flush at or past
    ``start`` and the first flush at the final count is exact up to the flush interval (2 s) at
    the end. Workers that push in bursts (all at once, then none for seconds) make a median of
    per-interval rates meaningless; this is not affected. A run too short to have two flushes
    from ``start`` on is measured from its first flush; one whose updates all came before its first
    flush gets the logged rate of the first flush at the final count (its whole run, warm-up
    included; a later flush, such as the one at the server's close, logged no updates); 0.0
    without flushes.
    """
    final = max((u for u, _, _ in flushes), default=0)
    for first in (start, 0):
        after = sorted((t, u) for u, t, _ in flushes if u >= first)
        if after:
            t0, u0 = after[0]
            t1 = min(t for t, u in after if u == final)
            if t1 > t0 and final > u0:
                return (final - u0) * img_steps_per_update / (t1 - t0)
    at_final = sorted((t, r) for u, t, r in flushes if u == final)
    return at_final[0][1] if at_final else 0.0


def run_async(args, cfg, store_path: str, workers: int, overrides: list[str]) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        run = str(Path(args.keep_runs) / f"async-w{workers}") if args.keep_runs else tmp
        if args.keep_runs:
            shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "a3c.launch", "--workers", str(workers), "--data", store_path,
               "--run-dir", run, "--device", args.device, "--no-progress", "--backend", args.backend,
               *(["--mps"] if args.mps else ["--no-mps"] if args.no_mps else []),  # flags before the overrides
               *overrides, f"train.max_updates={args.updates}", "train.checkpoint_interval_s=100000"]
        if args.config:
            cmd[3:3] = ["--config", args.config]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        mps = False
        for line in res.stderr.splitlines():  # the launcher's MPS choice, and how many MPS servers served the run
            if line.startswith("MPS:"):
                print(line, file=sys.stderr)
                mps = mps or line.startswith("MPS: a private daemon")
        if res.returncode != 0:
            raise SystemExit("async run failed: "
                             f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
        flushes = []
        for ev in Path(run, "tb").glob("events.*"):
            acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
            acc.Reload()
            if "charts/img_steps_per_s" in acc.Tags()["scalars"]:
                flushes = [(e.step, e.wall_time, e.value) for e in acc.Scalars("charts/img_steps_per_s")]
        facts = worker_log_facts([log.read_text() for log in Path(run, "logs").glob("worker*.log")], args.device)
    per_update = cfg.env.t_max * cfg.train.batch_size
    rate = steady_rate(flushes, args.updates // 4, per_update)
    mems = facts["mems"]
    return {"img_steps_per_s": rate, "updates_per_s": rate / per_update, "peak_mem_mib": max(mems) if mems else None,
            "peak_mem_mib_workers": sorted(mems), "wall_s": round(wall, 1), "mps": mps,
            "rollout": "+".join(facts["rollouts"]) or cfg.train.rollout}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="per worker (default: the config's)")
    ap.add_argument("--t-max", type=int, default=None)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--modes", default="async,batched")
    ap.add_argument("--rollout", default=None, choices=("auto", "onestep", "full"))
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (e.g. bf16 dense)")
    ap.add_argument("--backend", default="local", choices=("local", "ray"), help="the async trainer's transport")
    ap.add_argument("--keep-runs", default=None, metavar="DIR",
                    help="keep each async run's folder (logs, TensorBoard) as DIR/async-wN instead of deleting it")
    mps = ap.add_mutually_exclusive_group()
    mps.add_argument("--mps", action="store_true",
                     help="the async trainer always under a private CUDA MPS daemon (a3c.launch --mps)")
    mps.add_argument("--no-mps", action="store_true", help="the async trainer without MPS (a3c.launch --no-mps)")
    ap.add_argument("--_batched", nargs=2, metavar=("STORE", "WORKERS"), help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    overrides = list(args.overrides)
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.t_max:
        overrides.append(f"env.t_max={args.t_max}")
    if args.rollout:
        overrides.append(f"train.rollout={args.rollout}")
    overrides.append("train.epochs=0")
    cfg = load_config(args.config, overrides + [f"train.max_updates={args.updates}"])
    if args._batched:
        print(json.dumps(batched(cfg, args._batched[0], int(args._batched[1]), args.updates, args.device)))
        return 0

    from datasets.synth import SynthSpec, make_synthetic_store

    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "bench.h5")
        make_synthetic_store(store, SynthSpec(cases=8, size=args.size, slices=8, seed=0))
        flops = {mode: flops_per_img_step(cfg, 1, args.size, args.device, mode) for mode in ("onestep", "full")}
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the runs below read the GPU's free memory (train.rollout auto)
        for w in [int(x) for x in args.workers.split(",")]:
            lines = {}
            for mode in args.modes.split(","):
                if mode == "batched":  # a fresh process, so that its peak memory is its own
                    same_images = -(-args.updates // w)  # the async run's images, in batches w times larger
                    cmd = [sys.executable, __file__, "--_batched", store, str(w), "--updates", str(same_images),
                           "--device", args.device, *(["--config", args.config] if args.config else []), *overrides]
                    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                    if res.returncode != 0:
                        raise SystemExit(res.stderr.strip().splitlines()[-1])
                    m = json.loads(res.stdout.strip().splitlines()[-1])
                else:
                    m = run_async(args, cfg, store, w, overrides)
                ran = m["rollout"] if m["rollout"] in flops else "onestep"  # workers that chose differently
                line = {"mode": mode, "workers": w, "batch": cfg.train.batch_size, "t_max": cfg.env.t_max,
                        "size": args.size, "device": args.device, "rollout": m["rollout"],
                        "img_steps_per_s": round(m["img_steps_per_s"], 2),
                        "updates_per_s": round(m["updates_per_s"], 3),
                        "peak_mem_mib": None if m["peak_mem_mib"] is None else round(m["peak_mem_mib"], 1),
                        "flops_per_img_step": flops[ran], "useful_flops_per_img_step": flops["full"]}
                if args.device == "cuda" and args.peak_tflops:
                    line["mfu"] = round(m["img_steps_per_s"] * flops[ran] / (args.peak_tflops * 1e12), 4)
                    line["mfu_useful"] = round(m["img_steps_per_s"] * flops["full"] / (args.peak_tflops * 1e12), 4)
                for key in ("wall_s", "peak_mem_mib_workers"):
                    if key in m:
                        line[key] = m[key]
                if mode == "async":
                    line["backend"] = args.backend
                    line["mps"] = m["mps"]
                lines[mode] = line
            if "async" in lines and "batched" in lines and lines["batched"]["img_steps_per_s"] > 0:
                lines["async"]["ratio_to_batched"] = round(
                    lines["async"]["img_steps_per_s"] / lines["batched"]["img_steps_per_s"], 3)
            for line in lines.values():
                print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
