"""Typed configuration: dataclasses loaded from YAML (``yaml.safe_load``), then ``key=value`` overrides.

A config file holds sections named like the dataclasses below (``model``, ``env``, ``loss``,
``optim``, ``train``, ``data``, ``eval``); fields not given keep their defaults. Overrides use dotted
keys, e.g. ``train.max_updates=50 model.sam=false``; values are parsed as YAML scalars and checked
against the field's type. Every field carries a one-line ``help`` in its metadata, which
``describe()`` prints.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from a3c.augment import AUGMENT_MODES, Jitter

SELECTIONS = ("best", "last")  # eval.select: the checkpoint the end-of-run test headlines

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(ValueError):
    """A bad config file or override; the message is one line."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    """The network of the paper's Fig. 1: VGG16/2 feature extractor, SAM, dilated policy and value nets."""

    in_channels: int = _f(0, "image channels; 0 = take them from the data store")
    width: int = _f(32, "channels of conv1_x; VGG16 at half width is 32 (blocks 2-4 use 2x, 4x, 8x)")
    head_channels: int = _f(184, "channels of every conv layer in the policy and the value net")
    head_dilations: list = _f([1, 2, 3, 4, 3, 2, 1], "dilation of each 3x3 conv layer of a head (one entry per layer)")
    dilation: bool = _f(True, "dilated convolutions (DC); false sets every dilation to 1 (Table 3 ablation)")
    sam: bool = _f(True, "the self-attention module of eq. 1 (Table 3 ablation)")
    reward_kernel: int = _f(33, "side of the learned reward-map kernel w of eq. 8 (odd; PixelRL uses 33)")
    init: str = _f("torch", "initial weights: torch (PyTorch's default for every conv) or kaiming (torchvision VGG's: "
                   "Kaiming-normal fan_out, zero biases; each head's last 1x1 conv N(0, 0.01))")
    norm: str = _f("none", "normalisation after every hidden 3x3 conv, before its ReLU: none (the paper's VGG16), "
                   "group (GroupNorm, gcd(C, 4) groups) or instance (one group per channel, as the U-Net "
                   "baseline); per slice, no running statistics")


@dataclass
class EnvConfig:
    """The per-pixel agents: state, mask update and reward (eq. 12)."""

    t_max: int = _f(10, "steps per episode, in training and at inference")
    mask_update: str = _f("multiply", "multiply: m(t+1) = m(t) * a(t) (\"do nothing\" keeps a zeroed pixel zero); "
                          "replace: m(t+1) = a(t)")
    state: str = _f("masked", "masked: X(t) = I * m(t); stacked: channels [I, m(t)]")
    kind: str = _f("mask", "mask: PixelDRL-MG's keep/zero agents; refine: PixelRL refinement of a coarse "
                   "probability map (Fig. 5's baseline), the store's last image channel being that map")
    deltas: list[float] = _f([1.0, -1.0, 0.4, -0.4, 0.2, -0.2, 0.1, -0.1],
                      "refine: the actions, values added to a pixel's probability (clipped to [0, 1])")


@dataclass
class LossConfig:
    """PA3C loss terms (eqs. 8, 13-16)."""

    gamma: float = _f(0.95, "discount rate")
    value_coef: float = _f(0.5, "weight of the value loss mean((R - V)^2)")
    entropy_coef: float = _f(0.01, "weight of the entropy bonus")
    class_balance: float = _f(1.0, "beta: weight pixels by their class share ** -beta in the policy and value means; "
                              "0 = plain pixel means")
    bootstrap: str = _f("zero", "return after the last step: zero (episode ends at t_max) or value (V(s(t_max)))")
    learn_reward_conv: bool = _f(True, "learn w of eq. 8; false keeps it the identity (plain discounted returns)")
    class_weight_cap: float = _f(0.0, "cap every pixel's class weight at this after normalising; 0 = no cap")
    live_only: bool = _f(False, "policy, entropy and cross-entropy terms only on pixels whose action still matters "
                         "(mask_update multiply: m_i(t) = 1); false = every pixel, as eqs. 13-15")
    ce_coef: float = _f(0.0, "weight of a cross-entropy term on the policy logits toward the ground truth (keep "
                        "object, zero background), class-weighted like the policy term; 0 = none, as the paper; "
                        "ignored by env.kind refine, whose actions have no such target")
    dice_coef: float = _f(0.0, "weight of a soft-Dice term between the ground truth and the mask each step is "
                          "expected to leave (p(keep), times the mask before the step under multiply); 0 = none, "
                          "as the paper; ignored by env.kind refine")


