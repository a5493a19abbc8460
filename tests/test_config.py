"""Config: every group option composes and builds; defaults are stated once; neutral keys agree."""

from __future__ import annotations

import pytest
import torch

from cprec.config import TrainConfig
from cprec.data import DatasetInfo
from cprec.errors import ConfigError
from cprec.models import build_model
from cprec.paths import config_dir
from cprec.quant import build_quantized, quant_layers
from cprec.schedules import build_schedule

CONF = __import__("pathlib").Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_are_populated() -> None:
    """The names DESIGN.md promises exist as config options."""
    assert set(options("model")) >= {"mlp", "lenet", "resnet20", "resnet38", "resnet56", "resnet74",
                                     "resnet110", "mobilenetv2"}
    assert set(options("dataset")) == {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100",
                                       "synthetic"}
    assert {"fp32", "static", "cpt_cosine", "deficit"} <= set(options("schedule"))
    assert len([s for s in options("schedule") if s.startswith("cpt_")]) == 12


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_builds(compose, name: str) -> None:
    """Every model option composes under its own name and maps a 3x32x32 batch to 10 logits."""
    cfg = compose([f"model={name}"])
    assert cfg.model.name == name
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
    """Every quant option converts the default model and leaves it with quantized layers."""
    cfg = compose([f"quant={name}"])
    model, _ = build_quantized(build_model(cfg.model, DatasetInfo("x", 1, 8, 10)), cfg.quant, 0)
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
])
def test_validation_names_the_key(compose, override: str, key: str) -> None:
    """An out-of-range value raises a ConfigError that names the offending key."""
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert e.value.key == key and key in str(e.value)


# -- defaults stated once -----------------------------------------------------------------
SCHEMAS = {"model": "ModelConfig", "dataset": "DatasetConfig", "schedule": "ScheduleConfig",
           "quant": "QuantConfig", "optim": "OptimConfig", "prt": "PrtConfig"}
IDENTITY_KEYS = {"name", "kind", "format", "exp_bits", "man_bits"}  # what defines an option


def _resolved(group: str, name: str) -> dict:
    """The values a group option ends with: schema defaults, then its parents, then itself."""
    import dataclasses

    import yaml

    from cprec import config

    raw = yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}
    values = {f.name: getattr(getattr(config, SCHEMAS[group])(), f.name)
              for f in dataclasses.fields(getattr(config, SCHEMAS[group]))}
    for parent in raw.get("defaults", []):
        if parent != "_self_":
            values.update(_resolved(group, parent))
    return {**values, **{k: v for k, v in raw.items() if k != "defaults"}}


@pytest.mark.parametrize("group, name", [(g, n) for g in SCHEMAS for n in options(g)])
def test_yaml_states_only_what_differs(group: str, name: str) -> None:
    """A group file sets no value its schema default (or the file it inherits) already has."""
    import yaml

    raw = yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}
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


@pytest.mark.parametrize("name", options("experiment"))
def test_presets_state_only_model_and_dataset(name: str) -> None:
    """Every experiment preset is the shared recipe plus a model and a dataset."""
    import yaml

    raw = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    assert set(raw) == {"defaults"}
    entries = [next(iter(e)) if isinstance(e, dict) else e for e in raw["defaults"]]
    assert entries == ["/recipe/cpt_cifar", "override /model", "override /dataset"]


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
    from cprec.report import IGNORED_KEYS

    assert IGNORED_KEYS == {"seed", *RESULT_NEUTRAL_KEYS}
