"""Kernel back ends: the fast versions against the reference math, dispatch and fallbacks.

The reference functions (cprec.quant.reference) define the results; the C kernels must
return them bitwise. ``auto`` sends each call to the first back end that takes it (native C
for contiguous float32 CPU tensors, then torch.compile), ``reference`` runs the torch ops;
a back end that cannot be built warns once and is skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.errors import ConfigError
from cprec.quant import QuantRNG, backends, native, quantize_model, reference, set_precision
from cprec.quant.backends import NATIVE, REFERENCE, TORCH_COMPILE

KERNELS = [reference.quant_tensor_batch_range, reference.quant_tensor_given_range,
           reference.quant_per_channel, reference.quant_inputs_batch_range,
           reference.quant_inputs_given_range, reference.quant_stochastic]


def keys(n: int, seed: int = 123) -> list[torch.Tensor]:
    """n successive stochastic-rounding keys of a seeded QuantRNG."""
    rng = QuantRNG(seed)
    return [rng.next_key(torch.device("cpu")) for _ in range(n)]


def needs_native() -> None:
    """Skip where there is no C compiler; where there is one, the kernels must build."""
    if native.library() is None:
        if os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is here but the native kernels did not build (see the warning)")
        pytest.skip("no C compiler on this machine: CPU kernels run as torch ops")


@pytest.fixture()
def kernel_state():
    """Leave the back-end module as the session has it (reference mode, original table)."""
    saved = {fn: backends.implementations(fn) for fn in KERNELS}
    yield
    for fn, impls in saved.items():
        for name, impl in impls.items():
            backends.register(fn, name, impl)
    backends.set_backend(REFERENCE)
    backends.reset()


# -- the table ------------------------------------------------------------------------------
def test_every_reference_kernel_has_a_native_and_a_compiled_version() -> None:
    """The table registers, by object, the C wrapper and a torch.compile of each reference."""
    for fn in KERNELS:
        impls = backends.implementations(fn)
        assert list(impls) == [NATIVE, TORCH_COMPILE], fn.__name__
        assert impls[NATIVE] is getattr(native, fn.__name__)
        assert isinstance(impls[TORCH_COMPILE], backends.CompiledKernel)
        assert impls[TORCH_COMPILE].fn is fn
    assert backends.implementations(torch.add) == {}  # not a kernel: nothing registered


def kernel_cases() -> list[tuple[Callable, tuple]]:
    """Every kernel on shapes with ragged tails, at several widths, NaN input included."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 7, 9, generator=gen) * 3 + 0.5
    big = torch.randn(70001, generator=gen)  # above the C kernels' one-thread limit
    w = torch.randn(16, 3, 3, 3, generator=gen)
    w2d = torch.randn(10, 33, generator=gen)  # a Linear weight
    with_nan, with_inf = x.clone(), x.clone()
    with_nan[1, 2, 3, 4] = float("nan")
    with_inf[0, 1, 2, 3] = float("inf")
    signed_zeros = torch.tensor([-0.0, 0.0, 1.0, -0.0] * 5).view(4, 5)
    wide = torch.randn(64, 64, 3, 3, generator=gen)  # per-channel work over the thread limit
    lo, hi = torch.tensor(-1.5), torch.tensor(2.5)
    r = reference
    cases = []
    for bits in (1, 2, 4, 8, 16):
        lv = torch.tensor(float(2**bits - 1))
        for key in keys(2, seed=bits):
            cases += [(r.quant_stochastic, (t, key, lv))
                      for t in (x, big, with_nan, with_inf, signed_zeros)]
        cases += [(r.quant_tensor_batch_range, (t, lv))
                  for t in (x, big, with_nan, with_inf, signed_zeros)]
        cases += [(r.quant_tensor_given_range, (t, lo, hi, lv)) for t in (x, big, with_inf)]
        cases += [(r.quant_per_channel, (t, lv)) for t in (w, w2d, wide, signed_zeros)]
        cases += [(r.quant_inputs_batch_range, (x, w, lv)),
                  (r.quant_inputs_given_range, (big, w2d, lo, hi, lv))]
    # the same inputs on CPT's grid (zero_exact=False; the errors have only that grid)
    return cases + [(fn, (*args, False)) for fn, args in cases if fn is not r.quant_stochastic]


