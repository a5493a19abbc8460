"""Typed config schemas (registered with Hydra's ConfigStore) and up-front validation.

YAML under ``conf/`` holds values; these dataclasses hold the types and defaults once.
Library code receives these objects, never a Hydra handle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cprec.errors import ConfigError

BOUNDS_MODES = ("auto", "prt", "config")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    name: str = "resnet20"
    width: int = 16  # channels of the first stage (CIFAR ResNets, lenet scale)
    hidden: int = 256  # hidden units (mlp)


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None  # where the files are; null = the dataset's default places
    train_subset: int | None = None  # keep the first N training samples
    test_subset: int | None = None  # keep the first N test samples
    augment: bool = False  # random crop (padding 4) + horizontal flip, batched on device
    download: bool = True  # torchvision download when the files are missing and online
    # synthetic only
    num_train: int = 2048
    num_test: int = 512
    channels: int = 3
    size: int = 32
    classes: int = 10


@dataclass
class ScheduleConfig:
    name: str = "fp32"
    kind: str = "fp32"  # fp32 | static | cyclic | deficit
    bits: int = 8  # static forward bits
    bw_bits: int = 8  # backward (error) bits, fixed over the run
    min_bits: int = 3
    max_bits: int = 8
    cycles: int = 32
    profile: str = "cosine"  # cosine | linear | exp | rex
    shape: str = "growth"  # growth | decay | triangular
    bounds: str = "auto"  # auto | prt | config
    deficit_steps: int = 0  # deficit: steps at min_bits before switching to max_bits


@dataclass
class QuantConfig:
    format: str = "fixed"  # fixed | float
    quantize_first: bool = True
    quantize_last: bool = False
    quantize_errors: bool = True  # quantize the gradient w.r.t. each layer's output
    act_momentum: float = 0.9  # EMA of activation ranges used at eval
    # float formats (format=float)
    exp_bits: int = 5
    man_bits: int = 10
    rounding: str = "nearest"  # float rounding of weights/activations: nearest | stochastic
    overflow: str = "saturate"  # saturate | inf
    has_inf: bool = True  # False: the top exponent holds numbers (OCP fp8 E4M3)
    error_exp_bits: int | None = None  # errors in another float format (IEEE-style, with inf)
    error_man_bits: int | None = None


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of run
    gamma: float = 0.1
    warmup_steps: int = 0  # linear warm-up from 0 to lr


@dataclass
class TrainerConfig:
    epochs: int = 30
    steps: int | None = None  # total optimizer steps; wins over epochs when set
    batch_size: int = 128
    eval_batch_size: int = 1000
    eval_every: int | None = None  # steps; null = once per epoch
    checkpoint_every: int | None = None  # steps; null = at every evaluation
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm progress bar
    threads: int | None = None  # torch CPU threads; null = torch's default


@dataclass
class PrtConfig:
    start_bits: int = 2
    max_bits: int = 16
    steps_per_bits: int = 20
    threshold: float = 0.05  # accuracy gain over the level below that marks convergence
    upper_bits: Any = 8  # an int, or "auto": where the gain drops below threshold again
    smoothing: int = 5  # training accuracy averaged over this many last steps of a level
    batch_size: int = 32  # small batches: many noisy steps cost little next to the run


@dataclass
class TrainConfig:
    seed: int = 0
    resume: str | None = None
    output_root: str = "outputs"
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    prt: PrtConfig = field(default_factory=PrtConfig)


def register_schemas() -> None:
    """Make the schemas available to Hydra's defaults lists as ``train_schema``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Resolve a composed DictConfig into the typed object library code takes."""
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, TrainConfig):  # composed without the schema (e.g. from a dict)
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        obj = OmegaConf.to_object(merged)
    assert isinstance(obj, TrainConfig)
    validate(obj)
    return obj


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _check_bits(key: str, value: Any) -> None:
    _require(isinstance(value, int) and 1 <= value <= 32, key, value, "bits must be in 1..32")


