"""Loss scaling at the error-rounding points (static, dynamic, adaptive), its telemetry, and
real mixed precision (amp): exact counts, the scale rules, resume, the refused combinations."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from cprec.engine import runs
from cprec.engine.build import build_run
from cprec.engine.step import TrainStep
from cprec.engine.trainer import Trainer, step_plugins
from cprec.errors import ConfigError
from cprec.numerics.error_stats import LOSS
from cprec.numerics.loss_scale import (
    AdaptiveScale,
    LossScaling,
    StaticScale,
    adaptive_alpha,
    join_scale,
    min_subnormal,
    underflow_threshold,
)
from cprec.quant import FORMATS, FloatFormatQuantizer, QuantRNG, quant_layers, quantize_model
from tests.helpers import run_cli

SMALL = ["model=mlp", "schedule=static", "quant=fp8_e4m3", "trainer.steps=12",
         "trainer.eval_every=6", "trainer.checkpoint_every=3", "trainer.progress=false"]
TIMING = ("train_time_s", "wall_time_s")


def strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in TIMING}


def float_model(fmt_name: str, seed: int = 0, residual: bool = False) -> nn.Module:
    """Three Linear layers, the first two quantized to ``fmt_name`` (errors too)."""
    torch.manual_seed(seed)
    model = Residual() if residual else nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16),
                                                      nn.ReLU(), nn.Linear(16, 3))
    quantizer = FloatFormatQuantizer(FORMATS[fmt_name])
    quantize_model(model, quantizer, QuantRNG(seed))
    for layer in quant_layers(model).values():
        layer.fw_bits, layer.bw_bits = quantizer.format_bits
    return model


class Residual(nn.Module):
    """a -> relu -> (b(z) + z) -> head: the error reaching ``a`` joins b's branch and the
    identity branch (which carries the loss's scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.a(x))
        return self.head(self.b(z) + z)


@pytest.mark.parametrize("fmt_name", ["fp16", "fp8_e4m3"])
def test_underflow_and_overflow_counts_are_exact(fmt_name: str) -> None:
    """Of the nonzero errors, those far below the smallest subnormal flush (underflow) and those
    beyond the largest finite value overflow; zeros are not counted; grid values are kept."""
    fmt = FORMATS[fmt_name]
    model = float_model(fmt_name)
    plugin = LossScaling(model, StaticScale(1.0), fmt, count=True)
    u_min = min_subnormal(fmt)
    error = torch.cat([torch.full((7,), 1e-20 * u_min), torch.full((5,), -3 * u_min),
                       torch.full((11,), 1.0), torch.full((3,), -4 * fmt.max_value),
                       torch.full((2,), math.inf), torch.zeros(13)])
    quantizer = quant_layers(model)["0"].quantizer
    out = plugin.round("0", quantizer.round_error, error, 8, torch.tensor(5, dtype=torch.int32))
    assert torch.equal(out[7:23], error[7:23])  # representable values pass unchanged
    window = plugin.metrics()
    nonzero = 7 + 5 + 11 + 3 + 2
    assert window["underflow_rate_layers"] == {"0": 7 / nonzero, "2": 0.0}
    assert window["overflow_rate_layers"] == {"0": 5 / nonzero, "2": 0.0}
    assert window["underflow_rate"] == 7 / nonzero and window["overflow_rate"] == 5 / nonzero
    assert plugin.summary()["underflow_rate"] == 7 / nonzero  # the run's totals kept it
    assert plugin.metrics()["underflow_rate"] == 0.0  # a new window


def test_a_power_of_two_scale_rounds_as_real_loss_scaling() -> None:
    """Q(S g) / S at the rounding points gives bit for bit the gradients of multiplying the loss
    by S and dividing the weight gradients by S (same rounding noise), and rescues underflow."""
    x, y = torch.randn(32, 8) * 1e-3, torch.randint(0, 3, (32,))
    grads = {}
    for way in ("plugin", "real", "none"):
        model = float_model("fp8_e4m3")
        if way == "plugin":
            LossScaling(model, StaticScale(2.0 ** 12), FORMATS["fp8_e4m3"], count=False)
        loss = nn.functional.cross_entropy(model(x), y) * (2.0 ** 12 if way == "real" else 1.0)
        loss.backward()
        grads[way] = [p.grad / (2.0 ** 12 if way == "real" else 1.0) for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads["plugin"], grads["real"]))
    assert not all(torch.equal(a, b) for a, b in zip(grads["plugin"], grads["none"]))