def assert_same_outputs(ref: tuple, fast: tuple, case: tuple) -> None:
    """Every output equal (scales and offsets too), NaN where the reference has NaN.

    Equal = bitwise, except that a range bound of zero may carry the other sign (which of
    -0.0 and 0.0 is the minimum depends on the reduction order) with the same results.
    """
    assert len(ref) == len(fast), case
    for i, (a, b) in enumerate(zip(ref, fast)):
        assert a.shape == b.shape, (case, i)
        assert torch.equal(a.isnan(), b.isnan()), (case, i)
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), (case, i, (a - b).abs().max())


def test_native_kernels_match_reference_bitwise() -> None:
    """The C kernels return exactly what the reference torch functions return, on both
    grids (zero_exact true and false): every output, every width, NaN and inf alike."""
    needs_native()
    for fn, args in kernel_cases():
        ref, fast = fn(*args), backends.implementations(fn)[NATIVE](*args)
        assert_same_outputs(ref, fast, (fn.__name__, args[-1]))


@pytest.mark.slow
def test_compiled_kernels_match_reference_bitwise(kernel_state) -> None:
    """torch.compile's kernels (the GPU back end, here compiled for the CPU) return what the
    reference returns on both grids; each grid setting is its own compiled kernel."""
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(4, 8, 7, 9, generator=gen) * 3 + 0.5, torch.randn(16, 3, 3, 3, generator=gen)
    lo, hi, key = torch.tensor(-1.5), torch.tensor(2.5), keys(1)[0]
    r = reference
    for bits in (2, 3, 8):
        lv = torch.tensor(float(2**bits - 1))
        cases = [(r.quant_stochastic, (x, key, lv))]
        for zero_exact in (True, False):
            cases += [(r.quant_inputs_batch_range, (x, w, lv, zero_exact)),
                      (r.quant_inputs_given_range, (x, w, lo, hi, lv, zero_exact))]
        for fn, args in cases:
            compiled = backends.implementations(fn)[TORCH_COMPILE](*args)
            assert not backends._state.compile_failed, "torch.compile failed: nothing compared"
            assert_same_outputs(fn(*args), compiled, (fn.__name__, bits, args[-1]))


