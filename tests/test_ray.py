"""The Ray transport (``--backend ray``): a local instance, a killed worker actor, a second node.

Skipped where Ray is not installed (``pip install -r requirements-ray.txt``; CI installs it).
The cluster tests start a real two-node Ray cluster on this machine with ``ray start`` (the head
with one CPU, so that a second one-CPU worker must go to the second node), authenticated with a
token of their own, and stop it with ``ray stop`` at the end.
"""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from a3c.checkpoint import load_checkpoint
from tests.conftest import ROOT, run_module, wait_for

SMOKE = "configs/smoke.yaml"


def ray_args(store, run_dir, workers=2, *extra):
    return ["-m", "a3c.launch", "--backend", "ray", "--workers", str(workers), "--config", SMOKE, "--data",
            str(store), "--run-dir", str(run_dir), "--device", "cpu", "--no-progress", *extra]


def updates_in(path: Path) -> int:
    return int(load_checkpoint(path)["counters"]["updates"])


def test_ray_backend_missing_is_a_usage_error(tiny_store, tmp_path):
    script = "import sys; sys.modules['ray'] = None\nfrom a3c.launch import main\nsys.exit(main(sys.argv[1:]))"
    res = subprocess.run([sys.executable, "-c", script, *ray_args(tiny_store, tmp_path / "run")[2:]], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: --backend ray needs Ray, which is not installed: pip install -r requirements-ray.txt")
    assert not (tmp_path / "run").exists()


def test_ray_address_needs_ray_backend(tiny_store, tmp_path):
    res = run_module(["-m", "a3c.launch", "--ray-address", "127.0.0.1:1", "--data", str(tiny_store)], timeout=60)
    assert res.returncode == 2 and "--ray-address needs --backend ray" in res.stderr


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install -r requirements-ray.txt)")