def test_alpha_on_a_gaussian_is_the_formula() -> None:
    """alpha = 2^floor(log2(u_min / (sqrt(2) erfinv(T_uf) sigma))), and that threshold puts a
    fraction T_uf of a Gaussian below it."""
    t = underflow_threshold(1e-3)
    assert t == pytest.approx(math.sqrt(2) * 8.86227e-4, rel=1e-5)
    g = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 1e-4
    sigma = g.std(correction=0).item()
    assert (g.abs() < t * sigma).float().mean().item() == pytest.approx(1e-3, rel=0.15)
    fmt = FORMATS["fp8_e4m3"]
    u_min, u_max = min_subnormal(fmt), fmt.max_value
    alpha = adaptive_alpha(g, torch.tensor(1.0), u_min, u_max, t, math.inf, math.inf)
    assert alpha.item() == 2.0 ** math.floor(math.log2(u_min / (t * sigma)))  # 2^14 here
    assert alpha.item() * g.abs().max().item() <= u_max


def test_each_bound_binds_where_it_should() -> None:
    """alpha >= 1; alpha * max|g| <= u_max; alpha * prev <= accum_bound; alpha <= layer_bound."""
    fmt = FORMATS["fp16"]
    u_min, u_max, t = min_subnormal(fmt), fmt.max_value, underflow_threshold(1e-3)
    g = torch.randn(4096, generator=torch.Generator().manual_seed(1))

    def alpha(err, prev=1.0, accum=math.inf, layer=math.inf) -> float:
        return adaptive_alpha(err, torch.tensor(prev), u_min, u_max, t, accum, layer).item()

    free = alpha(g * 1e-6)
    assert free == 2.0 ** math.floor(math.log2(u_min / (t * (g * 1e-6).std(correction=0).item())))
    assert alpha(g) == 1.0  # large errors: the formula asks < 1, alpha >= 1 wins
    e4m3 = FORMATS["fp8_e4m3"]  # a narrow format, where max|g| / sigma can outgrow the range
    spiky = torch.randn(200_000, generator=torch.Generator().manual_seed(2)) * 1e-6
    spiky[0] = 1e-3  # alpha * max|g| must stay below u_max: 448 / 1e-3 -> 2^18
    formula = min_subnormal(e4m3) / (t * spiky.std(correction=0).item())
    bounded = adaptive_alpha(spiky, torch.tensor(1.0), min_subnormal(e4m3), e4m3.max_value, t,
                             math.inf, math.inf).item()
    assert bounded == 2.0 ** 18 < formula
    assert alpha(g * 1e-9, prev=2.0 ** 8) == 128.0  # the formula, on the error scaled by prev
    assert alpha(g * 1e-9, prev=2.0 ** 8, accum=2.0 ** 10) == 4.0  # accumulated 2^10 at most
    assert alpha(g * 1e-9, layer=16.0) == 16.0
    assert alpha(torch.zeros(10)) == 1.0


def test_a_residual_join_gets_one_scale() -> None:
    """The error reaching ``a`` joins b's branch and the identity branch (the loss's scale):
    both are its consumers; the joined error continues at the largest branch scale that keeps
    it below u_max (else the smallest), and ``a`` scales on from there."""
    model = float_model("fp8_e4m3", residual=True)
    fmt = FORMATS["fp8_e4m3"]
    rule = AdaptiveScale(["a", "b"], replace_cfg(), fmt, torch.device("cpu"))
    plugin = LossScaling(model, rule, fmt, count=False)
    x, y = torch.randn(16, 8) * 1e-3, torch.randint(0, 3, (16,))
    step_loss = plugin.loss(nn.functional.cross_entropy(model(x), y), model)
    assert rule.consumers == {"a": sorted([LOSS, "b"]), "b": [LOSS]}
    step_loss.backward()
    s_a, s_b = rule.scales["a"].item(), rule.scales["b"].item()
    assert s_b > 1 and s_a >= s_b and math.log2(s_a).is_integer()
    small, big = torch.full((4,), 1e-3), torch.full((4,), 1e3)
    branches = torch.tensor([1.0, 2.0 ** 10])
    assert join_scale(branches, small, fmt.max_value).item() == 2.0 ** 10
    assert join_scale(branches, big, fmt.max_value).item() == 1.0
    assert join_scale(branches, big * 1e3, fmt.max_value).item() == 1.0  # none fits: smallest


