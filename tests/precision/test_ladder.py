"""Precision ladders: schedules over rungs (widths or formats), the stepped schedule, the
layers that switch recipe with the rung, and the refusals of what a ladder cannot mean."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import OptimConfig, QuantConfig, ScheduleConfig, TrainConfig
from cprec.errors import ConfigError, CprecError
from cprec.hardware.formats import layer_formats
from cprec.numerics.optim import lr_factor
from cprec.operand_config import OperandConfig
from cprec.precision.ladder import Ladder, parse_ladder, steps_per_format
from cprec.precision.schedules import build_schedule
from cprec.quant import quantize_model, set_precision
from cprec.quant.quantizers import ScaledQuantizer
from cprec.quant.recipe import LayerRecipe
from cprec.quant.recipes import ladder_recipes
from cprec.quant.scaled import fake_quantize
from cprec.validate import validate
from tests.helpers import FAST, read_summary, resumed_and_whole, run_cli

FORMATS = ["mxfp4", "mxfp6_e2m3", "mxfp8"]


def cyclic(**kw) -> ScheduleConfig:
    return ScheduleConfig(name="cpt", kind="cyclic", **kw)


@pytest.mark.parametrize("profile,shape", itertools.product(["cosine", "linear", "exp", "rex"],
                                                            ["growth", "fall_rise", "falling", "rise_fall"]))
@pytest.mark.parametrize("lo,hi", [(3, 8), (2, 8), (4, 6)])
def test_ladder_of_consecutive_widths_is_the_bits_schedule(profile: str, shape: str, lo: int,
                                                          hi: int) -> None:
    """Exactly, ties included (cosine 2..8 at z = 1/3 is a true .5): for every cycle rule."""
    for cycles, steps, rule in [(3, 97, "floor"), (8, 200, "floor_plus_one"), (1, 50, "floor")]:
        kw = dict(profile=profile, shape=shape, cycles=cycles, cycle_length=rule)
        bits = build_schedule(cyclic(min_bits=lo, max_bits=hi, **kw), steps)
        rungs = build_schedule(cyclic(ladder=list(range(lo, hi + 1)), **kw), steps)
        assert [rungs.bits_at(t) for t in range(steps)] == [bits.bits_at(t) for t in range(steps)]


def test_other_kinds_over_a_ladder_of_widths() -> None:
    deficit = dict(kind="deficit", deficit_steps=30)
    a = build_schedule(ScheduleConfig(name="d", min_bits=3, max_bits=8, **deficit), 100)
    b = build_schedule(ScheduleConfig(name="d", ladder=[3, 4, 5, 6, 7, 8], **deficit), 100)
    assert [a.bits_at(t) for t in range(100)] == [b.bits_at(t) for t in range(100)]
    static = build_schedule(ScheduleConfig(name="s", kind="static", ladder=[6]), 10)
    assert {static.bits_at(t) for t in range(10)} == {(6, 8)}


def test_a_ladder_of_formats_moves_over_the_same_positions() -> None:
    """[mxfp4, mxfp6_e2m3, mxfp8] sits at position p where the widths 4..6 sit at 4 + p."""
    steps = 120
    kw = dict(cycles=5, profile="cosine")
    positions = build_schedule(cyclic(min_bits=4, max_bits=6, **kw), steps)
    formats = build_schedule(cyclic(ladder=FORMATS, **kw), steps)
    widths = (4, 6, 8)
    assert [formats.bits_at(t)[0] for t in range(steps)] == \
        [widths[positions.bits_at(t)[0] - 4] for t in range(steps)]
    counts = steps_per_format(formats, steps)["forward"]
    assert sum(counts.values()) == steps and set(counts) == set(FORMATS)


def test_the_errors_ladder_cycles_along_its_own_rungs() -> None:
    steps, kw = 64, dict(cycles=4)
    both = build_schedule(cyclic(ladder=[4, 6, 8], bw_ladder=[6, 8], **kw), steps)
    one = build_schedule(cyclic(min_bits=6, max_bits=7, **kw), steps)  # two levels, as [6, 8]
    assert [both.bits_at(t)[1] for t in range(steps)] == [(6, 8)[one.bits_at(t)[0] - 6] for t in range(steps)]
    assert both.bw_range == (6, 8)
    held = build_schedule(cyclic(ladder=[4, 6, 8], bw_bits=8, **kw), steps)
    assert {held.bits_at(t)[1] for t in range(steps)} == {8}


def test_stepped_climbs_at_its_fractions() -> None:
    s = build_schedule(ScheduleConfig(name="st", kind="stepped", ladder=[4, 6, 8], steps_at=[0.25, 0.8]), 100)
    assert s.switch_steps == (25, 80)
    assert [s.bits_at(t)[0] for t in (0, 24, 25, 79, 80, 99)] == [4, 4, 6, 6, 8, 8]
    plain = build_schedule(ScheduleConfig(name="st", kind="stepped", steps_at=[0.5], min_bits=4), 10)
    assert [plain.bits_at(t)[0] for t in range(10)] == [4] * 5 + [8] * 5


@pytest.mark.parametrize("steps", [100, 333, 1000])
def test_before_lr_decay_climbs_where_the_lr_first_decays(steps: int) -> None:
    optim = OptimConfig(milestones=[0.3, 0.75])
    s = build_schedule(ScheduleConfig(name="st", kind="stepped", ladder=[4, 6, 8], before_lr_decay=True),
                       steps, lr_milestones=optim.milestones)
    lr = [lr_factor(t, steps, optim) for t in range(steps)]
    decays = [t for t in range(1, steps) if lr[t] < lr[t - 1]]
    assert list(s.switch_steps) == decays
    climbs = [t for t in range(1, steps) if s.bits_at(t)[0] > s.bits_at(t - 1)[0]]
    assert climbs == decays


def test_bounds_keep_the_rungs_within_them() -> None:
    s = build_schedule(cyclic(ladder=[3, 4, 6, 8], cycles=2), 40, bounds=(4, 8))
    assert s.ladder == (4, 6, 8) and s.fw_range == (4, 8)
    with pytest.raises(ConfigError, match="no rung lies within"):
        build_schedule(cyclic(ladder=[3, 4], cycles=2), 40, bounds=(6, 8))


def test_a_saved_ladder_schedule_reads_back() -> None:
    from cprec.precision.schedules import PrecisionSchedule

    s = build_schedule(cyclic(ladder=FORMATS, cycles=3), 60)
    back = PrecisionSchedule.from_spec(json.loads(json.dumps(s.spec())))
    assert back == s and back.rung_name(6) == "mxfp6_e2m3"
    assert "ladder" not in build_schedule(cyclic(cycles=3), 60).spec()  # no ladder: as before


def scaled_quant(base: str = "mxfp8_e4m3") -> QuantConfig:
    return QuantConfig(format="scaled", operand=OperandConfig(format=base))


def ladder_layer(base: str = "mxfp8_e4m3") -> tuple[nn.Sequential, nn.Linear]:
    layer = nn.Linear(64, 48)
    recipes = ladder_recipes(scaled_quant(base), parse_ladder(FORMATS, "ladder"), None)
    model = nn.Sequential(layer)
    quantize_model(model, ScaledQuantizer(LayerRecipe.uniform(base), rungs=recipes),
                   quantize_first=True, quantize_last=True)
    return model, layer


@pytest.mark.parametrize("fw,fmt", [(4, "mxfp4"), (6, "mxfp6_e2m3"), (8, "mxfp8_e4m3")])
def test_a_layer_on_a_rung_runs_its_format_forward_and_keeps_the_recipes_gradients(fw: int, fmt: str) -> None:
    torch.manual_seed(fw)
    model, layer = ladder_layer()
    x = torch.randn(32, 64, requires_grad=True)
    dy = torch.randn(32, 48)
    w = layer.weight.detach().clone()
    set_precision(model, fw, 8)
    y = model(x)
    y.backward(dy)
    q = fake_quantize
    assert torch.equal(y, F.linear(q(x.detach(), fmt, axis=1), q(w, fmt, axis=1), layer.bias))
    # the input gradient: dY in the recipe's MXFP8, W at the rung, both along the outputs
    assert torch.equal(x.grad, q(dy, "mxfp8_e4m3", axis=1) @ q(w, fmt, axis=0))


def test_the_energy_model_charges_each_rung_its_format() -> None:
    quant = scaled_quant()
    rungs = ladder_recipes(quant, parse_ladder(FORMATS, "ladder"), None)
    fw, bw = layer_formats(quant, 4, 8, rungs)
    assert (fw.kind, fw.bits, fw.exp, fw.man, fw.scale_bits) == ("float", 4, 2, 1, 8 / 32)
    assert (bw.bits, bw.exp, bw.man) == (8, 4, 3)
    assert layer_formats(quant, 6, 8, rungs)[0].bits == 6


def config(quant: str = "scaled", **schedule) -> TrainConfig:
    cfg = TrainConfig(schedule=ScheduleConfig(**{"name": "x", "kind": "cyclic", **schedule}))
    cfg.quant = scaled_quant() if quant == "scaled" else QuantConfig(format=quant)
    return cfg


@pytest.mark.parametrize("schedule,quant,words", [
    (dict(ladder=[]), "scaled", "empty ladder"),
    (dict(ladder=[4, "mxfp8"]), "scaled", "never a mix"),
    (dict(ladder=["mxfp9"]), "scaled", "unknown format"),
    (dict(ladder=["fp8_e4m3_delayed"]), "scaled", "delayed-scaling"),
    (dict(ladder=["mxfp8", "mxfp4"]), "scaled", "rise strictly"),
    (dict(ladder=[4, 4, 8]), "fixed", "rise strictly"),
    (dict(ladder=[0, 8]), "fixed", "1..32"),
    (dict(ladder=FORMATS), "fixed", "quant=mxfp8"),
    (dict(ladder=[4, 8]), "scaled", "quant=fixed"),
    (dict(ladder=[4, 8]), "float", "quant=fixed"),
    (dict(kind="ldp", ladder=[4, 8]), "fixed", "step size"),
    (dict(kind="static", ladder=[4, 8]), "fixed", "one rung"),
    (dict(bw_ladder=[4, 8]), "fixed", "schedule.ladder too"),
    (dict(ladder=[4, 8], bw_ladder=FORMATS), "fixed", "quant=mxfp8"),
    (dict(ladder=[4, 8], bw_min_bits=4), "fixed", "bw_ladder"),
    (dict(kind="stepped", ladder=[4, 8], steps_at=[1.2]), "fixed", "(0, 1)"),
    (dict(kind="stepped", ladder=[4, 8], steps_at=[0.0]), "fixed", "(0, 1)"),
    (dict(kind="stepped", ladder=[4, 6, 8], steps_at=[0.6, 0.4]), "fixed", "rising"),
    (dict(kind="stepped", ladder=[4, 6, 8], steps_at=[0.5]), "fixed", "2 fraction"),
    (dict(kind="static", steps_at=[0.5]), "fixed", "only schedule=stepped"),
    (dict(kind="stepped", ladder=[4, 8], bw_ladder=[4, 6, 8], steps_at=[0.5]), "fixed", "1 or 2 rungs"),
])
def test_what_a_ladder_cannot_mean_is_one_line(schedule: dict, quant: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        validate(config(quant, **schedule))


def test_before_lr_decay_needs_enough_milestones() -> None:
    cfg = config("fixed", kind="stepped", ladder=[4, 6, 8], before_lr_decay=True)
    cfg.optim.milestones = [0.5]
    with pytest.raises(ConfigError, match="at least 2"):
        validate(cfg)
    cfg.optim.milestones, cfg.optim.lr_schedule = [0.5, 0.75], "cosine"
    with pytest.raises(ConfigError, match="multistep"):
        validate(cfg)


def test_a_run_too_short_for_its_steps_is_refused() -> None:
    with pytest.raises(ConfigError, match="every rung needs steps"):
        build_schedule(ScheduleConfig(name="st", kind="stepped", ladder=[4, 6, 8], steps_at=[0.1, 0.15]), 5)


def test_parse_keeps_widths_and_names() -> None:
    ladder = parse_ladder(["nvfp4", "mxfp6_e3m2", "mxfp8", "bf16"], "k")
    assert ladder == Ladder(("nvfp4", "mxfp6_e3m2", "mxfp8", "bf16")) and ladder.widths == (4, 6, 8, 16)
    assert ladder.cut(5, 8).rungs == ("mxfp6_e3m2", "mxfp8") and parse_ladder(None, "k") is None


@pytest.mark.slow
def test_cli_trains_previews_and_range_tests_over_a_ladder_of_formats(tmp_path) -> None:
    """CPT over formats end to end: the run trains each rung (metrics follow the schedule,
    summary counts the steps), `cprec schedule` names the rungs, `cprec prt` over the ladder
    writes its own result and a CPT run over the ladder takes its rungs from it."""
    ladder = "schedule.ladder=[mxfp4,mxfp6_e2m3,mxfp8]"
    common = [*FAST, "quant=mxfp8", "schedule=cpt_cosine", ladder, "output_root=out"]
    r = run_cli(["schedule", *common, "hydra.run.dir=sched"], tmp_path)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "sched" / "schedule.csv").read_text().splitlines()
    assert rows[0] == "step,bits_fw,bits_bw,format_fw,format_bw" and len(rows) == 25
    names = {row.split(",")[3] for row in rows[1:]}
    assert names == {"mxfp4", "mxfp6_e2m3", "mxfp8"}
    r = run_cli(["train", *common, "hydra.run.dir=run"], tmp_path)
    assert r.returncode == 0, r.stderr
    summary = read_summary(tmp_path / "run")
    csv_counts: dict[str, int] = {}
    for row in rows[1:]:
        csv_counts[row.split(",")[3]] = csv_counts.get(row.split(",")[3], 0) + 1
    assert summary["steps_per_format"] == {"forward": csv_counts}
    assert summary["bits_fw_min"] == 4 and summary["bits_fw_max"] == 8 and summary["energy_j"] > 0
    r = run_cli(["prt", "quant=mxfp8", "model=mlp", "prt.ladder=[mxfp4,mxfp6_e2m3,mxfp8]",
                 "prt.steps_per_bits=4", "prt.smoothing=2", "prt.threshold=0.001", "output_root=out"],
                tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "out" / "prt" / "mlp-digits.formats.json").read_text())
    assert result["ladder"] == FORMATS and result["upper_format"] == "mxfp8"
    r = run_cli(["train", *common, "hydra.run.dir=cut"], tmp_path)
    assert r.returncode == 0, r.stderr
    cut = read_summary(tmp_path / "cut")
    assert cut["bounds_source"].startswith("prt:") and cut["bits_fw_min"] == result["lower_bits"]
    assert not (tmp_path / "out" / "prt" / "mlp-digits.json").exists()  # the bits result is apart


def test_cli_refuses_a_ladder_of_formats_without_a_scaled_recipe(tmp_path) -> None:
    r = run_cli(["train", "schedule=cpt_cosine", "schedule.ladder=[mxfp4,mxfp8]"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "quant=mxfp8" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "outputs").exists()


def test_a_run_over_a_ladder_of_formats_resumes_bit_identically(compose, tmp_path) -> None:
    """Stopped on one rung, resumed on the next: the layers take the rung from the bits."""
    cfg = compose(["model=mlp", "quant=nvfp4", "schedule=cpt_cosine", "schedule.cycles=2",
                   "schedule.ladder=[nvfp4,mxfp6_e2m3,mxfp8]", "schedule.bw_ladder=[nvfp4,mxfp8]",
                   "trainer.steps=12", "trainer.eval_every=6", "trainer.checkpoint_every=3",
                   "trainer.progress=false"])
    resumed, whole = resumed_and_whole(cfg, tmp_path, stop_at=3)
    assert resumed == whole
    assert set(whole["steps_per_format"]["forward"]) == {"nvfp4", "mxfp6_e2m3", "mxfp8"}
    assert set(whole["steps_per_format"]["backward"]) == {"nvfp4", "mxfp8"}


def test_the_python_api_climbs_a_ladder_of_formats() -> None:
    """cprec.quantize(ladder=...) + cprec.schedule(ladder=...): the layers follow the bits."""
    import cprec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cprec.quantize(model, format="scaled", operand={"format": "mxfp8"}, ladder=FORMATS, quantize_last=True)
    sched = cprec.schedule("cpt_cosine", 40, cycles=2, ladder=FORMATS)
    x = torch.randn(8, 64)
    seen = {}
    for t in range(40):
        cprec.set_precision(model, *sched.bits(t))
        model(x)
        seen[sched.bits(t)[0]] = model[0].gemms.recipe.forward.second.elem
    assert seen == {4: "e2m1", 6: "e2m3", 8: "e4m3"}
    with pytest.raises(ConfigError, match="steps_at"):
        cprec.schedule("stepped", 40, ladder=[4, 6, 8])  # stepped.yaml climbs once: [0.5]
    with pytest.raises(ConfigError, match="quant=mxfp8"):
        cprec.quantize(nn.Linear(4, 4), ladder=FORMATS)


def test_bits_off_the_ladder_are_an_error_not_another_format() -> None:
    model, _ = ladder_layer()
    set_precision(model, 5, 8)
    with pytest.raises(CprecError, match="name no rung"):
        model(torch.randn(2, 64))
