"""Typed config schemas (registered with Hydra's ConfigStore) and up-front validation.

YAML under ``conf/`` holds values; these dataclasses hold the types and defaults once.
Library code receives these objects, never a Hydra handle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cprec.errors import ConfigError, CprecError
from cprec.operand_config import OperandConfig, OperandsConfig

DEVICES = ("auto", "cpu", "cuda")
EVAL_BITS = ("max", "current")  # evaluate at the schedule's top forward bits, or CPT's way
QUANT_FORMATS = ("fixed", "float", "scaled")
QUANT_KERNELS = ("simulated", "int8", "auto")
FLOAT_ROUNDING = ("nearest", "stochastic")
FLOAT_OVERFLOW = ("saturate", "inf")
# Settings that change where a run writes, how it is shown or how fast it goes, never what it
# computes: a resumed run may change them, `cprec report` does not group runs by them, and
# Hydra leaves them out of sweep job names (train.yaml's exclude_keys, tested to agree).
RESULT_NEUTRAL_KEYS = ("resume", "output_root", "logger", "paper", "dataset.root",
                       "dataset.download", "dataset.workers", "trainer.progress", "trainer.threads",
                       "trainer.device", "trainer.checkpoint_every", "trainer.dist_timeout_s",
                       "tracking.experiment", "tracking.mlflow_uri", "tracking.wandb_project",
                       "tracking.wandb_entity", "tracking.wandb_group", "tracking.wandb_mode", "cost.devices",
                       "quant.telemetry")


@dataclass
class ModelConfig:
    name: str = "resnet20"  # the model registry name (conf/model/<name>.yaml)
    width: int = 16  # channels of the first stage (CIFAR ResNets, lenet scale)
    hidden: int = 256  # hidden units (mlp, gcn, sage); embedding = hidden units (lstm, transformer_lm)
    layers: int = 2  # LSTM layers / Transformer blocks
    dropout: float = 0.0  # lstm, transformer_lm; gcn, sage: before each layer
    tied: bool = True  # decoder weight tied to the embedding
    heads: int = 4  # transformer_lm attention heads
    arch: str = "resnet18"  # model=torchvision: any torchvision classification model's name


@dataclass
class DatasetConfig:
    name: str = "digits"  # the dataset registry name (conf/dataset/<name>.yaml)
    root: str | None = None  # where the files are; null = the dataset's default places
    train_subset: int | None = None  # keep the first N training samples
    test_subset: int | None = None  # keep the first N test samples
    augment: bool = False  # random crop (padding 4) + horizontal flip, batched on device
    # augment: pad the raw image (black border, CPT's pipeline), not the normalised one
    pad_before_normalize: bool = False
    mean: list[float] | None = None  # per-channel mean; null (with std) = the training set's own
    std: list[float] | None = None  # per-channel std; null (with mean) = the training set's own
    download: bool = True  # torchvision download when the files are missing and online
    num_train: int = 2048  # synthetic: training samples
    num_test: int = 512  # synthetic: test samples
    channels: int = 3  # synthetic: image channels
    size: int = 32  # synthetic: image side in pixels
    classes: int = 10  # synthetic: classes
    bptt: int = 35  # language models: tokens per training window (truncated BPTT)
    image_size: int = 224  # imagefolder: training crop (RandomResizedCrop) and eval center crop side
    resize: int = 256  # imagefolder: evaluation resizes the short side to this first
    workers: int = 2  # imagefolder: DataLoader worker processes (0 = decode in-process)


@dataclass
class ScheduleConfig:
    name: str = "fp32"  # the schedule's name (conf/schedule/<name>.yaml)
    kind: str = "fp32"  # fp32 | static | cyclic | deficit | ldp | cpt_ldp
    bits: int = 8  # static forward bits
    bw_bits: int = 8  # backward (error) bits; the top of their range when bw_min_bits is set
    bw_min_bits: int | None = None  # cyclic: errors cycle bw_min_bits..bw_bits; null = fixed
    min_bits: int = 3  # cyclic/deficit/ldp: lowest forward bits
    max_bits: int = 8  # cyclic/deficit/ldp: highest forward bits
    cycles: int = 32  # cyclic: number of precision cycles over the run
    profile: str = "cosine"  # cosine | linear | exp | rex
    # growth (rises every cycle) | fall_rise (falls on even cycles, rises on odd: Better
    # Schedules' decay) | falling (every cycle) | rise_fall (rises on even, falls on odd)
    shape: str = "growth"
    flip: str = "horizontal"  # how an exp/rex cycle falls: horizontal | vertical
    cycle_length: str = "floor"  # T = floor(N/C) (CPT's code) | floor_plus_one (Better Schedules')
    ties: str = "exact"  # rint of the exact value | float: of the float64 value, as their code
    bounds: str = "auto"  # auto | prt | config
    deficit_steps: int = 0  # deficit: steps at min_bits before switching to max_bits
    # rungs to move over instead of min_bits..max_bits: widths or formats ([mxfp4, mxfp8])
    ladder: list[Any] | None = None
    bw_ladder: list[Any] | None = None  # the errors' own ladder (null: they stay at one format)
    steps_at: list[float] | None = None  # stepped: fractions of the run where it climbs a rung
    before_lr_decay: bool = False  # stepped: climb at the lr milestones (optim.milestones)
    # learned precision (ldp, cpt_ldp; cprec/precision/ldp.py)
    target_cost: float = 0.6  # ldp: training cost per step as a fraction of the step at max_bits/bw_bits
    p_init: float = 0.0  # initial p_l in [0, 1] (ldp: 0 = min_bits; cpt_ldp: 0.5 = no offset)
    p_lr: float = 0.05  # SGD on the (normalised) precision gradients
    p_momentum: float = 0.0  # ldp: momentum of the precision parameters' SGD
    cost_push: str = "both"  # both: push down above the target, up below | down: only down
    push_strength: float = 1.0  # lambda: the push of a layer is lambda * L * its cost share
    warmup: float = 0.1  # fraction of the steps before the achieved cost is held to the target
    max_offset: int = 2  # cpt_ldp: learned per-layer offset d_l in [-max_offset, max_offset]


@dataclass
class QuantConfig:
    format: str = "fixed"  # fixed | float | scaled (per-GEMM operand specs: quant.operand, quant.operands)
    quantize_first: bool = True  # quantize the first conv/linear layer too (CPT: yes)
    quantize_last: bool = False  # quantize the final classifier too (CPT: no)
    # module-name patterns (fnmatch, e.g. "*downsample*") of Conv2d/Linear layers kept in full
    # precision besides the first/last rule (CPT's ImageNet ResNets: the shortcut convs)
    keep_full: list[str] = field(default_factory=list)
    # the final classifier's bits when quantize_last: null = the schedule's, an int = always
    # that many (forward and error), auto = the schedule's but never below cprec's guideline
    # ceil(log2(classes + 1)) (precision/scheduled.py)
    last_bits: Any = None
    quantize_errors: bool = True  # quantize the gradient w.r.t. each layer's output
    act_momentum: float = 0.9  # EMA of activation ranges used at eval
    # fixed point: weight/activation grids widened to hold 0 exactly, integer zero point
    # (true); false = CPT's grid, min + k * (max - min) / (2^b - 1) (errors: always CPT's)
    zero_exact: bool = True
    kernels: str = "simulated"  # GEMMs: simulated (float32) | int8 (integer codes) | auto (int8 if it pays)
    # float formats (format=float)
    exp_bits: int = 5  # format=float: exponent bits of weights/activations
    man_bits: int = 10  # format=float: mantissa bits of weights/activations
    rounding: str = "nearest"  # float rounding of weights/activations: nearest | stochastic
    overflow: str = "saturate"  # saturate | inf
    has_inf: bool = True  # False: the top exponent holds numbers (OCP fp8 E4M3)
    error_exp_bits: int | None = None  # errors in another float format (IEEE-style, with inf)
    error_man_bits: int | None = None  # the errors' mantissa bits (with error_exp_bits)
    operand: OperandConfig = field(default_factory=OperandConfig)  # format=scaled: all operands' default
    operands: OperandsConfig = field(default_factory=OperandsConfig)  # format=scaled: per GEMM and operand
    # format=scaled: SQNR, flushed/saturated fractions, scale range per layer and operand into
    # metrics.jsonl at each evaluation, run means into summary.json (observes only: same results)
    telemetry: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam (L2 added to the gradient, torch.optim.Adam) | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # sgd momentum
    nesterov: bool = False  # sgd: Nesterov momentum
    weight_decay: float = 5e-4  # L2 (sgd, adam) or decoupled (adamw) weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw betas
    lr_schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of run
    gamma: float = 0.1  # multistep: lr factor at each milestone
    warmup_steps: int = 0  # warm-up steps: linear from 0 to lr, or constant at warmup_lr
    warmup_lr: float | None = None  # a constant lr during warm-up (CPT's ResNet-110: 0.01)
    decay_all: bool = False  # weight decay on every parameter, BN and biases too (CPT's code)
    # weight decay only on the parameters whose qualified names start with one of these
    # prefixes (e.g. [conv1]: Kipf & Welling's GCN decays its first layer only); null = all
    decay_only: list[str] | None = None
    # low-precision weights (numerics/lowp_optim.py): storage format, how updates reach it, state format
    weight_format: str = "fp32"  # fp32 | bf16 | fp16 | e<E>m<M> | fixed<B>
    update_rounding: str = "nearest"  # nearest | stochastic | kahan
    state_format: str = "fp32"  # momentum / Adam moments: fp32 | bf16 | fp16 | e<E>m<M>
    real_dtype: bool = False  # bf16/fp16 weights as real torch.bfloat16/float16 tensors
    kahan_buffer: str = "weight"  # kahan: compensation stored in the weight format (paper) | fp32
    grad_clip: float | None = None  # clip the gradients' global L2 norm to this (null = no clipping)


@dataclass
class TrainerConfig:
    epochs: int = 30  # run length in epochs (unless trainer.steps is set)
    steps: int | None = None  # total optimizer steps; wins over epochs when set
    batch_size: int = 128  # global training batch (split over trainer.devices)
    drop_last: bool = True  # false: an epoch's last, smaller batch is trained too (CPT's loader)
    eval_batch_size: int = 1000  # evaluation batch (not training cost)
    eval_every: int | None = None  # steps; null = once per epoch
    eval_bits: str = "max"  # max: the schedule's top forward bits | current: the step's (CPT)
    checkpoint_every: int | None = None  # steps; null = at every evaluation
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm progress bar
    threads: int | None = None  # torch CPU threads; null = automatic (shared with other cprec runs)
    # data parallel (cprec/engine/distributed.py, README "Data-parallel training"): processes, one
    # shard of every global batch each; BatchNorm statistics per process unless sync_bn
    devices: int = 1  # data-parallel processes, one shard of every global batch each
    sync_bn: bool = False  # data parallel: BatchNorm statistics over all processes
    dist_timeout_s: int = 300  # a collective waiting longer ends the group (a rank died)


@dataclass
class PrtConfig:
    start_bits: int = 2  # the first bit level the test trains at
    max_bits: int = 16  # the test stops at this many bits at the latest
    # steps_per_bits, smoothing, batch_size: calibrated over 5 seeds (scripts/prt_calibration.py)
    steps_per_bits: int = 20  # training steps at each bit level
    threshold: float = 0.05  # accuracy gain over the level below that marks convergence
    upper_bits: Any = 8  # an int, or "auto": where the gain drops below threshold again
    smoothing: int = 10  # training accuracy averaged over this many last steps of a level
    batch_size: int = 32  # small batches: many noisy steps cost little next to the run
    ladder: list[Any] | None = None  # rungs to test instead of start_bits..max_bits (widths or formats)


@dataclass
class LossScaleConfig:
    """Loss scaling at the error-rounding points (cprec/numerics/loss_scale.py; README "Loss scaling")."""

    name: str = "none"  # none | static | dynamic | adaptive
    scale: float = 1.0  # static: the scale; adaptive: the loss's own scale (where it starts)
    # dynamic (torch.amp.GradScaler's rule): initial scale, x growth_factor after
    # growth_interval clean steps, x backoff_factor (and the step skipped) on overflow
    init_scale: float = 65536.0  # dynamic: the initial scale
    growth_factor: float = 2.0  # dynamic: x this after growth_interval clean steps
    backoff_factor: float = 0.5  # dynamic: x this (and the step skipped) on overflow
    growth_interval: int = 2000  # dynamic: clean steps before the scale grows
    # adaptive (Zhao et al.; PAPERS.md 4): target underflow rate, bounds, recompute period
    target_underflow: float = 1e-3
    # bounds on the scale accumulated down the network and on one layer's factor alpha; null =
    # none beyond alpha >= 1 and the format's largest value (ada-loss's fp16 heuristics: 1024, 16)
    accum_bound: float | None = None  # adaptive: bound on the scale accumulated down the network
    layer_bound: float | None = None  # adaptive: bound on one layer's factor alpha
    update_every: int = 1  # steps between recomputations of the layer scales
    # count underflow/overflow of the errors per layer; null = on whenever loss scaling is on
    telemetry: bool | None = None


@dataclass
class AmpConfig:
    """Real mixed precision (cprec/numerics/amp.py): torch.autocast, and GradScaler for fp16."""

    name: str = "off"  # off | bf16 | fp16
    init_scale: float = 65536.0  # fp16's GradScaler
    growth_interval: int = 2000  # fp16: GradScaler's clean steps before the scale grows


@dataclass
class CostConfig:
    """What hardware would charge beside BitOPs (cprec/hardware/; docs "Cost accounting")."""

    # named devices to model the training time on (h100, a100, b200, mi300x): summary.json's
    # modeled_time_s.<device>; energy_j is always written
    devices: list[str] = field(default_factory=list)


@dataclass
class TrackingConfig:
    """Where logger=mlflow / logger=wandb send a run (engine/loggers.py); never changes its result."""

    # MLflow experiment name; null = the preset's name (experiment=...), else the sweep dir
    # (its path under the output root) for `-m` jobs, else "cprec"
    experiment: str | None = None
    # MLflow tracking URI (sqlite:///..., http://..., file:...) or a folder for a SQLite store
    # (<folder>/mlflow.db, artifacts in <folder>/artifacts); null = <output_root>/mlruns
    mlflow_uri: str | None = None
    wandb_project: str | None = None  # W&B project; null = "cprec"
    wandb_entity: str | None = None  # W&B entity (user or team); null = W&B's default
    wandb_group: str | None = None  # W&B run group; null = the sweep dir for `-m` jobs, else the preset
    # W&B mode: offline | online | disabled; null = $WANDB_MODE if set, else offline (files
    # under <run dir>/wandb, uploaded later with `wandb sync`)
    wandb_mode: str | None = None


@dataclass
class TrainConfig:
    seed: int = 0  # seeds weights, data order, augmentation and stochastic rounding
    resume: str | None = None  # a run directory to continue (its saved overrides are reused)
    output_root: str = "outputs"  # runs land in <output_root>/<command>/...; $CPREC_OUTPUT_ROOT too
    # where metrics go besides metrics.jsonl: none | tensorboard | mlflow | wandb, or a list
    # of them (logger=[tensorboard,mlflow])
    logger: Any = "none"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # logger=mlflow/wandb settings
    # the paper's reported figures for a preset (cprec report shows them beside the runs'):
    # {source: str, metrics: {final_acc | best_acc | relative_cost ...: value}}; null elsewhere
    paper: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    prt: PrtConfig = field(default_factory=PrtConfig)
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    amp: AmpConfig = field(default_factory=AmpConfig)
    cost: CostConfig = field(default_factory=CostConfig)


def register_schemas() -> None:
    """Make the schemas available to Hydra's defaults lists as ``train_schema``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise the one-line ConfigError for ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed)


