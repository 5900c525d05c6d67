"""``python -m a3c.launch``: train PixelDRL-MG with a parameter server, N workers and a monitor.

    python -m a3c.launch --workers N [--config FILE] [--data FILE.h5] [--run-dir DIR]
                         [--device auto|cpu|cuda] [--resume] [section.key=value ...]

Process topology (all started with ``spawn``)::

    launch --> param server (theta, Adam, LR schedule, checkpoints, training scalars)
           --> worker 0..N-1 (pull theta, roll out t_max steps, push the gradient)
           --> monitor (evaluates checkpoints on the validation split, keeps best.pt)

The launcher watches its children: a dead worker is replaced (up to ``train.max_worker_restarts``
in all), a dead server or monitor ends the run with an error, Ctrl-C stops the run with a final
checkpoint. At the end it evaluates ``best.pt`` on the test split and prints the metrics.
Without ``--data`` it trains on the built-in synthetic store, made on first use in the cache
folder (``$XDG_CACHE_HOME/pixeldrl-mg`` or ``~/.cache/pixeldrl-mg``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from a3c.checkpoint import CheckpointError, load_checkpoint
from a3c.cli import UsageError, resolve_device
from a3c.config import Config, ConfigError, apply_dict, config_from_dict, load_config, parse_overrides
from a3c.evaluate import evaluate_checkpoint, table_row
from a3c.fileio import write_json_atomic
from datasets.store import SliceStore, StoreError
from workers.common import run_child
from workers.monitor import watch
from workers.param_server import serve
from workers.worker import work

STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 4.0


class RunError(RuntimeError):
    """A run that cannot go on; the message is printed as one line."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pixeldrl-mg"


def default_store(cfg: Config) -> Path:
    """The built-in synthetic store for ``cfg.data``, made on first use."""
    d = cfg.data
    from datasets.synth import GENERATOR_VERSION, make_synthetic_store

    path = cache_dir() / f"synth-v{GENERATOR_VERSION}-c{d.synth_cases}-s{d.synth_size}-seed{cfg.train.seed}.h5"
    if not path.exists():

        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"making the built-in synthetic store {path} ...", file=sys.stderr)
        make_synthetic_store(path, cases=d.synth_cases, size=d.synth_size, seed=cfg.train.seed)
    return path


def preprocess_info(store: SliceStore) -> dict:
    """What a checkpoint records of its training data, so new images can be prepared the same way."""
    keep = ("normalisation", "converter", "arguments", "channel_names", "source", "schema_version")
    info = {k: v for k, v in store.attrs.items() if k in keep and isinstance(v, (str, int, float, list))}
    info["image_shape"] = list(store.image_shape)
    return info


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
    ap.add_argument("--data", default=None, help="HDF5 slice store (default: data.path, else the built-in synthetic store)")
    ap.add_argument("--run-dir", default=None, help="output folder (default runs/<date-time>)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/latest.pt")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.resume and not args.run_dir:
        ap.error("--resume needs --run-dir")
    return args


