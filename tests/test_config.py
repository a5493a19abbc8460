"""Config: every group option composes and builds; defaults are stated once; neutral keys agree."""

from __future__ import annotations

import pytest
import torch

from cprec.config import TrainConfig
from cprec.errors import ConfigError
from cprec.models import LANGUAGE_MODELS, build_model
from cprec.models.gnn import GRAPH_MODELS, Graph
from cprec.paths import config_dir
from cprec.precision.schedules import build_schedule
from cprec.quant import build_quantized, quant_layers
from cprec.tasks.base import DatasetInfo

CONF = __import__("pathlib").Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_are_populated() -> None:
    """The names DESIGN.md promises exist as config options."""
    assert set(options("model")) >= {"mlp", "lenet", "resnet20", "resnet38", "resnet56", "resnet74",
                                     "resnet110", "mobilenetv2", "torchvision"}
    assert set(options("dataset")) == {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100",
                                       "synthetic", "tiny_shakespeare", "ptb", "wikitext2", "wikitext103",
                                       "imagefolder", "cora", "citeseer"}
    assert {"fp32", "static", "cpt_cosine", "deficit"} <= set(options("schedule"))
    assert len([s for s in options("schedule") if s.startswith("cpt_") and s != "cpt_ldp"]) == 12
    assert {"ldp", "cpt_ldp"} <= set(options("schedule"))
    assert set(options("schedule")) >= {f"{p}_{s}" for p in ("cos", "linear", "exp", "demon")
                                        for s in ("growth", "decay")}  # Better Schedules' names


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_builds(compose, name: str) -> None:
    """Every model option composes under its own name and maps a 3x32x32 batch to 10 logits
    (a language model: windows of 8 tokens to 10 logits per token; a graph model: 3 nodes'
    features to their 10 logits)."""
    cfg = compose([f"model={name}"])
    assert cfg.model.name == name
    if name in LANGUAGE_MODELS:
        model = build_model(cfg.model, DatasetInfo("tiny_shakespeare", 1, 8, 10))
        assert model(torch.zeros(2, 8, dtype=torch.long))[0].shape == (2, 8, 10)
        return
    if name in GRAPH_MODELS:
        model = build_model(cfg.model, DatasetInfo("cora", 5, 1, 10))
        assert model(torch.randn(3, 5), Graph(torch.tensor([[0, 1], [1, 0]]), 3)).shape == (3, 10)
        return
    model = build_model(cfg.model, DatasetInfo("x", 3, 32, 10))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", options("schedule"))
def test_every_schedule_option_builds(compose, name: str) -> None:
    """Every schedule option resolves for a 1000-step run with bits in 1..32 at start, middle, end."""
    cfg = compose([f"schedule={name}", "schedule.bounds=config"])
    sched = build_schedule(cfg.schedule, 1000)
    for step in (0, 500, 999):
        fw, bw = sched.bits_at(step)
        assert 1 <= fw <= 32 and 1 <= bw <= 32


@pytest.mark.parametrize("name", options("quant"))
def test_every_quant_option_converts(compose, name: str) -> None:
    """Every quant option converts the default model and leaves it with quantized layers (a
    scaled recipe with a static schedule; DeepSeek-V3's 128-wide tiles an MLP as wide)."""
    scaled = (CONF / "quant" / f"{name}.yaml").read_text().count("format: scaled")
    tiled = ["model=mlp", "model.hidden=128"] if name == "fp8_blockwise" else []
    cfg = compose([f"quant={name}", *(["schedule=static"] if scaled else []), *tiled])
    info = DatasetInfo("x", 2, 8, 10) if tiled else DatasetInfo("x", 1, 8, 10)
    model, _ = build_quantized(build_model(cfg.model, info), cfg.quant, 0)
    assert len(quant_layers(model)) > 0


@pytest.mark.parametrize("name", options("optim") + options("dataset") + options("experiment"))
def test_other_options_compose(compose, name: str) -> None:
    """Every optim, dataset and experiment option composes into a typed TrainConfig."""
    group = next(g for g in ("optim", "dataset", "experiment") if name in options(g))
    assert isinstance(compose([f"{group}={name}"]), TrainConfig)


