"""a3c.evaluate: batch limits and the evaluation options."""


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


def test_evaluate_options_limit_keep_report_and_count():
    import numpy as np
    import torch

    from a3c.config import load_config
    from a3c.evaluate import EvalOptions, evaluate
    from a3c.metrics import METRIC_KEYS
    from a3c.model import build_model

    cfg = load_config("configs/smoke.yaml", ["data.image_size=16"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 1, cfg.env.state)
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 16, 16), dtype=np.uint8)
    masks[:, 4:12, 4:12] = 1
    images = (masks[:, None] + 0.3 * rng.standard_normal((5, 1, 16, 16))).astype(np.float32)

    def batches():
        for k in range(0, 5, 2):
            yield images[k:k + 2], masks[k:k + 2], np.arange(k, min(k + 2, 5))

    counted: list[int] = []
    full = evaluate(model, batches(), cfg, "cpu")
    assert len(full.per_image) == 5 and len(full.step_dice) == cfg.env.t_max and not full.examples
    assert set(full.summary) == set(METRIC_KEYS)
    res = evaluate(model, batches(), cfg, "cpu",
                   options=EvalOptions(max_slices=3, t_max=2, keep_examples=1, progress=counted.append))
    assert len(res.per_image) == 3 and len(res.step_dice) == 2 and counted == [2, 1]
    assert len(res.examples) == 1 and res.examples[0].masks.shape == (2, 16, 16)
    dice = evaluate(model, batches(), cfg, "cpu", options=EvalOptions(dice_only=True))
    assert set(dice.summary) == {"dice"} and dice.summary["dice"] == full.summary["dice"]
    assert [r["dice"] for r in dice.per_image] == [r["dice"] for r in full.per_image]