class Launcher:
    """Starts, watches and stops the children of one run."""

    def __init__(self, args: argparse.Namespace, cfg: Config, store: SliceStore, run: Path,
                 device: torch.device, resume: dict | None):
        self.args, self.cfg, self.store, self.run, self.device, self.resume = args, cfg, store, run, device, resume
        self.ctx = mp.get_context("spawn")
        self.log_dir = str(run / "logs")
        self.workers: dict[int, mp.Process] = {}
        self.starts: dict[int, int] = {}
        self.restarts = 0
        self.server = self.monitor = None
        self.started = False  # True once the server, the workers and the monitor all run
        self.start_updates = int(resume["counters"]["updates"]) if resume else 0

    def _spawn(self, name: str, fn, threads: int, *args) -> mp.Process:
        p = self.ctx.Process(target=run_child, args=(name, fn, self.log_dir, threads, *args), name=name, daemon=False)
        p.start()
        return p

    def start(self) -> None:
        n = self.args.workers
        cfg = self.cfg
        pipes = {r: self.ctx.Pipe(duplex=True) for r in range(n)}
        self.ctrl, server_ctrl = self.ctx.Pipe(duplex=True)
        init_q = self.ctx.Queue()
        c, h, w = self.store.image_shape
        size = [cfg.data.image_size] * 2 if cfg.data.image_size else [h, w]
        n_train = len(self.store.indices(cfg.data.train_split))
        self.server = self._spawn("server", serve, max(1, cfg.train.threads_per_worker), cfg.to_dict(), c, size,
                                  n_train, str(self.run), str(self.device), n, {r: p[0] for r, p in pipes.items()},
                                  server_ctrl, init_q, self.resume, preprocess_info(self.store))
        server_ctrl.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                _, self.shared = init_q.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.server.is_alive():
                    raise RunError(f"the parameter server failed to start: {self.last_error('server')}")
                if time.monotonic() > deadline:
                    raise RunError("the parameter server did not start within "
                                   f"{STARTUP_TIMEOUT_S:.0f} s (see {self.log_dir}/server.log)")
        for r, (srv_end, wrk_end) in pipes.items():
            srv_end.close()
            self._start_worker(r, wrk_end)
        self.finish, self.stop_monitor = self.ctx.Event(), self.ctx.Event()
        self.monitor = self._spawn("monitor", watch, max(1, cfg.train.threads_per_worker), cfg.to_dict(),
                                   str(self.store.path), str(self.run), str(self.device), self.shared,
                                   self.finish, self.stop_monitor)
        self.started = True

    def _start_worker(self, rank: int, conn) -> None:
        gen = self.starts.get(rank, 0)
        self.starts[rank] = gen + 1
        seed = self.cfg.train.seed + rank + 1_000_003 * (gen + self.start_updates)
        self.workers[rank] = self._spawn(f"worker{rank}", work, self.cfg.train.threads_per_worker, rank,
                                         self.cfg.to_dict(), str(self.store.path), self.store.image_shape[0],
                                         conn, str(self.device), seed)
        conn.close()

    def last_error(self, name: str) -> str:
        err = Path(self.log_dir) / f"{name}.err"
        return err.read_text().strip() if err.exists() else f"no error recorded, see {self.log_dir}/{name}.log"

    def check_children(self) -> None:
        """Replace dead workers; raise RunError when the run cannot go on."""
        if not self.server.is_alive():
            raise RunError(f"the parameter server died (exit code {self.server.exitcode}): {self.last_error('server')}")
        if not self.monitor.is_alive() and self.monitor.exitcode != 0:
            raise RunError(f"the monitor died (exit code {self.monitor.exitcode}): {self.last_error('monitor')}")
        if self.shared.get("done"):
            return
        for rank, p in list(self.workers.items()):
            if p.is_alive():
                continue
            code = p.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self.restarts += 1
            if self.restarts > self.cfg.train.max_worker_restarts:
                raise RunError(f"workers failed {self.restarts} times (worker {rank}: {why}; last error: "
                               f"{self.last_error(f'worker{rank}')}); stopping")
            print(f"\nworker {rank} died ({why}); restarting it ({self.restarts}/{self.cfg.train.max_worker_restarts})",
                  file=sys.stderr)
            srv_end, wrk_end = self.ctx.Pipe(duplex=True)
            self.ctrl.send(("add_worker", rank, srv_end))
            srv_end.close()
            self._start_worker(rank, wrk_end)

    def budget_total(self) -> int | None:
        t = self.cfg.train
        totals = []
        if t.max_updates > 0:
            totals.append(t.max_updates)
        if t.epochs > 0:
            totals.append(math.ceil(t.epochs * len(self.store.indices(self.cfg.data.train_split)) / t.batch_size))
        return min(totals) if totals else None

    def train(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.budget_total(), initial=self.start_updates, unit="upd", dynamic_ncols=True,
                   disable=self.args.no_progress, mininterval=1.0, file=sys.stderr)
        try:
            while not self.shared.get("done"):
                self.check_children()
                post = {"epoch": f"{self.shared.get('epoch'):.2f}", "img-steps/s": f"{self.shared.get('img_steps_per_s'):.1f}"}
                if self.shared.get("val_updates") > 0:
                    post["val_dice"] = f"{self.shared.get('val_dice'):.4f}"
                bar.set_postfix(post, refresh=False)
                bar.update(int(self.shared.get("updates")) - bar.n)  # redraws at most every mininterval
                time.sleep(0.5)
            bar.update(int(self.shared.get("updates")) - bar.n)
        finally:
            bar.close()

    def wind_down(self, evaluate_last: bool) -> None:
        """Workers stop, the server exits, the monitor takes a last look (``evaluate_last``) or stops.

        At the end of a budget the workers get ``"stop"`` from the server and a few seconds to
        finish; after an interrupt their in-flight gradients are useless, so they are terminated
        at once and every wait is short (all children gone within about 8 s).
        """
        grace = STOP_GRACE_S if evaluate_last else 0.0
        deadline = time.monotonic() + grace
        for p in self.workers.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.workers.values():
            if p.is_alive():
                p.terminate()
        try:
            self.ctrl.send(("exit",))
        except OSError:
            pass
        self.server.join(STOP_GRACE_S if evaluate_last else 2.0)
        if evaluate_last:
            self.finish.set()
            while self.monitor.is_alive():
                self.monitor.join(1.0)
        else:
            self.stop_monitor.set()
            self.monitor.join(1.0)

    def request_stop(self) -> None:
        """Ctrl-C: ask the server for a final checkpoint, then wind down without a last evaluation."""
        try:
            self.ctrl.send(("stop",))
        except OSError:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        while not self.shared.get("done") and self.server.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill_all(self) -> None:
        procs = [p for p in [self.server, self.monitor, *self.workers.values()] if p is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 1.0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)