@dataclass
class OptimConfig:
    """Adam and the step LR schedule of the paper, run by the parameter server."""

    lr: float = _f(1e-3, "Adam learning rate")
    lr_decay: float = _f(0.9, "LR factor applied every lr_step_epochs")
    lr_step_epochs: float = _f(25.0, "epochs (training slices seen / train size) between LR decays")
    grad_clip: float = _f(0.0, "clip the global gradient norm to this; 0 = off")
    adam_eps: float = _f(1e-8, "Adam epsilon")
    staleness_lr: bool = _f(False, "divide the LR of a gradient computed k updates ago by max(1, k) "
                                   "(staleness-aware asynchronous SGD)")
    ema_decay: float = _f(0.0, "keep an exponential moving average of the parameters with this decay (warmed up: "
                               "min(decay, (1 + n) / (10 + n)) after n updates); checkpoints carry it and "
                               "evaluation uses it; 0 = off (the paper)")


@dataclass
class TrainConfig:
    """Budget, batch and processes of a training run."""

    batch_size: int = _f(2, "slices per worker update")
    epochs: float = _f(200.0, "stop after this many epochs of training slices; 0 = no epoch bound")
    max_updates: int = _f(0, "stop after this many parameter updates; 0 = no update bound")
    seed: int = _f(0, "base seed; worker k uses seed + k")
    rollout: str = _f("auto", "onestep: keep one step's graph at a time (memory independent of t_max, a third "
                      "more compute); full: keep all; auto: each worker measures one step's graph on its first "
                      "batch and keeps all where they fit (docs/TRAINING.md, \"Memory: train.rollout\")")
    threads_per_worker: int = _f(1, "torch intra-op threads per worker process")
    active_workers: int = _f(0, "local backend: at most this many workers compute at once, the others wait their "
                             "turn (less staleness, same throughput when workers outnumber the cores); 0 = auto: "
                             "CPU cores // threads_per_worker on a CPU, every worker on CUDA")
    checkpoint_interval_s: float = _f(60.0, "seconds between periodic checkpoints")
    max_worker_restarts: int = _f(5, "stop the run when workers have failed this many times in all")
    amp: bool = _f(True, "bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _f(True, "NHWC activations: cuDNN's fast layout for bf16 convolutions on CUDA, and faster "
                             "updates on CPU too (docs/PERFORMANCE.md)")
    cudnn_benchmark: str = _f("auto", "let cuDNN time its algorithms per shape on CUDA (fastest under MPS, "
                              "docs/PERFORMANCE.md); auto: on where the launcher runs its private MPS daemon, off "
                              "otherwise; true/false: always/never")
    compile: bool = _f(False, "torch.compile the network in every worker: a slower start, faster updates after "
                       "it (docs/PERFORMANCE.md)")


@dataclass
class DataConfig:
    """Where slices come from."""

    path: str = _f("", "HDF5 slice store; empty = the built-in synthetic store (made on first use)")
    train_split: str = _f("train", "split the workers sample from (train, train_50, train_100, fold{k}/train)")
    val_split: str = _f("val", "split the monitor evaluates")
    test_split: str = _f("test", "split evaluated at the end of a run")
    image_size: int = _f(0, "resize slices to this side (bilinear images, nearest masks); 0 = as stored")
    augment: str = _f("none", "random transform of each training slice (a3c/augment.py): none (as the paper), "
                      "flip (left-right mirror, p 1/2) or d4 (one of the 8 symmetries of the square)")
    jitter_rotate: float = _f(0.0, "after data.augment, rotate each training slice by a uniform angle in [-r, r] "
                              "degrees (0 = off)")
    jitter_scale: float = _f(0.0, "after data.augment, zoom each training slice by a uniform factor in [1 - s, 1 + s] "
                             "(0 = off)")
    jitter_gamma: float = _f(0.0, "after data.augment, a gamma curve per slice and channel, exponent log-uniform in "
                             "[1/(1 + g), 1 + g] (0 = off)")
    synth_cases: int = _f(16, "cases of the built-in synthetic store")
    synth_size: int = _f(64, "side of the built-in synthetic store's slices")

    def jitter(self) -> Jitter:
        """The continuous jitter of the ``jitter_*`` fields (``a3c.augment.jitter_batch``)."""
        return Jitter(self.jitter_rotate, self.jitter_scale, self.jitter_gamma)


