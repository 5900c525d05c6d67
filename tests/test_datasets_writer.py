"""Writer: split allocation, subsets, folds, normalisation, mask checks, atomic output."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.normalise import DEFAULT_NORMALISATION, normalisation_name, parse_normalisation
from datasets.store import SliceStore
from datasets.writer import (
    ConvertError,
    StoreLayout,
    StoreWriter,
    allocate_counts,
    assign_folds,
    binarise_mask,
    kshot_subsets,
    normalise_case,
    parse_split,
    split_cases,
)


@pytest.mark.parametrize("n, ratios, expected", [
    (8, (70, 10, 20), [5, 1, 2]),
    (10, (70, 10, 20), [7, 1, 2]),
    (110, (70, 10, 20), [77, 11, 22]),
    (3, (70, 10, 20), [1, 1, 1]),
    (2, (70, 10, 20), [1, 0, 1]),  # too few cases: test is served before val
    (1, (70, 10, 20), [1, 0, 0]),
    (0, (70, 10, 20), [0, 0, 0]),
    (8, (0, 0, 100), [0, 0, 8]),
    (5, (80, 0, 20), [4, 0, 1]),
    (20, (1, 1, 1), [6, 7, 7]),
])
def test_allocate_counts(n, ratios, expected):
    assert allocate_counts(n, ratios) == expected


@pytest.mark.parametrize("n", range(3, 40))
def test_small_datasets_get_val_and_test(n):
    counts = allocate_counts(n, (70, 10, 20))
    assert sum(counts) == n and min(counts) >= 1


def test_parse_split():
    assert parse_split("70/10/20") == (70.0, 10.0, 20.0)
    assert parse_split("0/0/100") == (0.0, 0.0, 100.0)
    for bad in ("70/30", "a/b/c", "0/0/0", "-10/50/60", "70/10/nan"):
        with pytest.raises(ValueError):
            parse_split(bad)


def test_split_cases_seeded_and_disjoint():
    cases = [f"p{i}" for i in range(20)]
    a = split_cases(cases, (70, 10, 20), seed=3)
    b = split_cases(list(reversed(cases)), (70, 10, 20), seed=3)
    assert a == b  # independent of input order
    assert [len(a[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(cases)
    assert split_cases(cases, (70, 10, 20), seed=4) != a


def test_folds_balanced_seeded_and_independent_of_split():
    cases = [f"p{i}" for i in range(23)]
    f = assign_folds(cases, seed=1)
    assert sorted(np.bincount(list(f.values())).tolist()) == [4, 4, 5, 5, 5]
    assert f == assign_folds(reversed(cases), seed=1)
    assert f != assign_folds(cases, seed=2)


def test_kshot_nested():
    train = np.arange(10, 300, 2)
    s = kshot_subsets(train, seed=0)
    assert len(s[50]) == 50 and len(s[100]) == 100
    assert set(s[50]) <= set(s[100]) <= set(train)
    assert np.all(np.diff(s[100]) > 0)
    small = kshot_subsets(np.arange(30), seed=0)
    assert np.array_equal(small[50], np.arange(30)) and np.array_equal(small[100], np.arange(30))


def test_normalise_case():
    rng = np.random.default_rng(0)
    x = np.zeros((4, 2, 20, 20), np.float32)
    x[:, 0, 5:15, 5:15] = rng.normal(500, 50, size=(4, 10, 10))
    x[:, 1] = 7.0  # constant channel
    y = normalise_case(x)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    assert y[:, 0].max() == 1 and np.all(y[:, 0][x[:, 0] == 0] == 0)
    assert np.all(y[:, 1] == 1)
    assert np.all(normalise_case(np.zeros((1, 1, 4, 4))) == 0)


def test_binarise_mask():
    assert binarise_mask(np.array([0, 255, 255], np.uint8), "m").tolist() == [0, 1, 1]
    assert binarise_mask(np.array([0.0, 1.0]), "m").tolist() == [0, 1]
    assert binarise_mask(np.array([0, 1, 2, 3]), "m", label=2).tolist() == [0, 0, 1, 0]
    for bad in ([0, 2], [0, 1, 255], [0, np.nan], [0.5, 1]):
        with pytest.raises(ConvertError, match="m:"):
            binarise_mask(np.array(bad), "m")


def _case(k=3, size=8, positive=True):
    images = np.random.default_rng(k).random((k, 1, size, size)).astype(np.float32)
    masks = np.zeros((k, size, size), np.uint8)
    if positive:
        masks[::2, 2:5, 2:5] = 1
    return images, masks


def test_writer_roundtrip_and_negatives(tmp_path):
    out = tmp_path / "a.h5"
    with StoreWriter(out, layout=StoreLayout(seed=5), attrs={"source": "unit", "converter": "test"}) as w:
        for c in range(4):
            im, m = _case()
            assert w.add_case(f"c{c}", im, m, [10, 11, 12], (1.0, 2.0)) == 2  # slice 11 is negative
    s = SliceStore(out)
    assert s.n == 8 and s.attrs["normalisation"] == DEFAULT_NORMALISATION and s.attrs["seed"] == 5
    assert s.meta(1) == {"case": "c0", "slice": 12, "spacing": (1.0, 2.0)}
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_writer_failure_leaves_nothing(tmp_path):
    out = tmp_path / "b.h5"
    with pytest.raises(RuntimeError):
        with StoreWriter(out) as w:
            w.add_case("c0", *_case(), [0, 1, 2])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_nothing_left(tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(ConvertError, match="nothing left after dropping negative"):
        with StoreWriter(out, source="SRC") as w:
            w.add_case("c0", *_case(positive=False), [0, 1, 2])
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_existing_output(tmp_path):
    out = tmp_path / "d.h5"
    out.write_text("keep me")
    with pytest.raises(ConvertError, match="output exists"):
        StoreWriter(out)
    assert out.read_text() == "keep me"
    with StoreWriter(out, overwrite=True) as w:
        w.add_case("c0", *_case(), [0, 1, 2])
    assert SliceStore(out).n == 2


def test_writer_rejects_shape_change_and_duplicates(tmp_path):
    out = tmp_path / "e.h5"
    with pytest.raises(ConvertError, match="differs from earlier"):
        with StoreWriter(out) as w:
            w.add_case("c0", *_case(size=8), [0, 1, 2])
            w.add_case("c1", *_case(size=10), [0, 1, 2], source="file_c1")
    with pytest.raises(ConvertError, match="twice"):
        with StoreWriter(out) as w:
            w.add_case("c0", *_case(), [0, 1, 2])
            w.add_case("c0", *_case(), [0, 1, 2])
    with pytest.raises(ConvertError, match="NaN"):
        with StoreWriter(out) as w:
            im, m = _case()
            im[0, 0, 0, 0] = np.inf
            w.add_case("c0", im, m, [0, 1, 2])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0, 100), (1, 99), (0.25, 99.75), (2.5, 97.5), None])
def test_normalisation_name_round_trip(percentiles):
    assert parse_normalisation(normalisation_name(percentiles)) == (None if percentiles is None else
                                                                    tuple(float(p) for p in percentiles))


@pytest.mark.parametrize("name", ["zscore_per_slice", "percentile_99_1_nonzero_per_case_channel_to_0_1",
                                  "percentile_0.5_99.5_nonzero_per_case_channel", "percentile_x_1_nonzero_per_case_"
                                  "channel_to_0_1", "percentile_0_101_nonzero_per_case_channel_to_0_1"])
def test_unknown_normalisation_names(name):
    with pytest.raises(ValueError, match="unknown normalisation"):
        parse_normalisation(name)


def test_store_layout_is_canonical_and_recorded(tmp_path):
    layout = StoreLayout(split=[60, 20, 20], seed=np.int64(3), keep_negatives=True, normalise=False,
                         percentiles=[1, 99], compression="none")
    assert (layout.split, layout.seed, layout.percentiles, layout.compression) == ((60.0, 20.0, 20.0), 3, (1.0, 99.0),
                                                                                   None)
    with pytest.raises(ValueError, match="percentiles must be"):
        StoreLayout(percentiles=(99, 1))
    out = tmp_path / "f.h5"
    with StoreWriter(out, layout=layout) as w:
        im, m = _case(positive=False)
        w.add_case("c0", im, m, [0, 1, 2])
    s = SliceStore(out)
    assert s.n == 3 and s.attrs["normalisation"] == "none" and s.attrs["keep_negatives"]
    assert s.attrs["seed"] == 3 and s.attrs["split"] == "60/20/20"
    np.testing.assert_array_equal(s.read(np.arange(3))[0], im)
