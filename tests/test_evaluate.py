"""a3c.evaluate: batch limits."""


def test_limit_batches_cuts_the_last_batch_and_reads_no_further():
    import numpy as np

    from a3c.evaluate import limit_batches

    def batches(n=3, size=3, fail_after=None):
        for k in range(n):
            if fail_after is not None and k >= fail_after:
                raise AssertionError("read a batch past the limit")
            idx = np.arange(k * size, (k + 1) * size)
            yield np.zeros((size, 1, 2, 2)), np.zeros((size, 2, 2)), idx

    assert [len(b[2]) for b in limit_batches(batches(), 5)] == [3, 2]
    assert [len(b[2]) for b in limit_batches(batches(), 0)] == [3, 3, 3]
    assert [len(b[2]) for b in limit_batches(batches(fail_after=2), 6)] == [3, 3]