def test_cpt_recipe_preset(compose) -> None:
    """experiment=cifar10_resnet74 sets up the paper's run (PAPERS.md 1, official recipe)."""
    cfg = compose(["experiment=cifar10_resnet74"])
    assert (cfg.model.name, cfg.dataset.name, cfg.schedule.name) == ("resnet74", "cifar10", "cpt_cosine")
    assert (cfg.trainer.steps, cfg.trainer.batch_size) == (64000, 128)
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.lr_schedule) == ("sgd", 0.1, 0.9, 1e-4, "multistep")
    assert o.milestones == [0.5, 0.75]
    assert (cfg.schedule.min_bits, cfg.schedule.max_bits, cfg.schedule.bw_bits) == (3, 8, 8)
    # as CPT's code runs it (issue 11): pinned bounds, evaluation at the precision just trained,
    # decay on every parameter, raw-image padding with CPT's constants, the last batch kept
    assert cfg.schedule.bounds == "config" and cfg.trainer.eval_bits == "current"
    assert cfg.trainer.eval_every == 390 and cfg.trainer.drop_last is False
    assert o.decay_all is True and (o.warmup_steps, o.warmup_lr) == (0, None)
    d = cfg.dataset
    assert d.pad_before_normalize and d.mean == [0.4914, 0.4822, 0.4465] and d.std == [0.2023, 0.1994, 0.2010]
    assert cfg.quant.zero_exact is False and compose(["experiment=cifar100_mobilenetv2"]).model.name == \
        "cpt_mobilenetv2"
    assert cfg.paper["results"]["3-8/8"] == {"vs": "8/8", "cost_saving": 36.67}
    deep = compose(["experiment=cifar100_resnet110"])
    assert (deep.optim.warmup_steps, deep.optim.warmup_lr) == (400, 0.01)
    assert deep.paper["results"]["3-8/8"] == {"vs": "8/8", "acc_gain": 0.73, "cost_saving": 36.67}


def test_contract_keys_exist(compose) -> None:
    """The config keys DESIGN.md names as a contract exist, with the documented defaults."""
    cfg = compose()
    for key in ("epochs", "steps", "batch_size", "eval_every", "checkpoint_every", "device"):
        assert hasattr(cfg.trainer, key)
    for key in ("bits", "min_bits", "max_bits", "bw_bits", "cycles", "bounds"):
        assert hasattr(cfg.schedule, key)
    for key in ("start_bits", "max_bits", "steps_per_bits", "threshold", "upper_bits"):
        assert hasattr(cfg.prt, key)
    assert cfg.quant.quantize_first is True and cfg.quant.quantize_last is False
    assert cfg.dataset.name == "digits" and cfg.schedule.name == "cpt_cosine"


