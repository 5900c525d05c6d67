"""``python -m a3c.launch``: train PixelDRL-MG with a parameter server, N workers and a monitor.

    python -m a3c.launch --workers N [--config FILE] [--data FILE.h5] [--run-dir DIR]
                         [--device auto|cpu|cuda] [--resume] [--backend local|ray]
                         [--ray-address ADDR] [--mps | --no-mps] [section.key=value ...]

Process topology (``--backend local``: processes started with ``spawn`` on this machine,
``workers.local_backend``; ``--backend ray``: the server and the workers are Ray actors,
``workers.ray_backend``)::

    launch --> param server (theta, Adam, LR schedule, checkpoints, training scalars)
           --> worker 0..N-1 (pull theta, roll out t_max steps, push the gradient)
           --> monitor (evaluates checkpoints on the validation split, keeps best.pt)

The launcher describes the run once (``workers.run.RunSpec``) and hands it to the backend's
supervisor (``workers.supervisor``), which watches the children: a dead worker is replaced (up
to ``train.max_worker_restarts`` in all), a dead server or monitor ends the run with an error,
Ctrl-C stops the run with a final checkpoint. At the end the launcher evaluates ``best.pt`` and
``latest.pt`` on the test split and prints the metrics of the one ``eval.select`` names.
With several CUDA workers on one GPU it starts a private MPS daemon for the run where it can
(``workers.mps.plan_mps``; ``--no-mps`` to go without) and then turns cuDNN autotuning on
(``train.cudnn_benchmark: auto``); on CUDA it says what it chose, and why, in one line.
Without ``--data`` it trains on the built-in synthetic store, made on first use in the cache
folder (``$XDG_CACHE_HOME/pixeldrl-mg`` or ``~/.cache/pixeldrl-mg``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def _quit_quietly(signum, frame):
    raise SystemExit(130)


if __name__ == "__main__":  # Ctrl-C or SIGTERM while torch loads: exit quietly; main() installs the orderly stop
    signal.signal(signal.SIGINT, _quit_quietly)
    signal.signal(signal.SIGTERM, _quit_quietly)

import torch  # noqa: E402

from a3c.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from a3c.cli import UsageError, resolve_device  # noqa: E402
from a3c.config import (  # noqa: E402
    Config,
    ConfigError,
    apply_dict,
    config_from_dict,
    cudnn_benchmark_on,
    load_config,
    parse_overrides,
)
from a3c.evaluate import evaluate_checkpoint, table_row  # noqa: E402
from a3c.fileio import write_json_atomic  # noqa: E402
from a3c.model import build_model  # noqa: E402
from datasets.store import SliceStore, StoreError  # noqa: E402
from workers.common import active_workers, usable_cores  # noqa: E402
from workers.local_backend import LocalSupervisor  # noqa: E402
from workers.mps import (  # noqa: E402
    CONTROL,
    MPSError,
    MPSPlan,
    gpu_settings_line,
    mps_served,
    plan_mps,
    start_mps,
    stop_mps,
)
from workers.run import RunSpec, preprocess_info  # noqa: E402
from workers.supervisor import RunError, Supervisor  # noqa: E402

MAX_WORKERS = {"local": 256, "ray": 4096}
FDS_PER_WORKER = 4  # the launcher's and the server's ends of each worker's pipe, its sentinel, spare


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pixeldrl-mg"


def default_store(cfg: Config) -> Path:
    """The built-in synthetic store for ``cfg.data``, made on first use."""
    d = cfg.data
    from datasets.synth import GENERATOR_VERSION, SynthSpec, make_synthetic_store

    path = cache_dir() / f"synth-v{GENERATOR_VERSION}-c{d.synth_cases}-s{d.synth_size}-seed{cfg.train.seed}.h5"
    if not path.exists():

        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"making the built-in synthetic store {path} ...", file=sys.stderr)
        make_synthetic_store(path, SynthSpec(cases=d.synth_cases, size=d.synth_size, seed=cfg.train.seed))
    return path


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m a3c.launch", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--config", default=None, help="YAML config (default configs/default.yaml)")
    ap.add_argument("--data", default=None,
                    help="HDF5 slice store (default: data.path, else the built-in synthetic store)")
    ap.add_argument("--run-dir", default=None, help="output folder (default runs/<date-time>)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/latest.pt")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--backend", default="local", choices=("local", "ray"),
                    help="local: torch.multiprocessing on this machine (default); "
                         "ray: Ray actors (pip install -r requirements-ray.txt)")
    ap.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="with --backend ray: join the running cluster at ADDR (default: start a local Ray instance)")
    mps = ap.add_mutually_exclusive_group()
    mps.add_argument("--mps", action="store_true",
                     help="always run a private CUDA Multi-Process Service daemon for the run, so that the workers' "
                          "kernels share the GPU at once instead of taking turns, and fail where it cannot start "
                          "(local backend, CUDA); by default the launcher starts one itself for several CUDA workers "
                          "where it can (docs/TRAINING.md, \"MPS\")")
    mps.add_argument("--no-mps", action="store_true",
                     help="never start an MPS daemon (and so keep cuDNN autotuning off unless "
                          "train.cudnn_benchmark=true)")
    ap.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.resume and not args.run_dir:
        ap.error("--resume needs --run-dir")
    if args.ray_address and args.backend != "ray":
        ap.error("--ray-address needs --backend ray")
    if args.mps and (args.device == "cpu" or args.backend != "local"):
        ap.error("--mps needs a CUDA device and --backend local (on a Ray cluster, start MPS on each node)")
    return args


def check_workers(workers: int, backend: str) -> None:
    """UsageError when ``workers`` is more than one machine (local) or a cluster (Ray) should run, or,
    locally, more than the open-file limit allows (each worker holds pipes in the launcher and the server)."""
    most = MAX_WORKERS[backend]
    if workers > most:
        raise UsageError(f"--workers {workers}: at most {most} with --backend {backend}")
    if backend == "local":
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        need = FDS_PER_WORKER * workers + 64
        if soft != resource.RLIM_INFINITY and need > soft:
            raise UsageError(f"--workers {workers}: needs about {need} open files, the limit is {soft} "
                             f"(raise it with ulimit -n, or use fewer workers)")


def check_backend(backend: str) -> None:
    """UsageError where ``backend`` needs what is not installed (Ray)."""
    import importlib.util

    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError("--backend ray needs Ray, which is not installed: pip install -r requirements-ray.txt")


def make_supervisor(args: argparse.Namespace, spec: RunSpec, resume: dict | None) -> Supervisor:
    """The supervisor of ``--backend`` for the run ``spec``; Ray is imported only when asked for."""
    progress = not args.no_progress
    if args.backend == "local":
        return LocalSupervisor(spec, resume, progress)
    from workers.ray_backend import RaySupervisor

    return RaySupervisor(spec, resume, progress, address=args.ray_address)


def resolve(args: argparse.Namespace) -> tuple[Config, dict | None, Path]:
    run = Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    resume = None
    if args.resume:
        latest = run / "checkpoints" / "latest.pt"
        resume = load_checkpoint(latest)
        cfg = config_from_dict(resume["config"])
        if args.overrides:
            apply_dict(cfg, parse_overrides(args.overrides), source="command line")
            changes = network_changes(config_from_dict(resume["config"]), cfg, int(resume["image_channels"]))
            if changes:
                raise UsageError(f"--resume cannot change the network of {latest} ({'; '.join(changes)}): "
                                 f"leave these overrides out, or train the new network in a new --run-dir")
        if args.config:
            print("note: --resume uses the checkpoint's config; --config is ignored", file=sys.stderr)
    else:
        cfg = load_config(args.config, args.overrides)
    return cfg, resume, run


def param_shapes(cfg: Config, channels: int) -> dict[str, tuple]:
    """The shape of every tensor of the network ``cfg`` builds for ``channels`` image channels
    (on the meta device: no memory, no initialisation)."""
    with torch.device("meta"):
        model = build_model(cfg.model, channels, cfg.env)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def network_changes(old: Config, new: Config, channels: int) -> list[str]:
    """What in ``new`` changes the network of ``old`` (``section.key old -> new``): any ``model.*``
    field, and any other field that alone changes the parameters' shapes (such as ``env.state``)."""
    def differs(section: str) -> list[str]:
        a, b = getattr(old, section), getattr(new, section)
        return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]

    def show(section: str, key: str) -> str:
        return f"{section}.{key} {getattr(getattr(old, section), key)!r} -> {getattr(getattr(new, section), key)!r}"

    out = [show("model", k) for k in differs("model")]
    before = param_shapes(old, channels)
    for section in (f.name for f in dataclasses.fields(old) if f.name != "model"):
        for key in differs(section):
            probe = config_from_dict(old.to_dict())
            setattr(getattr(probe, section), key, getattr(getattr(new, section), key))
            if param_shapes(probe, channels) != before:
                out.append(show(section, key))
    if not out and param_shapes(new, channels) != before:  # only a combination of fields changes them
        out = [show(s, k) for s in (f.name for f in dataclasses.fields(old)) for k in differs(s)]
    return out