def require_choice(key: str, value: Any, choices: Any) -> None:
    """``value`` must be one of ``choices`` (a tuple, or a registry's keys)."""
    require(value in choices, key, value, f"choose one of {list(choices)}")


def check_bits(key: str, value: Any) -> None:
    require(isinstance(value, int) and 1 <= value <= 32, key, value, "bits must be in 1..32")


def _positive_or_null(key: str, value: Any, what: str) -> None:
    require(value is None or value > 0, key, value, f"must be a positive {what} or null")


def check_trainer(t: TrainerConfig) -> None:
    require(t.epochs > 0, "trainer.epochs", t.epochs, "must be a positive number of epochs")
    _positive_or_null("trainer.steps", t.steps, "number of steps")
    require(t.batch_size > 0, "trainer.batch_size", t.batch_size, "must be positive")
    require(t.eval_batch_size > 0, "trainer.eval_batch_size", t.eval_batch_size, "must be positive")
    for key in ("eval_every", "checkpoint_every"):
        _positive_or_null(f"trainer.{key}", getattr(t, key), "step count")
    require_choice("trainer.device", t.device, DEVICES)
    require_choice("trainer.eval_bits", t.eval_bits, EVAL_BITS)
    _positive_or_null("trainer.threads", t.threads, "thread count")
    require(isinstance(t.devices, int) and t.devices >= 1, "trainer.devices", t.devices,
            "must be a positive number of data-parallel processes")
    require(t.batch_size >= t.devices, "trainer.batch_size", t.batch_size,
            f"the global batch is split over trainer.devices={t.devices} processes: it needs "
            f"at least one sample per process; use trainer.batch_size={t.devices} or more")
    require(t.dist_timeout_s > 0, "trainer.dist_timeout_s", t.dist_timeout_s, "must be positive seconds")


