"""a3c.config: overrides, errors and base files."""
import dataclasses

import pytest

from a3c.config import ConfigError, load_config, parse_overrides


def test_config_overrides_and_errors(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["train.max_updates=7", "model.sam=false", "optim.lr=0.01"])
    assert cfg.train.max_updates == 7 and cfg.model.sam is False and cfg.optim.lr == 0.01
    assert parse_overrides(["model.head_dilations=[1,2]"]) == {"model": {"head_dilations": [1, 2]}}
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("configs/smoke.yaml", ["train.nope=1"])
    with pytest.raises(ConfigError, match="expected one of"):
        load_config("configs/smoke.yaml", ["env.state=weird"])
    with pytest.raises(ConfigError, match="expected true/false"):
        load_config("configs/smoke.yaml", ["model.sam=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_config_base_file_is_applied_first(tmp_path):
    (tmp_path / "a.yaml").write_text("env:\n  t_max: 7\ntrain:\n  batch_size: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  batch_size: 5\n")
    cfg = load_config(tmp_path / "b.yaml", ["env.state=stacked"])
    assert (cfg.env.t_max, cfg.train.batch_size, cfg.env.state) == (7, 5, "stacked")
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    lgg, paper = load_config("configs/lgg.yaml"), load_config("configs/paper.yaml")
    assert lgg.model == paper.model and lgg.train == paper.train and lgg.env == paper.env


def test_lgg_cpu_config_is_the_default_run_with_its_own_options():
    lgg, default = load_config("configs/lgg-cpu.yaml"), load_config("configs/default.yaml")
    assert lgg.model.head_dilations == default.model.head_dilations
    assert (lgg.env.state, default.env.state) == ("stacked", "masked")  # the recipe's; the paper's state
    assert dataclasses.replace(lgg.env, state="masked") == default.env  # the rest of env as the default
    assert (lgg.model.init, lgg.model.norm, lgg.data.image_size, lgg.train.max_updates, lgg.loss.ce_coef) == (
        "kaiming", "group", 128, 1200, 1.0)
    assert (lgg.eval.select, default.eval.select) == ("last", "best")
    assert (lgg.loss.dice_coef, lgg.optim.ema_decay) == (1.0, 0.995)  # the recipe's; off in the package
    assert (default.loss.dice_coef, default.optim.ema_decay) == (0.0, 0.0)
    assert (lgg.data.augment, default.data.augment) == ("d4", "none")
    assert (lgg.data.jitter_rotate, lgg.data.jitter_scale, lgg.data.jitter_gamma) == (15, 0.15, 0.3)
    assert not (default.data.jitter_rotate or default.data.jitter_scale or default.data.jitter_gamma)


def test_eval_select_names_a_checkpoint_rule():
    assert load_config(None).eval.select == "best"
    assert load_config(None, ["eval.select=last"]).eval.select == "last"
    with pytest.raises(ConfigError, match="eval.select: expected one of best, last, got 'median'"):
        load_config(None, ["eval.select=median"])