def prepare_run_dir(run: Path, cfg: Config, meta: dict) -> None:
    """Create ``run`` and write ``config.yaml`` and ``meta.json``; UsageError with one line when it cannot."""
    if run.exists() and not run.is_dir():
        raise UsageError(f"--run-dir {run}: exists and is not a folder")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--run-dir {run}: cannot create the folder ({exc.strerror or exc})") from None
    for name, text in (("config.yaml", cfg.to_yaml()), ("meta.json", json.dumps(meta, indent=1))):
        try:
            (run / name).write_text(text)
        except OSError as exc:
            raise UsageError(f"--run-dir {run}: cannot write {name} ({exc.strerror or exc})") from None


def stop_run(supervisor: Supervisor | None) -> None:
    """Stop a started run with the server's final checkpoint (when it still runs); a second Ctrl-C or
    SIGTERM meanwhile is ignored (the stop takes a few seconds)."""
    ignore_stop_signals()
    if supervisor is not None and supervisor.started:
        supervisor.stop_with_checkpoint()


def oversubscribed(workers: int, threads: int, cores: int, active: int) -> str | None:
    """The note for CPU workers that outnumber the cores, else None.

    More workers than cores add no throughput, only staleness: with N workers in turn each
    gradient is about N - 1 updates old when the server applies it. ``active`` workers compute at
    once (``train.active_workers`` resolved; the others wait their turn at the server)."""
    if workers * threads <= cores:
        return None
    if active and active < workers:
        return (f"note: {workers} workers x {threads} thread(s) on {cores} CPU core(s): at most {active} compute at "
                f"once, the others wait their turn (train.active_workers), which keeps each gradient about "
                f"{active - 1} update(s) stale instead of {workers - 1}")
    fit = max(1, cores // threads)
    return (f"warning: {workers} workers x {threads} thread(s) on {cores} CPU core(s) train no faster than {fit}, "
            f"and each gradient arrives about {workers - 1} updates stale (8 workers on 2 cores trained worse: "
            f"docs/RESULTS.md, \"Workers, staleness and taking turns\"); "
            f"consider --workers {fit} or train.active_workers=0")


def expects_cuda(device: str) -> bool:
    """Whether ``--device`` will resolve to CUDA, asked without initialising CUDA where NVML answers
    (``torch.cuda.device_count``): an MPS daemon must start before this process initialises CUDA."""
    return device == "cuda" or (device == "auto" and torch.cuda.device_count() > 0)


def mps_mode(args: argparse.Namespace) -> str:
    """``on`` (``--mps``), ``off`` (``--no-mps``) or ``auto``."""
    return "on" if args.mps else "off" if args.no_mps else "auto"


def start_planned_mps(plan: MPSPlan, mode: str):
    """``(daemon or None, plan)``: start the daemon ``plan`` asks for; where that fails, MPSError
    under ``--mps``, else the run goes on without it and the returned plan says why."""
    if not plan.start:
        return None, plan
    try:
        return start_mps(), plan
    except MPSError as exc:
        if mode == "on":
            raise
        why = str(exc).removeprefix("--mps: ")
        return None, MPSPlan(False, f"its private daemon did not start: {why}; --no-mps skips trying")


def ignore_stop_signals() -> None:
    """From now on Ctrl-C and SIGTERM do nothing: the stop under way ends within seconds anyway."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _interrupt(signum, frame):
    ignore_stop_signals()  # at once, so that a second Ctrl-C cannot interrupt the stop this one starts
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and a scheduler's SIGTERM stop the run in order. SIGINT is installed explicitly: a
    # process started in the background of a non-interactive shell inherits it as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    supervisor = mps = None
    try:
        check_workers(args.workers, args.backend)
        cfg, resume, run = resolve(args)
        mode = mps_mode(args)
        plan = plan_mps(mode, args.workers, args.backend, expects_cuda(args.device), shutil.which(CONTROL),
                        mps_served(os.environ))
        mps, plan = start_planned_mps(plan, mode)  # before this process touches CUDA; children inherit the daemon
        cudnn_on = cudnn_benchmark_on(cfg.train.cudnn_benchmark, under_mps=mps is not None)
        if mps is not None:
            print(f"{gpu_settings_line(plan, True, cfg.train.cudnn_benchmark, cudnn_on)}; "
                  f"CUDA_MPS_PIPE_DIRECTORY={mps.env()['CUDA_MPS_PIPE_DIRECTORY']}", file=sys.stderr)
        device = resolve_device(args.device)
        if mps is not None and device.type != "cuda":
            if mode == "on":
                raise UsageError("--mps: CUDA is not available on this machine")
            stop_mps(mps)  # NVML saw a GPU that CUDA cannot use: a CPU run, nothing more to say about MPS
            mps = None
        if device.type == "cuda" and mps is None:
            print(gpu_settings_line(plan, False, cfg.train.cudnn_benchmark, cudnn_on), file=sys.stderr)
        check_backend(args.backend)
        data = args.data or cfg.data.path or str(default_store(cfg))
        store = SliceStore(data)
        cfg.data.path = str(Path(data).resolve())
        for split in (cfg.data.train_split, cfg.data.val_split):
            store.indices(split)
        c = store.image_shape[0]
        if resume is not None and int(resume["image_channels"]) != c:
            raise UsageError(f"{data}: images have {c} channels, the resumed model takes {resume['image_channels']}")
        if cfg.model.in_channels and cfg.model.in_channels != c:
            raise UsageError(f"{data}: images have {c} channels, model.in_channels is {cfg.model.in_channels}")
        cfg.model.in_channels = c
        meta = {"argv": sys.argv, "args": vars(args), "git": git_revision(), "torch": torch.__version__,
                "python": platform.python_version(), "device": str(device), "data": cfg.data.path,
                "mps": mps is not None, "cudnn_benchmark": cudnn_on and device.type == "cuda",
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "resumed_at_update": resume["counters"]["updates"] if resume else 0}
        prepare_run_dir(run, cfg, meta)
        print(f"run {run}: {args.workers} workers on {device}, data {data} "
              f"(train {len(store.indices(cfg.data.train_split))} slices), tensorboard --logdir {run}", file=sys.stderr)
        active = active_workers(cfg.train.active_workers, args.workers, device, cfg.train.threads_per_worker)
        if device.type == "cpu" and args.backend == "local":
            warning = oversubscribed(args.workers, cfg.train.threads_per_worker, usable_cores(), active)
            if warning:
                print(warning, file=sys.stderr)
        tuned = {"train": {"cudnn_benchmark": "true" if cudnn_on else "false"}} if device.type == "cuda" else {}
        spec = RunSpec(cfg=cfg.to_dict(), store_path=cfg.data.path, image_shape=tuple(store.image_shape),
                       n_train=len(store.indices(cfg.data.train_split)), preprocess=preprocess_info(store),
                       run_dir=str(run.resolve()), device=str(device), workers=args.workers, active=active,
                       start_updates=int(resume["counters"]["updates"]) if resume else 0, worker_overrides=tuned)
        supervisor = make_supervisor(args, spec, resume)
        supervisor.start()
        t0 = time.monotonic()
        supervisor.train()
        supervisor.wind_down(evaluate_last=True)
        wall = time.monotonic() - t0
        return report(run, store, cfg, device, wall)
    except KeyboardInterrupt:
        started = supervisor is not None and supervisor.started
        print(f"\ninterrupted: {'writing a final checkpoint and stopping' if started else 'stopping'}", file=sys.stderr)
        stop_run(supervisor)
        return 130
    except (ConfigError, StoreError, CheckpointError, UsageError, MPSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        stop_run(supervisor)
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if supervisor is not None:
            supervisor.kill_all()
        if mps is not None:
            print(stop_mps(mps, run / "logs" / "mps"), file=sys.stderr)


def report(run: Path, store: SliceStore, cfg: Config, device: torch.device, wall: float) -> int:
    """Evaluate best.pt and latest.pt on the test split; print the one ``eval.select`` names and save
    both (``by_selection``) with it as the headline. Without best.pt (no validation) latest.pt is both."""
    ckpts = run / "checkpoints"
    paths = {"best": ckpts / "best.pt", "last": ckpts / "latest.pt"}
    if not paths["best"].exists():
        paths["best"] = paths["last"]
    try:
        store.indices(cfg.data.test_split)
    except StoreError as exc:
        print(f"training done in {wall:.0f} s; no test evaluation ({exc})", file=sys.stderr)
        return 0
    loaded = {rule: load_checkpoint(path) for rule, path in paths.items()}
    by_update: dict[int, tuple] = {}  # best.pt from the final update holds latest.pt's parameters: score them once
    for c in loaded.values():
        n = int(c["counters"]["updates"])
        if n not in by_update:
            by_update[n] = evaluate_checkpoint(c, store, cfg.data.test_split, device)
    scored = {rule: by_update[int(c["counters"]["updates"])] for rule, c in loaded.items()}
    path = paths[cfg.eval.select]
    res, _, ckpt = scored[cfg.eval.select]
    info = {"checkpoint": str(path), "selection": cfg.eval.select, "updates": int(ckpt["counters"]["updates"]),
            "epoch": float(ckpt["counters"]["epoch"]), "split": cfg.data.test_split,
            "slices": len(res.per_image), "wall_s": round(wall, 1),
            "params": int(ckpt["params"]), **{k: v["mean"] for k, v in res.summary.items()},
            "std": {k: v["std"] for k, v in res.summary.items()}, "step_dice": res.step_dice,
            "per_image": res.per_image,
            "by_selection": {rule: {"checkpoint": str(paths[rule]), "updates": int(c["counters"]["updates"]),
                                    **{k: v["mean"] for k, v in r.summary.items()}, "step_dice": r.step_dice,
                                    "per_image": r.per_image}
                             for rule, (r, _, c) in scored.items()}}
    write_json_atomic(info, run / "test_metrics.json")
    print(f"\ntest split '{cfg.data.test_split}' ({len(res.per_image)} slices), {path.name} "
          f"from update {info['updates']}, trained {wall:.0f} s:")
    print(table_row(res, info["params"]))
    other = "last" if cfg.eval.select == "best" else "best"
    if paths[other] != path:
        print(f"({paths[other].name} from update {info['by_selection'][other]['updates']}: test Dice "
              f"{info['by_selection'][other]['dice']:.4f}; eval.select={other} makes it the headline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