def resolve(args: argparse.Namespace) -> tuple[Config, dict | None, Path]:
    run = Path(args.run_dir) if args.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    resume = None
    if args.resume:
        latest = run / "checkpoints" / "latest.pt"
        resume = load_checkpoint(latest)
        cfg = config_from_dict(resume["config"])
        if args.overrides:
            apply_dict(cfg, parse_overrides(args.overrides), source="command line")
        if args.config:
            print("note: --resume uses the checkpoint's config; --config is ignored", file=sys.stderr)
    else:
        cfg = load_config(args.config, args.overrides)
    return cfg, resume, run


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C and a scheduler's SIGTERM stop the run in order. SIGINT is installed explicitly: a
    # process started in the background of a non-interactive shell inherits it as ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    launcher = None
    try:
        cfg, resume, run = resolve(args)
        device = resolve_device(args.device)
        data = args.data or cfg.data.path or str(default_store(cfg))
        store = SliceStore(data)
        cfg.data.path = str(Path(data).resolve())
        for split in (cfg.data.train_split, cfg.data.val_split):
            store.indices(split)
        c = store.image_shape[0]
        if cfg.model.in_channels and cfg.model.in_channels != c:
            raise RunError(f"{data}: images have {c} channels, model.in_channels is {cfg.model.in_channels}")
        if resume is not None and int(resume["image_channels"]) != c:
            raise RunError(f"{data}: images have {c} channels, the resumed model takes {resume['image_channels']}")
        cfg.model.in_channels = c
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(cfg.to_yaml())
        meta = {"argv": sys.argv, "args": vars(args), "git": git_revision(), "torch": torch.__version__,
                "python": platform.python_version(), "device": str(device), "data": cfg.data.path,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at_update": resume["counters"]["updates"] if resume else 0}
        (run / "meta.json").write_text(json.dumps(meta, indent=1))
        print(f"run {run}: {args.workers} workers on {device}, data {data} "
              f"(train {len(store.indices(cfg.data.train_split))} slices), tensorboard --logdir {run}", file=sys.stderr)
        launcher = Launcher(args, cfg, store, run, device, resume)
        launcher.start()
        t0 = time.monotonic()
        launcher.train()
        launcher.wind_down(evaluate_last=True)
        wall = time.monotonic() - t0
        return report(run, store, cfg, device, wall)
    except KeyboardInterrupt:
        print("\ninterrupted: writing a final checkpoint and stopping", file=sys.stderr)
        if launcher is not None and launcher.started:
            launcher.request_stop()
            launcher.wind_down(evaluate_last=False)
        return 130
    except (ConfigError, StoreError, CheckpointError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if launcher is not None:
            launcher.kill_all()


def report(run: Path, store: SliceStore, cfg: Config, device: torch.device, wall: float) -> int:
    """Evaluate the best checkpoint on the test split; print and save the metrics."""
    ckpts = run / "checkpoints"
    path = ckpts / "best.pt" if (ckpts / "best.pt").exists() else ckpts / "latest.pt"
    try:
        store.indices(cfg.data.test_split)
    except StoreError as exc:
        print(f"training done in {wall:.0f} s; no test evaluation ({exc})", file=sys.stderr)
        return 0
    res, _, ckpt = evaluate_checkpoint(str(path), store, cfg.data.test_split, device)
    info = {"checkpoint": str(path), "updates": int(ckpt["counters"]["updates"]), "epoch": float(ckpt["counters"]["epoch"]),
            "split": cfg.data.test_split, "slices": len(res.per_image), "wall_s": round(wall, 1),
            "params": int(ckpt["params"]), **{k: v["mean"] for k, v in res.summary.items()},
            "std": {k: v["std"] for k, v in res.summary.items()}, "step_dice": res.step_dice}
    write_json_atomic(info, run / "test_metrics.json")
    print(f"\ntest split '{cfg.data.test_split}' ({len(res.per_image)} slices), {path.name} "
          f"from update {info['updates']}, trained {wall:.0f} s:")
    print(table_row(res, info["params"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