def test_native_kernels_ignore_the_default_dtype() -> None:
    """Range outputs are float32 buffers even when torch's default dtype is not."""
    needs_native()
    x, lv = torch.randn(4, 100), torch.tensor(15.0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = native.quant_tensor_batch_range(x, lv)
    finally:
        torch.set_default_dtype(old)
    assert (out[1].item(), out[2].item()) == (x.min().item(), x.max().item())


# -- dispatch -------------------------------------------------------------------------------
@pytest.fixture()
def dispatch_spies(kernel_state):
    """Auto mode, with spies registered as the C kernel and the torch.compile version of
    quant_tensor_batch_range: which path ran is recorded (the spies compute the reference)."""
    calls: list[str] = []
    fn = reference.quant_tensor_batch_range

    def spy(name: str) -> Callable:
        def run(*args):
            calls.append(name)
            return fn(*args)
        return run

    backends.register(fn, NATIVE, spy(NATIVE))
    backends.register(fn, TORCH_COMPILE, spy(TORCH_COMPILE))
    backends.set_backend("auto")
    return calls


def test_kernel_dispatch_sends_only_what_c_takes(dispatch_spies) -> None:
    """Auto: contiguous float32 CPU tensors go to C, others to torch.compile; reference: torch ops."""
    needs_native()
    x, lv = torch.randn(8, 6, 5, 5), torch.tensor(255.0)
    run = backends.kernel(reference.quant_tensor_batch_range)
    run(x, lv)
    assert dispatch_spies == [NATIVE]
    for other in (x.to(memory_format=torch.channels_last), x.double()):
        run(other, lv.to(other.dtype))
    assert dispatch_spies == [NATIVE] + [TORCH_COMPILE] * 2
    assert not native.accepts(torch.empty(0, 3), lv)  # torch's own error, not C's garbage
    assert backends.backend_for("cpu") == NATIVE
    backends.set_backend(REFERENCE)
    assert backends.kernel(reference.quant_tensor_batch_range) is reference.quant_tensor_batch_range
    assert backends.backend_for("cpu") == REFERENCE


def test_native_build_failure_falls_back(monkeypatch, tmp_path, caplog, dispatch_spies) -> None:
    """A C compiler that fails: one warning, nothing left in the cache, kernels via torch.compile."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CC", "false")  # exits 1 whatever it is given
    monkeypatch.setenv("CPREC_CACHE_DIR", str(tmp_path))
    with caplog.at_level("WARNING"):
        assert native.library() is None
    assert "native quantization kernels unavailable" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    backends.kernel(reference.quant_tensor_batch_range)(torch.randn(3, 5), torch.tensor(15.0))
    assert dispatch_spies == [TORCH_COMPILE]
    assert backends.backend_for("cpu") == TORCH_COMPILE


def test_compile_failure_falls_back_to_reference_once(monkeypatch, caplog, kernel_state) -> None:
    """torch.compile failing: the reference's result, one warning, torch.compile not retried."""
    attempts = []

    def broken_compile(fn, **kwargs):
        attempts.append(fn)
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    backends.reset()
    backends.set_backend("auto")
    x, lv = torch.randn(6, 7, dtype=torch.float64), torch.tensor(15.0, dtype=torch.float64)
    run = backends.kernel(reference.quant_tensor_batch_range)  # float64: not for the C kernels
    with caplog.at_level("WARNING"):
        first, second = run(x, lv), run(x, lv)
    for out in (first, second):
        for a, b in zip(out, reference.quant_tensor_batch_range(x, lv)):
            assert torch.equal(a, b)
    assert len(attempts) == 1
    assert caplog.text.count("torch.compile unavailable") == 1 and "no compiler here" in caplog.text
    assert backends.backend_for("cuda") == REFERENCE
    backends.reset()  # forgets the failure
    assert backends.backend_for("cuda") == TORCH_COMPILE


def test_kernels_raise_on_bad_inputs_even_when_compiled(monkeypatch, kernel_state) -> None:
    """An error caused by the inputs is raised (from the reference), not hidden as a fallback."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    backends.reset()
    backends.set_backend("auto")
    with pytest.raises(RuntimeError):
        backends.kernel(reference.quant_per_channel)(torch.empty(0, 3), torch.tensor(3.0))
    assert backends.backend_for("cuda") == TORCH_COMPILE  # not marked as failed


def test_auto_and_reference_train_bitwise_alike(kernel_state) -> None:
    """A few quantized training steps give bitwise the same weights in auto and reference mode."""
    needs_native()
    for fn in KERNELS:  # anything the C kernels do not take: the reference, not a compile wait
        backends.register(fn, TORCH_COMPILE, fn)

    def train(mode: str) -> dict[str, torch.Tensor]:
        backends.set_backend(mode)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(8 * 3 * 3, 4))
        quantize_model(model, rng=QuantRNG(3), quantize_last=True)
        set_precision(model, 4, 6)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            x, y = torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}

    auto, ref = train("auto"), train(REFERENCE)
    for k in ref:
        assert torch.equal(auto[k], ref[k]), k


# -- choosing the mode ----------------------------------------------------------------------
def test_env_var_chooses_the_mode(monkeypatch, kernel_state) -> None:
    """CPREC_KERNELS=auto|reference sets the mode (default auto); any other value is refused."""
    monkeypatch.delenv("CPREC_COMPILE", raising=False)
    for value, mode in ((None, "auto"), ("reference", REFERENCE), ("auto", "auto"),
                        (" Reference ", REFERENCE)):
        if value is None:
            monkeypatch.delenv(backends.ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(backends.ENV_VAR, value)
        backends.set_backend(None)  # follow the environment again
        assert backends.backend() == mode, value
    backends.set_backend(REFERENCE)  # in-process choice wins over the environment
    monkeypatch.setenv(backends.ENV_VAR, "auto")
    assert backends.backend() == REFERENCE
    monkeypatch.setenv(backends.ENV_VAR, "compile")
    backends.set_backend(None)
    with pytest.raises(ConfigError, match="CPREC_KERNELS"):
        backends.backend()
    with pytest.raises(ValueError, match="kernel mode"):
        backends.set_backend("native")


def test_old_compile_switch_still_selects_reference(monkeypatch, caplog, kernel_state) -> None:
    """CPREC_COMPILE=0 (the old switch) selects reference with a deprecation warning."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setenv("CPREC_COMPILE", "0")
    backends.set_backend(None)
    with caplog.at_level("WARNING"):
        assert backends.backend() == REFERENCE
    assert "deprecated" in caplog.text


# -- building the C library -----------------------------------------------------------------
def test_native_build_goes_to_temp_dir_when_cache_is_unwritable(monkeypatch, tmp_path) -> None:
    """An unwritable cache: the library is built in a private temp dir, untrusted if not private."""
    needs_native()
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CPREC_CACHE_DIR", str(blocker / "cache"))  # a dir under a file
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    assert native.library() is not None
    private = tmp_path / "tmp" / f"cprec-{os.getuid()}"
    assert [p.suffix for p in private.iterdir()] == [".so"]
    assert private.stat().st_mode & 0o777 == 0o700
    private.chmod(0o777)  # a directory others can write: its libraries are not trusted
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is None