def validate(cfg: TrainConfig) -> None:
    """Check every value before any work is done; raise ConfigError naming key and range."""
    t, s, o, q, p = cfg.trainer, cfg.schedule, cfg.optim, cfg.quant, cfg.prt
    _require(t.epochs > 0, "trainer.epochs", t.epochs, "must be a positive number of epochs")
    _require(t.steps is None or t.steps > 0, "trainer.steps", t.steps, "must be positive or null")
    _require(t.batch_size > 0, "trainer.batch_size", t.batch_size, "must be positive")
    _require(t.eval_batch_size > 0, "trainer.eval_batch_size", t.eval_batch_size, "must be positive")
    for key in ("eval_every", "checkpoint_every"):
        v = getattr(t, key)
        _require(v is None or v > 0, f"trainer.{key}", v, "must be a positive step count or null")
    _require(t.device in DEVICES, "trainer.device", t.device, f"choose one of {list(DEVICES)}")
    _require(t.threads is None or t.threads > 0, "trainer.threads", t.threads, "must be positive")
    for key in ("train_subset", "test_subset"):
        v = getattr(cfg.dataset, key)
        _require(v is None or v > 0, f"dataset.{key}", v, "must be a positive count or null")
    _require(o.name in ("sgd", "adamw"), "optim.name", o.name, "choose one of ['sgd', 'adamw']")
    _require(o.lr > 0, "optim.lr", o.lr, "the learning rate must be positive")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    _require(o.lr_schedule in ("multistep", "cosine", "constant"), "optim.lr_schedule",
             o.lr_schedule, "choose one of ['multistep', 'cosine', 'constant']")
    _require(all(0 < m < 1 for m in o.milestones), "optim.milestones", o.milestones,
             "milestones are fractions of the run in (0, 1)")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    for key in ("bits", "bw_bits", "min_bits", "max_bits"):
        _check_bits(f"schedule.{key}", getattr(s, key))
    _require(s.min_bits <= s.max_bits, "schedule.min_bits", s.min_bits,
             f"must not exceed schedule.max_bits={s.max_bits}")
    _require(s.cycles > 0, "schedule.cycles", s.cycles, "must be a positive number of cycles")
    _require(s.bounds in BOUNDS_MODES, "schedule.bounds", s.bounds,
             f"choose one of {list(BOUNDS_MODES)}")
    _require(s.deficit_steps >= 0, "schedule.deficit_steps", s.deficit_steps, "must be >= 0")
    _require(q.format in ("fixed", "float"), "quant.format", q.format,
             "choose one of ['fixed', 'float']")
    _require(1 <= q.exp_bits <= 8, "quant.exp_bits", q.exp_bits, "must be in 1..8")
    _require(0 <= q.man_bits <= 23, "quant.man_bits", q.man_bits, "must be in 0..23")
    _require((q.error_exp_bits is None) == (q.error_man_bits is None), "quant.error_exp_bits",
             q.error_exp_bits, "set quant.error_exp_bits and quant.error_man_bits together")
    _require(q.error_exp_bits is None or (1 <= q.error_exp_bits <= 8 and 0 <= q.error_man_bits <= 23),
             "quant.error_exp_bits", q.error_exp_bits, "exponent bits in 1..8, mantissa bits in 0..23")
    _require(q.rounding in ("nearest", "stochastic"), "quant.rounding", q.rounding,
             "choose one of ['nearest', 'stochastic']")
    _require(q.overflow in ("saturate", "inf"), "quant.overflow", q.overflow,
             "choose one of ['saturate', 'inf']")
    _require(0 <= q.act_momentum < 1, "quant.act_momentum", q.act_momentum, "must be in [0, 1)")
    _check_bits("prt.start_bits", p.start_bits)
    _check_bits("prt.max_bits", p.max_bits)
    _require(p.start_bits < p.max_bits, "prt.start_bits", p.start_bits,
             f"must be below prt.max_bits={p.max_bits}")
    _require(p.steps_per_bits > 0, "prt.steps_per_bits", p.steps_per_bits, "must be positive")
    _require(p.threshold > 0, "prt.threshold", p.threshold, "must be a positive accuracy gain")
    _require(0 < p.smoothing <= p.steps_per_bits, "prt.smoothing", p.smoothing,
             f"must be in 1..prt.steps_per_bits={p.steps_per_bits}")
    _require(p.batch_size > 0, "prt.batch_size", p.batch_size, "must be positive")
    _require(p.upper_bits == "auto" or (isinstance(p.upper_bits, int) and 1 <= p.upper_bits <= 32),
             "prt.upper_bits", p.upper_bits, "an integer in 1..32 or 'auto'")