def check_dataset(d: DatasetConfig) -> None:
    for key in ("train_subset", "test_subset"):
        _positive_or_null(f"dataset.{key}", getattr(d, key), "count")
    require((d.mean is None) == (d.std is None), "dataset.mean", d.mean,
            "set dataset.mean and dataset.std together (or neither: the training set's own)")
    require(d.std is None or all(v > 0 for v in d.std), "dataset.std", d.std, "must be positive")
    require(d.bptt > 0, "dataset.bptt", d.bptt, "must be a positive number of tokens")
    require(d.image_size > 0, "dataset.image_size", d.image_size, "must be a positive pixel count")
    require(d.resize >= d.image_size, "dataset.resize", d.resize,
            f"the evaluation resizes to it, then center-crops dataset.image_size={d.image_size}: "
            f"it must be at least that")
    require(d.workers >= 0, "dataset.workers", d.workers, "must be >= 0 (0: load in the main process)")


def check_model(m: ModelConfig) -> None:
    require(m.hidden > 0, "model.hidden", m.hidden, "must be positive")
    require(m.layers > 0, "model.layers", m.layers, "must be positive")
    require(m.heads > 0, "model.heads", m.heads, "must be positive")
    require(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")


def check_quant(q: QuantConfig) -> None:
    require_choice("quant.format", q.format, QUANT_FORMATS)
    require_choice("quant.kernels", q.kernels, QUANT_KERNELS)
    require(1 <= q.exp_bits <= 8, "quant.exp_bits", q.exp_bits, "must be in 1..8")
    require(0 <= q.man_bits <= 23, "quant.man_bits", q.man_bits, "must be in 0..23")
    require((q.error_exp_bits is None) == (q.error_man_bits is None), "quant.error_exp_bits",
            q.error_exp_bits, "set quant.error_exp_bits and quant.error_man_bits together")
    require(q.error_exp_bits is None or (1 <= q.error_exp_bits <= 8 and 0 <= q.error_man_bits <= 23),
            "quant.error_exp_bits", q.error_exp_bits, "exponent bits in 1..8, mantissa bits in 0..23")
    require_choice("quant.rounding", q.rounding, FLOAT_ROUNDING)
    require_choice("quant.overflow", q.overflow, FLOAT_OVERFLOW)
    require(0 <= q.act_momentum < 1, "quant.act_momentum", q.act_momentum, "must be in [0, 1)")
    require(q.last_bits in (None, "auto") or (isinstance(q.last_bits, int) and 1 <= q.last_bits <= 32),
            "quant.last_bits", q.last_bits, "null, 'auto' or an integer in 1..32")


def check_prt(p: PrtConfig) -> None:
    check_bits("prt.start_bits", p.start_bits)
    check_bits("prt.max_bits", p.max_bits)
    require(p.start_bits < p.max_bits, "prt.start_bits", p.start_bits,
            f"must be below prt.max_bits={p.max_bits}")
    require(p.steps_per_bits > 0, "prt.steps_per_bits", p.steps_per_bits, "must be positive")
    require(p.threshold > 0, "prt.threshold", p.threshold, "must be a positive accuracy gain")
    require(0 < p.smoothing <= p.steps_per_bits, "prt.smoothing", p.smoothing,
            f"must be in 1..prt.steps_per_bits={p.steps_per_bits}")
    require(p.batch_size > 0, "prt.batch_size", p.batch_size, "must be positive")
    require(p.upper_bits == "auto" or (isinstance(p.upper_bits, int) and 1 <= p.upper_bits <= 32),
            "prt.upper_bits", p.upper_bits, "an integer in 1..32 or 'auto'")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def is_result_neutral(key: str) -> bool:
    """A dotted config key under one of RESULT_NEUTRAL_KEYS (``paper.source`` too)."""
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL_KEYS)


def check_same_run(saved: dict, current: dict, run_dir: Any) -> None:
    """Refuse to continue a checkpoint under a config that computes something else.

    A key the saved config lacks (added to cprec after the checkpoint was written) counts
    as its default: a new option's default keeps what cprec computed before it existed."""
    a = {**_flatten(asdict(TrainConfig())), **_flatten(saved)}
    b = _flatten(current)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not is_result_neutral(k)]
    if diff:
        # in the user's words: a group chosen on the command line (schedule=static) before
        # the keys that choice sets (schedule.kind)
        groups = [k for k in diff if k.endswith(".name") and k.count(".") == 1]
        k = (groups or diff)[0]
        was, now = (f"{k[:-5]}={a.get(k)}", f"{k[:-5]}={b.get(k)}") if groups else (f"{k}={a.get(k)!r}",
                                                                                 repr(b.get(k)))
        raise CprecError(f"{run_dir} holds a run with {was}, not {now}; resume it "
                         f"with its own settings (cprec train resume={run_dir}) or use a new run dir")