def replace_cfg(**kw):
    from cprec.config import LossScaleConfig

    return replace(LossScaleConfig(name="adaptive"), **kw)


def test_adaptive_weight_gradients_match_the_unrounded_ones() -> None:
    """E4M3 errors of a tiny-error net: unscaled rounding flushes most of them; with adaptive
    scales the (already unscaled) weight gradients equal the fp32 ones up to rounding."""
    x, y = torch.randn(64, 8) * 1e-2, torch.randint(0, 3, (64,))
    fmt = FORMATS["fp8_e4m3"]
    grads = {}
    for way in ("exact", "none", "adaptive"):
        model, plugin = float_model("fp8_e4m3"), None
        if way == "exact":
            for layer in quant_layers(model).values():
                layer.bw_bits = 32
        if way == "adaptive":
            rule = AdaptiveScale(["0", "2"], replace_cfg(), fmt, torch.device("cpu"))
            plugin = LossScaling(model, rule, fmt, count=False)
        loss = nn.functional.cross_entropy(model(x), y) / 1e4
        if plugin is not None:
            loss = plugin.loss(loss, model)  # the graph's shape is learned from the first loss
        loss.backward()
        grads[way] = torch.cat([p.grad.flatten() for p in model.parameters()])

    def rel(way: str) -> float:
        return ((grads[way] - grads["exact"]).norm() / grads["exact"].norm()).item()

    assert rel("adaptive") < 0.1 < rel("none")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_dynamic_overflow_halves_the_scale_and_skips_the_step(compose) -> None:
    """An overflow in E4M3 (scale 2^40) leaves the weights as they were and halves the scale;
    growth_interval clean steps double it."""
    parts = build_run(compose([*SMALL, "loss_scale=dynamic", "loss_scale.init_scale=1099511627776"]))
    (plugin,) = step_plugins(parts)
    step = TrainStep(parts.task, parts.model, parts.optimizer, [plugin])
    parts.precision.apply(0)
    before = [p.detach().clone() for p in parts.model.parameters()]
    step(parts.task.next_batch())
    assert all(torch.equal(a, b) for a, b in zip(before, parts.model.parameters()))
    assert plugin.rule.scale == 2.0 ** 39 and plugin.rule.skipped == 1
    parts = build_run(compose([*SMALL, "loss_scale=dynamic", "loss_scale.init_scale=1",
                               "loss_scale.growth_interval=3"]))
    (plugin,) = step_plugins(parts)
    step = TrainStep(parts.task, parts.model, parts.optimizer, [plugin])
    scales = []
    for _ in range(7):
        parts.precision.apply(0)
        step(parts.task.next_batch())
        scales.append(plugin.rule.scale)
    assert scales == [1, 1, 2, 2, 2, 4, 4] and plugin.rule.skipped == 0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # a skipped first step
@pytest.mark.parametrize("extra", [["loss_scale=static"],
                                   ["loss_scale=dynamic", "loss_scale.init_scale=1073741824",
                                    "loss_scale.growth_interval=2"],
                                   ["loss_scale=adaptive", "loss_scale.update_every=2"],
                                   ["schedule=fp32", "amp=bf16"]],
                         ids=["static", "dynamic", "adaptive", "amp-bf16"])
def test_kill_and_resume_is_bit_exact(compose, tmp_path, extra) -> None:
    """Killed after the step-3 checkpoint (between evaluations) and resumed by a new Trainer: the
    same summary and metrics (scales, skipped steps and counts included) as an uninterrupted run."""
    cfg = compose([*SMALL, *extra])
    parts = build_run(cfg)
    whole = Trainer(parts, tmp_path / "whole", step_plugins(parts)).run()
    parts = build_run(cfg)
    first = Trainer(parts, tmp_path / "split", step_plugins(parts))
    first.parts.plan = replace(first.parts.plan, total_steps=6)  # checkpoints at 3 and 6
    first.run()
    (tmp_path / "split" / runs.SUMMARY).unlink()
    split = tmp_path / "split"  # killed after step 3's checkpoint: mid-window (evaluations at 6, 12)
    (split / runs.PREVIOUS_CHECKPOINT).replace(split / runs.CHECKPOINT)
    parts = build_run(cfg)
    resumed = Trainer(parts, tmp_path / "split", step_plugins(parts)).run()
    assert strip(resumed) == strip(whole)
    assert [strip(r) for r in runs.read_metrics(tmp_path / "split")] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]
    last = runs.read_metrics(tmp_path / "whole")[-1]
    if "amp=bf16" not in extra:
        assert "underflow_rate" in whole and "underflow_rate_layers" in last
    if "loss_scale=dynamic" in extra:
        assert whole["skipped_steps"] > 0 and last["loss_scale"] != 2.0 ** 30