@pytest.mark.parametrize("override, key", [
    ("schedule.bits=0", "schedule.bits"),
    ("schedule.min_bits=9", "schedule.min_bits"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("trainer.device=tpu", "trainer.device"),
    ("schedule.flip=diagonal", "schedule.flip"),
    ("schedule.cycle_length=ceil", "schedule.cycle_length"),
    ("schedule.ties=up", "schedule.ties"),
    ("schedule.bw_min_bits=9", "schedule.bw_min_bits"),
    ("schedule.bw_min_bits=0", "schedule.bw_min_bits"),
])
def test_validation_names_the_key(compose, override: str, key: str) -> None:
    """An out-of-range value raises a ConfigError that names the offending key."""
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert e.value.key == key and key in str(e.value)


# -- defaults stated once -----------------------------------------------------------------
SCHEMAS = {"model": "ModelConfig", "dataset": "DatasetConfig", "schedule": "ScheduleConfig",
           "quant": "QuantConfig", "optim": "OptimConfig", "prt": "PrtConfig",
           "loss_scale": "LossScaleConfig", "amp": "AmpConfig"}
IDENTITY_KEYS = {"name", "kind", "format", "exp_bits", "man_bits"}  # what defines an option


def _own(group: str, name: str) -> dict:
    """A group option's own values plus ``defaults``: its parents in the group (a file in the
    global package, as dataset=cora, holds its group's values under the group's key and may
    override other groups' options: those are not parents)."""
    import yaml

    text = (CONF / group / f"{name}.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    if text.startswith("# @package _global_"):
        parents = [d for d in raw.get("defaults", []) if isinstance(d, str)]
        raw = {**raw.get(group, {}), "defaults": parents}
    return raw


def _resolved(group: str, name: str) -> dict:
    """The values a group option ends with: schema defaults, then its parents, then itself."""
    import dataclasses

    from cprec import config

    raw = _own(group, name)
    values = {f.name: getattr(getattr(config, SCHEMAS[group])(), f.name)
              for f in dataclasses.fields(getattr(config, SCHEMAS[group]))}
    for parent in raw.get("defaults", []):
        if parent != "_self_":
            values.update(_resolved(group, parent))
    return {**values, **{k: v for k, v in raw.items() if k != "defaults"}}


@pytest.mark.parametrize("group, name", [(g, n) for g in SCHEMAS for n in options(g)])
def test_yaml_states_only_what_differs(group: str, name: str) -> None:
    """A group file sets no value its schema default (or the file it inherits) already has."""
    raw = _own(group, name)
    inherited = {}
    for parent in raw.get("defaults", []):
        if parent != "_self_":
            inherited.update(_resolved(group, parent))
    if not inherited:
        import dataclasses

        from cprec import config

        schema = getattr(config, SCHEMAS[group])
        inherited = {f.name: getattr(schema(), f.name) for f in dataclasses.fields(schema)}
    repeated = [k for k, v in raw.items()
                if k not in ("defaults", *IDENTITY_KEYS) and inherited.get(k) == v]
    assert repeated == [], f"{group}/{name}.yaml repeats defaults: {repeated}"


def test_train_yaml_repeats_no_schema_section() -> None:
    """train.yaml holds the defaults list, output_root's env lookup and Hydra settings only."""
    import yaml

    raw = yaml.safe_load((CONF / "train.yaml").read_text())
    assert set(raw) == {"defaults", "output_root", "hydra"}


# what a preset may set besides its recipe, model and dataset: the values its paper's runs
# changed per model (Better Schedules' MobileNetV2: forward 4..8 bits, lr 0.03)
# (CPT's ResNet-110: a 400-step warm-up at lr 0.01)
# (the ImageNet presets: which torchvision model)
PRESET_EXTRAS = {"cpt_cifar": {"optim": {"warmup_steps", "warmup_lr"}},
                 "cpt_imagenet": {"model": {"arch"}},
                 "bps_cifar": {"schedule": {"min_bits", "max_bits"}, "optim": {"lr"}},
                 "bps_critical": {}, "cpt_ptb": {}, "char_lm": {}, "kipf_gcn": {}}


# search presets (search_*: an Optuna study, tests/cli/test_search.py) are no paper's runs
@pytest.mark.parametrize("name", [n for n in options("experiment") if not n.startswith("search_")])
def test_presets_state_only_model_and_dataset(name: str) -> None:
    """Every experiment preset is its paper's shared recipe (bps_* presets: bps_cifar, the
    others cpt_cifar) plus a model and a dataset, and at most the per-model values its
    recipe allows; CPT presets carry the paper's figures for them (ImageNet: ResNet-18 only)."""
    import yaml

    raw = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    recipe = raw["defaults"][0].removeprefix("/recipe/")
    if recipe in ("cpt_cifar", "cpt_ptb") or name == "imagenet_resnet18":
        assert set(raw.pop("paper")) == {"source", "results"}
    entries = [next(iter(e)) if isinstance(e, dict) else e for e in raw["defaults"]]
    assert entries == [f"/recipe/{recipe}", "override /model", "override /dataset"]
    extras = {k: set(v) for k, v in raw.items() if k != "defaults"}
    allowed = PRESET_EXTRAS[recipe]
    assert all(k in allowed and v <= allowed[k] for k, v in extras.items()), extras


@pytest.mark.parametrize("name, model, lo, lr", [("bps_cifar10_resnet74", "resnet74", 3, 0.1),
                                                 ("bps_cifar100_mobilenetv2", "cpt_mobilenetv2", 4, 0.03)])
def test_better_schedules_presets(compose, name: str, model: str, lo: int, lr: float) -> None:
    """experiment=bps_* sets up the Better Schedules authors' CIFAR runs (run_train.py): 8
    cycles, pinned bounds, 64k steps, SGD with wd 1e-4; a swept schedule keeps all of it."""
    for extra, schedule in (([], "cos_growth"), (["schedule=demon_decay"], "demon_decay")):
        cfg = compose([f"experiment={name}", *extra])
        s, o = cfg.schedule, cfg.optim
        assert (cfg.model.name, s.name, s.cycles, s.bounds) == (model, schedule, 8, "config")
        assert (s.min_bits, s.max_bits, s.bw_bits, s.bw_min_bits, s.cycle_length) == \
            (lo, 8, 8, None, "floor_plus_one")
        assert (cfg.trainer.steps, cfg.trainer.batch_size, cfg.trainer.eval_every) == (64000, 128, 390)
        assert (o.name, o.lr, o.momentum, o.weight_decay, o.milestones) == ("sgd", lr, 0.9, 1e-4, [0.5, 0.75])
        # their train.py is CPT's: the same data pipeline, evaluation and weight decay
        assert (cfg.trainer.eval_bits, cfg.trainer.drop_last, o.decay_all) == ("current", False, True)
        assert cfg.quant.zero_exact is False  # their quantizer's grid
        assert cfg.dataset.pad_before_normalize and cfg.dataset.std == [0.2023, 0.1994, 0.2010]


def test_result_neutral_keys_agree_with_the_job_names() -> None:
    """Hydra's exclude_keys (sweep job names) are RESULT_NEUTRAL_KEYS plus Hydra's own places."""
    import yaml

    from cprec.config import RESULT_NEUTRAL_KEYS

    raw = yaml.safe_load((CONF / "train.yaml").read_text())
    excluded = raw["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    assert set(excluded) - {"hydra.run.dir", "hydra.sweep.dir", "hydra.launcher.n_jobs"} == \
        set(RESULT_NEUTRAL_KEYS)


def test_resume_allows_neutral_changes_and_refuses_the_rest(compose, tmp_path) -> None:
    """A resumed run may change checkpoint_every or the device, not the learning rate."""
    from dataclasses import asdict

    from cprec.config import check_same_run
    from cprec.errors import CprecError

    saved = asdict(compose())
    check_same_run(saved, asdict(compose(["trainer.checkpoint_every=5", "trainer.device=cpu",
                                          "logger=tensorboard", "trainer.progress=false"])), tmp_path)
    with pytest.raises(CprecError, match="optim.lr=0.1, not 0.2"):
        check_same_run(saved, asdict(compose(["optim.lr=0.2"])), tmp_path)
    # a run saved before a key existed computed with its default: resumable unless changed
    del saved["trainer"]["eval_bits"], saved["schedule"]["cycle_length"]
    check_same_run(saved, asdict(compose()), tmp_path)
    with pytest.raises(CprecError, match="trainer.eval_bits='max', not 'current'"):
        check_same_run(saved, asdict(compose(["trainer.eval_bits=current"])), tmp_path)


def test_resume_takes_a_key_added_since_the_checkpoint_as_its_default(compose, tmp_path) -> None:
    """A checkpoint written before an option existed (here quant.zero_exact) resumes under
    the option's default, which computes what cprec computed before it; not under another."""
    from dataclasses import asdict

    from cprec.config import check_same_run
    from cprec.errors import CprecError

    saved = asdict(compose())
    del saved["quant"]["zero_exact"]
    check_same_run(saved, asdict(compose()), tmp_path)
    with pytest.raises(CprecError, match="quant.zero_exact=True, not False"):
        check_same_run(saved, asdict(compose(["quant.zero_exact=false"])), tmp_path)


def test_report_ignores_exactly_the_neutral_keys_and_the_seed() -> None:
    """`cprec report` groups by every override except the seed and RESULT_NEUTRAL_KEYS."""
    from cprec.config import RESULT_NEUTRAL_KEYS
    from cprec.report.tables import IGNORED_KEYS

    assert IGNORED_KEYS == {"seed", *RESULT_NEUTRAL_KEYS}


def test_presets_keep_the_paper_bounds_beside_a_prt_result(compose, tmp_path) -> None:
    """A PRT result left in outputs/prt for the same model and dataset does not replace a
    preset's pinned 3..8 bounds (it would with schedule.bounds=auto)."""
    import json

    from cprec.engine.build import plan_run
    from cprec.paths import prt_result_path

    path = prt_result_path(str(tmp_path), "resnet74", "cifar10")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"lower_bits": 5, "upper_bits": 7, "model": "resnet74",
                                "dataset": "cifar10"}))
    preset = plan_run(compose(["experiment=cifar10_resnet74", f"output_root={tmp_path}"]))
    assert preset.schedule.fw_range == (3, 8) and preset.bounds_source == "config"
    auto = plan_run(compose(["experiment=cifar10_resnet74", f"output_root={tmp_path}",
                             "schedule.bounds=auto"]))
    assert auto.schedule.fw_range == (5, 7)


def test_critical_period_probe_preset(compose) -> None:
    """experiment=bps_critical_cifar10_resnet74 is crit_learn.py's run: K = 16000 steps at 3 bits
    on top of 256k steps at 8, the lr schedule starting after them, no weight decay."""
    from cprec.engine.build import plan_run

    cfg = compose(["experiment=bps_critical_cifar10_resnet74"])
    assert (cfg.schedule.kind, cfg.schedule.deficit_steps, cfg.optim.weight_decay) == ("deficit", 16000, 0.0)
    plan = plan_run(cfg)
    assert (plan.total_steps, plan.lr_start) == (272000, 16000)
    assert [plan.schedule.bits_at(s) for s in (0, 15999, 16000)] == [(3, 8), (3, 8), (8, 8)]