@dataclass
class EvalConfig:
    """The monitor's evaluation on the validation split."""

    batch_size: int = _f(8, "slices per evaluation batch")
    max_slices: int = _f(0, "evaluate at most this many validation slices; 0 = all")
    images: int = _f(3, "validation slices shown as images in TensorBoard")
    poll_s: float = _f(2.0, "seconds between looks for a new checkpoint")
    select: str = _f("best", "checkpoint the end-of-run test headlines: best (best.pt, the best validation Dice) "
                             "or last (latest.pt, the final parameters); both are scored in test_metrics.json")


@dataclass
class Config:
    """The whole configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_CHOICES = {
    ("env", "mask_update"): ("replace", "multiply"),
    ("env", "state"): ("masked", "stacked"),
    ("env", "kind"): ("mask", "refine"),
    ("loss", "bootstrap"): ("zero", "value"),
    ("model", "init"): ("torch", "kaiming"),
    ("model", "norm"): ("none", "group", "instance"),
    ("train", "rollout"): ("auto", "onestep", "full"),
    ("train", "cudnn_benchmark"): ("auto", "true", "false"),
}
_AUTO_BOOLS = {("train", "cudnn_benchmark")}  # auto/true/false fields: YAML booleans (and old configs' bools) map


def cudnn_benchmark_on(setting: str, under_mps: bool = False) -> bool:
    """``train.cudnn_benchmark`` resolved: an explicit true/false wins; auto is on only under the run's MPS daemon."""
    return setting == "true" or (setting == "auto" and under_mps)


def _coerce(section: str, name: str, value: Any, ftype: Any) -> Any:
    where = f"{section}.{name}"
    origin = get_origin(ftype) or ftype
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if origin is str:
        if value is None:
            value = ""
        if (section, name) in _AUTO_BOOLS and isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        allowed = _CHOICES.get((section, name))
        if allowed and value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
        return value
    if origin is list:
        item = (get_args(ftype) or (int,))[0]
        kinds = (int, float) if item is float else (int,)
        if not isinstance(value, list) or not all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: expected a list of {'numbers' if item is float else 'integers'}, "
                              f"got {value!r}")
        return [item(v) for v in value]
    raise ConfigError(f"{where}: unsupported type {ftype!r}")


