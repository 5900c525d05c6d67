"""SliceStore: validation, split names, reads, sampling, batches, pickling, fork/spawn."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys

import h5py
import numpy as np
import pytest

from datasets.store import SCHEMA_VERSION, SPLIT_NAMES, SliceStore, StoreError, cv_folds
from datasets.writer import StoreLayout, StoreWriter

N_CASES, PER_CASE, C, H, W = 10, 5, 2, 16, 12


def build_store(path, compression=None, split=(70, 10, 20), seed=0):
    """10 cases x 5 slices; images[i] is filled with the value 100*case + slice (no
    normalisation), so a read can be checked against its index."""
    rng = np.random.default_rng(0)
    layout = StoreLayout(split=split, seed=seed, keep_negatives=True, normalise=False, compression=compression)
    with StoreWriter(path, layout=layout, attrs={"source": "test", "converter": "test"}) as w:
        for c in range(N_CASES):
            images = np.stack([np.full((C, H, W), 100 * c + k, np.float32) for k in range(PER_CASE)])
            masks = (rng.random((PER_CASE, H, W)) > 0.7).astype(np.uint8)
            w.add_case(f"case{c:02d}", images, masks, np.arange(PER_CASE) + 1, (0.5, 0.75) if c % 2 else None)
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store") / "s.h5")


@pytest.fixture
def store(store_path):
    s = SliceStore(store_path)
    yield s
    s.close()


def value_of(i: int) -> float:
    return 100 * (i // PER_CASE) + (i % PER_CASE)


# ------------------------------------------------------------------------ validation

def test_basic_attributes(store, store_path):
    assert store.path == store_path
    assert store.image_shape == (C, H, W)
    assert store.n == N_CASES * PER_CASE == len(store)
    assert store.attrs["schema_version"] == SCHEMA_VERSION
    for key in ("source", "converter", "arguments", "seed", "split", "normalisation", "created"):
        assert key in store.attrs
    assert store.attrs["split"] == "70/10/20"
    assert store._file is None  # validated and closed; opened lazily


def _assert_store_error(path, *words):
    with pytest.raises(StoreError) as info:
        SliceStore(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg


def test_missing_file(tmp_path):
    _assert_store_error(tmp_path / "nope.h5", "no such file")


def test_not_hdf5(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    _assert_store_error(p, "not a readable HDF5")


def test_truncated(tmp_path):
    p = build_store(tmp_path / "t.h5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError) as info:
        s = SliceStore(p)
        s.read(np.arange(s.n))
    assert str(p) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("version", [None, 0, 2, "one"])
def test_wrong_or_missing_schema_version(tmp_path, version):
    p = build_store(tmp_path / "v.h5")
    with h5py.File(p, "a") as f:
        if version is None:
            del f.attrs["schema_version"]
        else:
            f.attrs["schema_version"] = version
    _assert_store_error(p, "schema_version")


def test_missing_dataset(tmp_path):
    p = build_store(tmp_path / "m.h5")
    with h5py.File(p, "a") as f:
        del f["subsets/train_50"]
    _assert_store_error(p, "subsets/train_50")


# ------------------------------------------------------------------------ splits

def test_split_names_and_disjointness(store):
    train, val, test = (store.indices(s) for s in ("train", "val", "test"))
    for idx in (train, val, test):
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(store.n))
    cases = [set(store.cases(s)) for s in ("train", "val", "test")]
    assert not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    assert [len(c) for c in cases] == [7, 1, 2]
    assert store.cases("all") == sorted(f"case{c:02d}" for c in range(N_CASES))
    assert np.array_equal(store.indices("all"), np.arange(store.n))


def test_kshot_subsets(store):
    train = store.indices("train")
    s50, s100 = store.indices("train_50"), store.indices("train_100")
    assert len(train) == 35 and np.array_equal(s50, train) and np.array_equal(s100, train)  # train < 50


def test_folds(store):
    tests = [store.indices(f"fold{k}/test") for k in range(5)]
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(store.n))
    for k in range(5):
        tr, te = store.indices(f"fold{k}/train"), tests[k]
        assert not set(store.cases(f"fold{k}/train")) & set(store.cases(f"fold{k}/test"))
        assert len(tr) + len(te) == store.n
        assert len(store.cases(f"fold{k}/test")) == 2  # 10 cases, 5 folds


def test_cv_folds_test_every_case_once():
    cases = [f"p{i}" for i in range(8)]
    folds = cv_folds(cases, 4, seed=0)
    assert sorted(c for f in folds for c in f["test"]) == cases
    for f in folds:
        assert len(f["test"]) == 2 and len(f["val"]) == 1 and len(f["train"]) == 5
        assert not (set(f["train"]) & set(f["val"])) and not (set(f["train"]) & set(f["test"]))
        assert not set(f["val"]) & set(f["test"])
    assert folds == cv_folds(list(reversed(cases)), 4, seed=0)  # order of the input does not matter
    assert folds != cv_folds(cases, 4, seed=1)
    with pytest.raises(ValueError):
        cv_folds(cases, 9, seed=0)


def test_cv_split_names(store):
    tested = []
    for k in range(4):
        parts = {p: store.cases(f"cv4/fold{k}/{p}") for p in ("train", "val", "test")}
        assert not set(parts["train"]) & set(parts["test"]) and not set(parts["val"]) & set(parts["test"])
        n = sum(len(store.indices(f"cv4/fold{k}/{p}")) for p in ("train", "val", "test"))
        assert n == store.n
        tested += parts["test"]
    assert sorted(tested) == sorted(store.cases("all"))
    for bad in ("cv4/fold4/test", "cv11/fold0/test", "cv1/fold0/test"):
        with pytest.raises(StoreError, match="unknown split"):
            store.indices(bad)


def test_every_split_name_is_usable(store):
    for name in SPLIT_NAMES:
        assert len(store.indices(name)) > 0, name


def test_unknown_split_lists_valid_names(store):
    with pytest.raises(StoreError) as info:
        store.indices("training")
    msg = str(info.value)
    assert "'training'" in msg and "fold4/test" in msg and "train_100" in msg and "\n" not in msg


def test_empty_split_is_an_error(tmp_path):
    p = build_store(tmp_path / "e.h5", split=(0, 0, 100))
    s = SliceStore(p)
    assert len(s.indices("test")) == s.n
    for name in ("train", "val", "train_50", "train_100"):
        with pytest.raises(StoreError, match="empty"):
            s.indices(name)
    assert s.split_sizes()["train"] == 0


# ------------------------------------------------------------------------ reads

def test_read_order_dtypes_duplicates(store):
    idx = np.array([7, 3, 3, 49, 0, 8])
    images, masks = store.read(idx)
    assert images.dtype == np.float32 and images.shape == (6, C, H, W)
    assert masks.dtype == np.uint8 and masks.shape == (6, H, W)
    assert [images[j, 0, 0, 0] for j in range(6)] == [value_of(i) for i in idx]
    assert set(np.unique(masks)) <= {0, 1}
    single_img, single_mask = store.read(np.array([49]))
    assert np.array_equal(single_mask[0], masks[3])
    assert store.read(np.array([], np.int64))[0].shape == (0, C, H, W)
    with pytest.raises(IndexError):
        store.read(np.array([store.n]))


def test_compressed_store_reads_the_same(tmp_path, store):
    s2 = SliceStore(build_store(tmp_path / "z.h5", compression="gzip"))
    idx = np.array([5, 1, 2, 3, 40, 41, 12])
    a, b = store.read(idx), s2.read(idx)
    assert store._raw and not s2._raw  # raw-chunk fast path vs hyperslab fallback
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_read_masks_matches_read(store):
    idx = np.array([9, 2, 2, 30])
    assert np.array_equal(store.read_masks(idx), store.read(idx)[1])


def test_sample_deterministic(store):
    a = store.sample("train", 4, np.random.default_rng(123))
    b = store.sample("train", 4, np.random.default_rng(123))
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    rng = np.random.default_rng(123)
    pool = store.indices("train")
    assert np.array_equal(a[2], pool[rng.choice(len(pool), size=4, replace=False)])
    assert len(set(a[2].tolist())) == 4 and set(a[2].tolist()) <= set(pool.tolist())
    assert [a[0][j, 0, 0, 0] for j in range(4)] == [value_of(i) for i in a[2]]


def test_sample_batch_larger_than_split(store):
    images, masks, idx = store.sample("val", 100, np.random.default_rng(0))
    assert len(idx) == len(store.indices("val")) == len(set(idx.tolist()))


def test_batches_in_index_order(store):
    got = list(store.batches("train", 8))
    assert [len(b[2]) for b in got] == [8, 8, 8, 8, 3]
    assert np.array_equal(np.concatenate([b[2] for b in got]), store.indices("train"))
    for images, masks, idx in got:
        assert [images[j, 1, 0, 0] for j in range(len(idx))] == [value_of(i) for i in idx]


def test_meta(store):
    m = store.meta(7)
    assert m == {"case": "case01", "slice": 3, "spacing": (0.5, 0.75)}
    assert store.meta(0) == {"case": "case00", "slice": 1, "spacing": None}
    with pytest.raises(IndexError):
        store.meta(store.n)


# ------------------------------------------------------------------------ processes

def test_pickle_drops_handle(store):
    store.read(np.array([1]))
    assert store._file is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._file is None
    assert np.array_equal(clone.read(np.array([4, 2]))[0], store.read(np.array([4, 2]))[0])
    clone.close()


def test_close_and_reopen(store):
    store.read(np.array([1]))
    store.close()
    assert store._file is None
    assert store.read(np.array([1]))[0][0, 0, 0, 0] == value_of(1)


def _child_read(store, idx, queue):
    try:
        images, masks = store.read(idx)
        queue.put((os.getpid(), images[:, 0, 0, 0].tolist(), store._pid == os.getpid()))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put(repr(exc))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_reopen_after_fork(store):
    store.read(np.array([0]))  # parent handle open before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(store, np.array([3, 1]), q))
    p.start()
    pid, values, reopened = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0 and pid != os.getpid() and reopened
    assert values == [value_of(3), value_of(1)]
    assert store.read(np.array([2]))[0][0, 0, 0, 0] == value_of(2)  # parent handle still fine


def test_spawn_child_reads(store):
    store.read(np.array([0]))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(store, np.array([10, 5]), q))
    p.start()
    result = q.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0, result
    assert result[1] == [value_of(10), value_of(5)]