@pytest.mark.parametrize("gpus, here, workers, plan", [
    (1, 1, 2, (0.1, 0.45, 2)),    # one GPU: the server's tenth and two workers
    (8, 8, 8, (0.1, 0.9, 1)),     # a GPU per worker, the server beside one of them
    (2, 1, 3, (0.1, 0.45, 2)),    # two to a GPU where the workers do not divide evenly
    (2, 0, 3, (0.0, 0.5, 2)),     # no GPU on the launcher's node: theta and Adam on its CPU
])
def test_gpu_plan_fits_the_server_and_the_workers_on_the_gpus(gpus, here, workers, plan):
    from workers.ray_backend import gpu_plan

    server, worker, per_gpu = gpu_plan(gpus, here, workers)
    assert (server, per_gpu) == (plan[0], plan[2]) and worker == pytest.approx(plan[1])
    assert server + per_gpu * worker <= 1.0 + 1e-9  # the GPU that holds the server holds its workers too
    assert per_gpu * max(1, gpus) >= workers


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ray_cuda_trains_until_the_first_validation(tiny_store, tmp_path):
    """--backend ray --device cuda, one GPU, 2 workers: theta and Adam on the GPU, the workers on CUDA."""
    run = tmp_path / "run"
    args = ray_args(tiny_store, run, 2, "train.max_updates=30", "train.checkpoint_interval_s=2")
    args[args.index("--device") + 1] = "cuda"
    res = run_module(args, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "MPS: not used (--backend ray: start MPS on each node yourself)" in res.stderr
    assert "theta and Adam on cuda" in (run / "logs" / "server.log").read_text()
    for rank in (0, 1):
        log = (run / "logs" / f"worker{rank}.log").read_text()
        assert f"worker {rank} on cuda" in log and "peak_cuda_mib=" in log, log
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert 0.0 <= best["dice"] <= 1.0
    assert updates_in(run / "checkpoints" / "latest.pt") == 30


@needs_ray
@pytest.mark.slow
def test_ray_worker_raising_repeatedly_stops_the_run_with_its_error(cluster, tiny_store, tmp_path):
    # on the cluster the other tests start anyway: one local Ray instance fewer to start (the SIGTERM
    # test below runs on the local instance that ray.init starts without --ray-address)
    run = tmp_path / "run"
    res = run_module(ray_args(tiny_store, run, 2, "--ray-address", cluster["address"], "train.max_updates=1000",
                              "train.max_worker_restarts=1"), env={**cluster["env"], "PIXELDRL_FAULT_RAISE": "1"},
                     timeout=240)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: workers failed 2 times") and "RuntimeError: injected fault in worker" in last
    assert "injected fault" in (run / "logs" / "worker0.log").read_text()


@needs_ray
@pytest.mark.slow
def test_ray_sigterm_to_the_launcher_writes_the_final_checkpoint(tiny_store, tmp_path):
    """ray.init installs a SIGTERM handler that kills the driver outright; the launcher puts its own
    back, so SIGTERM (a scheduler's stop) ends a Ray run in order, as on the local backend."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, *ray_args(tiny_store, run, 2, "train.max_updates=100000",
                                                       "train.checkpoint_interval_s=1")],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        latest, monitor = run / "checkpoints" / "latest.pt", run / "logs" / "monitor.log"
        # the monitor starts last: before that, a slow worker's placement may still hold up the start
        # (a run stopped while it starts writes no final checkpoint)
        wait_for(lambda: proc.poll() is not None or (monitor.exists() and latest.exists() and updates_in(latest) > 0),
                 timeout=180, what="a started Ray run with a checkpoint")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: writing a final checkpoint" in err
    assert "checkpoint (stop requested)" in (run / "logs" / "server.log").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node (1 CPU) and a second node (2 CPUs, resource ``second_node``) on this machine."""
    exe = shutil.which("ray", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("the ray command is not on PATH")
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex, "PYTHONPATH": str(ROOT)}
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
    try:
        subprocess.run([exe, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "1", "--include-dashboard=false", "--temp-dir", str(tmp), *common],
                       env=env, check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([exe, "start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                        "--resources", json.dumps({"second_node": 1}), *common], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
        probe = ("import json, ray; ray.init(address='%s'); print(json.dumps([n['NodeID'] for n in ray.nodes() "
                 "if n['Alive'] and 'second_node' in n['Resources']]))" % address)
        out = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True,
                             timeout=120).stdout
        second = json.loads(out.strip().splitlines()[-1])
        assert len(second) == 1, out
        yield {"address": address, "env": env, "second_node": second[0]}
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"{exc.cmd[:3]} failed: {exc.stderr[-2000:]}") from None
    finally:
        subprocess.run([exe, "stop", "--force"], env=env, capture_output=True, timeout=120)


@needs_ray
@pytest.mark.slow
def test_ray_cluster_places_workers_on_the_second_node_and_trains(cluster, tiny_store, tmp_path):
    # a whole run through Ray: placement, counters, logs and TensorBoard (the local instance that
    # ray.init starts without --ray-address runs in the SIGTERM test above)
    run = tmp_path / "run"
    res = run_module(ray_args(tiny_store, run, 2, "--ray-address", cluster["address"], "train.max_updates=12"),
                     env=cluster["env"], timeout=240)
    assert res.returncode == 0, res.stderr
    info = json.loads((run / "ray.json").read_text())
    nodes = [w["node"] for w in info["workers"].values()]
    assert cluster["second_node"] in nodes, info
    assert info["server_node"] != cluster["second_node"]  # the server stays on the launcher's (head) node
    assert sorted(info["workers"]) == ["0", "1"] and all(w["node"] for w in info["workers"].values())
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt["counters"]["updates"] == 12 and ckpt["counters"]["images"] == 24
    assert (run / "checkpoints" / "best.pt").exists() and "DICE" in res.stdout
    for rank in (0, 1):  # each worker pushed gradients and stopped when told
        log = (run / "logs" / f"worker{rank}.log").read_text()
        assert "first gradient" in log and "stopping after" in log
    assert "checkpoint (budget spent) at update 12" in (run / "logs" / "server.log").read_text()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = set()
    for ev in (run / "tb").glob("events.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
    assert {"losses/policy_loss", "charts/img_steps_per_s", "val/dice"} <= scalars


@needs_ray
@pytest.mark.slow
def test_ray_killed_worker_actor_is_replaced_and_run_completes(cluster, tiny_store, tmp_path):
    run = tmp_path / "run"
    total = 300
    proc = subprocess.Popen([sys.executable, *ray_args(tiny_store, run, 2, "--ray-address", cluster["address"],
                                                       f"train.max_updates={total}")],
                            cwd=ROOT, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        latest = run / "checkpoints" / "latest.pt"
        deadline = time.monotonic() + 120
        while not ((run / "ray.json").exists() and latest.exists() and updates_in(latest) > 0):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.2)
        namespace = json.loads((run / "ray.json").read_text())["namespace"]
        kill = ("import ray; ray.init(address='%s', namespace='%s'); ray.kill(ray.get_actor('worker0.0')); "
                "print('killed')" % (cluster["address"], namespace))
        res = subprocess.run([sys.executable, "-c", kill], env=cluster["env"], capture_output=True, text=True,
                             timeout=120)
        assert "killed" in res.stdout, res.stderr[-2000:]
        before = updates_in(latest)
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert before < total, "the run ended before the kill: raise its budget"
    assert proc.returncode == 0, err
    assert "worker 0 died (its Ray actor died); restarting it (1/5)" in err
    assert json.loads((run / "ray.json").read_text())["workers"]["0"]["actor"] == "worker0.1"
    assert (run / "logs" / "worker0.log").read_text().count("INFO started") == 2
    assert updates_in(run / "checkpoints" / "latest.pt") == total
