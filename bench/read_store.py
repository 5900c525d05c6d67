"""Random-batch read throughput of a SliceStore.

Builds a temporary synthetic store (default 500 slices x 3 channels x 256 x 256, random data,
written through the project's StoreWriter), then times ``SliceStore.sample`` for random
batches of 2, 8 and 32 slices in one process and prints one JSON line::

    python bench/read_store.py [--slices 500] [--channels 3] [--size 256] [--seconds 2]
                               [--compression none|lzf|gzip]

The file was just written, so reads come from the page cache (a warm store); a cold first
epoch from disk is bounded by the disk instead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from datasets.store import SliceStore
from datasets.writer import StoreLayout, StoreWriter


def build(path: Path, slices: int, channels: int, size: int, compression: str | None) -> None:
    rng = np.random.default_rng(0)
    per_case = 20
    layout = StoreLayout(split=(70, 10, 20), seed=0, keep_negatives=True, normalise=False, compression=compression)
    with StoreWriter(path, layout=layout, attrs={"source": "bench", "converter": "bench/read_store.py"}) as w:
        for c, start in enumerate(range(0, slices, per_case)):
            k = min(per_case, slices - start)
            images = rng.random((k, channels, size, size), dtype=np.float32)
            masks = (rng.random((k, size, size)) > 0.5).astype(np.uint8)
            w.add_case(f"case{c:03d}", images, masks, np.arange(k))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=500)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    ap.add_argument("--compression", default="none", choices=["none", "lzf", "gzip"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        build(path, args.slices, args.channels, args.size, None if args.compression == "none" else args.compression)
        build_s = time.perf_counter() - t0
        store = SliceStore(path)
        rng = np.random.default_rng(1)
        result = {
            "slices": args.slices, "image_shape": list(store.image_shape), "compression": args.compression,
            "file_mb": round(os.path.getsize(path) / 2**20, 1), "build_s": round(build_s, 2),
            "slices_per_s": {},
        }
        store.sample("all", 2, rng)  # open the handle
        for batch in (2, 8, 32):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                images, masks, idx = store.sample("all", batch, rng)
                n += len(idx)
            result["slices_per_s"][str(batch)] = round(n / (time.perf_counter() - t0), 1)
        store.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