def _section_types(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def apply_dict(cfg: Config, data: dict, source: str = "config") -> Config:
    """Set fields of ``cfg`` from a nested dict ``{section: {field: value}}``; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    sections = _section_types(cfg)
    for sname, values in data.items():
        if sname not in sections:
            raise ConfigError(f"{source}: unknown section {sname!r} (known: {', '.join(sections)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {sname!r} must be a mapping")
        sec = sections[sname]
        hints = get_type_hints(type(sec))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {sname}.{key}")
            setattr(sec, key, _coerce(sname, key, value, hints[key]))
    validate(cfg)
    return cfg


def parse_overrides(items: list[str]) -> dict:
    """``["train.max_updates=5", "model.sam=false"]`` -> ``{"train": {"max_updates": 5}, "model": {"sam": False}}``."""
    out: dict = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: {exc.__class__.__name__}") from None
        out.setdefault(section, {})[name] = value
    return out


def _apply_file(cfg: Config, path: Path, seen: tuple[Path, ...] = ()) -> Config:
    """Apply the YAML file ``path`` to ``cfg``; a top-level ``base: FILE`` (relative to ``path``'s
    folder) is applied first, so a config can hold only what it changes."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file "
                          f"(byte {exc.start} is 0x{exc.object[exc.start]:02x})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and "base" in data:
        base = data.pop("base")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
        base_path = (path.parent / base).resolve()
        if base_path in seen or base_path == path.resolve():
            raise ConfigError(f"{path}: base {base} includes itself")
        cfg = _apply_file(cfg, base_path, seen + (path.resolve(),))
    return apply_dict(cfg, data, source=str(path))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (``configs/default.yaml`` when None, with its ``base`` first), then
    the overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    cfg = _apply_file(Config(), path)
    if overrides:
        apply_dict(cfg, parse_overrides(overrides), source="command line")
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a config from ``Config.to_dict()`` output (as stored in checkpoints)."""
    return apply_dict(Config(), data, source="stored config")


# Integer fields whose values below these make no sense (a child process would fail on them).
_INT_MINIMA = {
    ("train", "threads_per_worker"): 1,
    ("train", "max_updates"): 0,
    ("train", "max_worker_restarts"): 0,
    ("train", "seed"): 0,
    ("data", "image_size"): 0,
    ("data", "synth_cases"): 1,
    ("data", "synth_size"): 16,
    ("eval", "max_slices"): 0,
    ("eval", "images"): 0,
    ("model", "in_channels"): 0,
}
MAX_SEED = 2**62  # seeds are offset per worker, restart and resume, and must stay below 2**63


def _fields(cfg: Config):
    """Every field as ``(section, name, value)``."""
    for sname, sec in _section_types(cfg).items():
        for f in dataclasses.fields(sec):
            yield sname, f.name, getattr(sec, f.name)


def _check_numbers(cfg: Config) -> None:
    """Every float (and list of floats) finite, the integers of ``_INT_MINIMA`` at least their minimum."""
    for sname, name, value in _fields(cfg):
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ConfigError(f"{sname}.{name}: expected a finite number, got {value!r}")
        low = _INT_MINIMA.get((sname, name))
        if low is not None and value < low:
            raise ConfigError(f"{sname}.{name}: expected an integer >= {low}, got {value}")
    if cfg.train.seed >= MAX_SEED:
        raise ConfigError(f"train.seed: expected an integer below 2**62, got {cfg.train.seed}")


def validate(cfg: Config) -> None:
    """Cross-field checks; raise ConfigError with one line."""
    _check_numbers(cfg)
    m = cfg.model
    if m.width < 1 or m.head_channels < 1:
        raise ConfigError("model.width and model.head_channels must be positive")
    if not m.head_dilations or any(d < 1 for d in m.head_dilations):
        raise ConfigError(f"model.head_dilations: expected positive integers, got {m.head_dilations}")
    if m.reward_kernel < 1 or m.reward_kernel % 2 == 0:
        raise ConfigError(f"model.reward_kernel: expected an odd positive size, got {m.reward_kernel}")
    if cfg.env.t_max < 1:
        raise ConfigError("env.t_max must be at least 1")
    if cfg.env.kind == "refine" and len(cfg.env.deltas) < 2:
        raise ConfigError(f"env.deltas: expected at least two actions, got {cfg.env.deltas}")
    if not 0.0 <= cfg.loss.gamma <= 1.0:
        raise ConfigError("loss.gamma must lie in [0, 1]")
    if cfg.loss.class_weight_cap < 0 or cfg.loss.ce_coef < 0 or cfg.loss.dice_coef < 0:
        raise ConfigError("loss.class_weight_cap, loss.ce_coef and loss.dice_coef must be non-negative")
    if cfg.loss.class_weight_cap and cfg.loss.class_weight_cap < 1:
        raise ConfigError("loss.class_weight_cap must be at least 1 (weights average 1) or 0 for no cap")
    if cfg.train.active_workers < 0:
        raise ConfigError("train.active_workers must be 0 (auto) or positive")
    if cfg.train.batch_size < 1 or cfg.eval.batch_size < 1:
        raise ConfigError("batch sizes must be at least 1")
    if cfg.train.epochs < 0:
        raise ConfigError("train.epochs must be 0 (no epoch bound) or positive")
    if cfg.train.epochs <= 0 and cfg.train.max_updates <= 0:
        raise ConfigError("set a budget: train.epochs or train.max_updates must be positive")
    if cfg.optim.lr <= 0 or cfg.optim.lr_step_epochs <= 0:
        raise ConfigError("optim.lr and optim.lr_step_epochs must be positive")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError("optim.ema_decay must lie in [0, 1): 0 = off")
    if cfg.train.checkpoint_interval_s <= 0 or cfg.eval.poll_s <= 0:
        raise ConfigError("train.checkpoint_interval_s and eval.poll_s must be positive")
    if cfg.eval.select not in SELECTIONS:
        raise ConfigError(f"eval.select: expected one of {', '.join(SELECTIONS)}, got {cfg.eval.select!r}")
    if cfg.data.augment not in AUGMENT_MODES:
        raise ConfigError(f"data.augment: expected one of {', '.join(AUGMENT_MODES)}, got {cfg.data.augment!r}")
    jitter_problem = cfg.data.jitter().problem(("data.jitter_rotate", "data.jitter_scale", "data.jitter_gamma"))
    if jitter_problem:
        raise ConfigError(jitter_problem)


def describe(cfg: Config | None = None) -> str:
    """One line per field: ``section.key = value  # help``."""
    cfg = cfg or Config()
    lines = []
    for sname, sec in _section_types(cfg).items():
        for f in dataclasses.fields(sec):
            lines.append(f"{sname}.{f.name} = {json.dumps(getattr(sec, f.name))}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)