@pytest.mark.parametrize("overrides, key", [
    (["schedule=static", "loss_scale=static"], "loss_scale"),  # fixed-point errors
    (["schedule=static", "loss_scale.telemetry=true"], "loss_scale.telemetry"),
    (["schedule=fp32", "quant=fp16", "loss_scale=dynamic"], "loss_scale"),  # no error rounded
    (["schedule=static", "quant=fp16", "quant.quantize_errors=false", "loss_scale=adaptive"],
     "loss_scale"),
    (["schedule=static", "quant=fp16", "loss_scale=adaptive", "loss_scale.layer_bound=0.5"],
     "loss_scale.layer_bound"),
    (["schedule=static", "quant=fp16", "amp=bf16"], "amp"),  # simulated formats under autocast
    (["schedule=fp32", "amp=bf16", "loss_scale=static", "quant=fp16"], "loss_scale"),
    (["schedule=fp32", "amp=fp16", "trainer.device=cpu"], "amp"),
])
def test_combinations_that_cannot_work_are_refused(compose, overrides, key) -> None:
    """Loss scaling where no float error is rounded, and amp on simulated formats or fp16 on a
    CPU, are ConfigErrors naming the key."""
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    assert e.value.key == key


@pytest.mark.parametrize("overrides, needle", [
    (["schedule=static", "loss_scale=static"], "errors are fixed point here"),
    (["schedule=fp32", "amp=fp16", "trainer.device=cpu"], "use amp=bf16 on the CPU"),
])
def test_refusals_are_one_line_exit_2(tmp_path, overrides, needle) -> None:
    """From the CLI: one line on stderr, exit 2, no traceback, no files written."""
    out = run_cli(["train", *overrides], tmp_path)
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_bf16_autocast_runs_forward_and_evaluation_in_bf16(compose) -> None:
    """amp=bf16 (CPU here): the logits come out in bfloat16 under the plugin's context, the
    weights and their gradients stay fp32, and there is no GradScaler."""
    parts = build_run(compose(["model=mlp", "schedule=fp32", "amp=bf16"]))
    (plugin,) = step_plugins(parts)
    x, _ = parts.task.next_batch()
    with plugin.forward_context():
        assert parts.model(x).dtype == torch.bfloat16
    step = TrainStep(parts.task, parts.model, parts.optimizer, [plugin])
    step(parts.task.next_batch())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in parts.model.parameters())
    assert not plugin.scaler.is_enabled() and plugin.summary() == {"amp": "bf16"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast needs CUDA")
def test_fp16_gradscaler_skips_inf_steps_and_resumes(compose, tmp_path) -> None:
    """amp=fp16 on CUDA: a GradScaler starting at 2^40 overflows, skips the first steps and
    backs off; a resumed run ends where an uninterrupted one does."""
    cfg = compose(["model=mlp", "schedule=fp32", "amp=fp16", "amp.init_scale=1099511627776",
                   "trainer.steps=12", "trainer.eval_every=6", "trainer.checkpoint_every=3",
                   "trainer.progress=false", "trainer.device=cuda"])
    parts = build_run(cfg)
    whole = Trainer(parts, tmp_path / "whole", step_plugins(parts)).run()
    assert whole["skipped_steps"] > 0 and whole["loss_scale"] < 2.0 ** 40
    parts = build_run(cfg)
    first = Trainer(parts, tmp_path / "split", step_plugins(parts))
    first.parts.plan = replace(first.parts.plan, total_steps=6)
    first.run()
    (tmp_path / "split" / runs.SUMMARY).unlink()
    parts = build_run(cfg)
    resumed = Trainer(parts, tmp_path / "split", step_plugins(parts)).run()
    assert strip(resumed) == strip(whole)
