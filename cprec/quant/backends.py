"""Which implementation runs each quantization kernel: the back-end table and the switch.

Every kernel is defined once, as torch ops, in reference.py: that is the math, and the
definition of a correct result. Faster versions are registered against it, by back end:

- ``native``: the C kernels of native.py through ctypes, for contiguous float32 CPU
  tensors. In a CPU training step each call comes with caches emptied by the convolutions;
  a ctypes call then costs ~0.03 ms against ~0.2 ms for torch.compile's wrappers.
- ``torch_compile``: the reference function through ``torch.compile`` (dynamic shapes),
  one fused kernel on GPUs; also takes the CPU tensors the C kernels do not.

The C kernels return bitwise the reference's results (tests/quant/test_quant_backends.py);
torch_compile compiles the reference function itself. Either is ~10x faster than the
reference run op by op (and than torch's built-in fake-quant ops).

The mode chooses among them for the whole process:

- ``auto`` (default): per call, the first back end above that takes the arguments and can
  run on this machine, else the reference. One that cannot be built (no C compiler,
  torch.compile failing) logs one warning and is skipped from then on.
- ``reference``: the reference functions as plain torch ops (debugging, tests: nothing
  to build, no compile wait).

Set it with ``CPREC_KERNELS=auto|reference`` in the environment (read on first use) or
``set_backend()`` in-process; ``backend()`` and ``backend_for(device)`` say what is in use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cprec.errors import ConfigError
from cprec.quant import mxblocks, native, reference

log = logging.getLogger(__name__)
# torch.compile's C++ toolchain probe warns about a missing CUDA runtime on CPU-only hosts
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

AUTO, REFERENCE = "auto", "reference"
MODES = (AUTO, REFERENCE)
NATIVE, TORCH_COMPILE = "native", "torch_compile"
ENV_VAR = "CPREC_KERNELS"


@dataclass
class _State:
    """Everything this module remembers; reached only through the functions below."""

    mode: str | None = None  # None: not yet read from the environment
    compile_failed: bool = False
    compiled: dict[Callable, Callable] = field(default_factory=dict)  # reference fn -> compiled
    dispatchers: dict[Callable, Callable] = field(default_factory=dict)


_state = _State()


@dataclass(frozen=True)
class Backend:
    """A family of fast kernels: which arguments it takes and whether it runs here."""

    name: str
    accepts: Callable[..., bool]  # accepts(*args) of one kernel call
    ready: Callable[[], bool]  # built (or buildable) on this machine


class CompiledKernel:
    """The ``torch_compile`` version of a reference kernel, compiled on its first call.

    If compilation fails (no compiler, unsupported platform) the call returns the
    reference's result, one warning is logged and torch_compile is not tried again.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        try:
            compiled = _state.compiled.get(self.fn)
            if compiled is None:
                compiled = _state.compiled[self.fn] = torch.compile(self.fn, dynamic=True)
            return compiled(*args)
        except Exception as e:  # stay correct, just slower
            result = self.fn(*args)  # raises again if the inputs are the problem, not compiling
            _state.compile_failed = True
            log.warning("torch.compile unavailable for quantization kernels (%s: %s); running "
                        "them as reference torch ops", type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "")
            return result

    def __repr__(self) -> str:
        return f"CompiledKernel({self.fn.__name__})"


BACKENDS: dict[str, Backend] = {  # in the order auto tries them
    NATIVE: Backend(NATIVE, native.accepts, lambda: native.library() is not None),
    TORCH_COMPILE: Backend(TORCH_COMPILE, lambda *args: True,
                           lambda: not _state.compile_failed),
}


def _fast(ref: Callable, c_version: Callable) -> dict[str, Callable]:
    return {NATIVE: c_version, TORCH_COMPILE: CompiledKernel(ref)}


# reference function -> {back-end name: implementation}
_TABLE: dict[Callable, dict[str, Callable]] = {
    reference.quant_tensor_batch_range: _fast(reference.quant_tensor_batch_range,
                                              native.quant_tensor_batch_range),
    reference.quant_tensor_given_range: _fast(reference.quant_tensor_given_range,
                                              native.quant_tensor_given_range),
    reference.quant_per_channel: _fast(reference.quant_per_channel, native.quant_per_channel),
    reference.quant_inputs_batch_range: _fast(reference.quant_inputs_batch_range,
                                              native.quant_inputs_batch_range),
    reference.quant_inputs_given_range: _fast(reference.quant_inputs_given_range,
                                              native.quant_inputs_given_range),
    reference.quant_stochastic: _fast(reference.quant_stochastic, native.quant_stochastic),
    mxblocks.quant_mx_blocks: {NATIVE: native.quant_mx_blocks},
}


def _mode_from_env() -> str:
    mode = os.environ.get(ENV_VAR)
    if mode is None and os.environ.get("CPREC_COMPILE") == "0":  # the old switch
        log.warning("CPREC_COMPILE=0 is deprecated: use %s=%s", ENV_VAR, REFERENCE)
        mode = REFERENCE
    mode = (mode or AUTO).strip().lower()
    if mode not in MODES:
        raise ConfigError(ENV_VAR, mode, f"must be one of {', '.join(MODES)}")
    return mode


def backend() -> str:
    """The kernel mode of this process: ``auto`` or ``reference``."""
    if _state.mode is None:
        _state.mode = _mode_from_env()
    return _state.mode


def set_backend(mode: str | None) -> None:
    """Choose the kernel mode for this process (overrides ``CPREC_KERNELS``); None: follow
    ``CPREC_KERNELS`` again (read on next use)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"kernel mode must be one of {MODES}, got {mode!r}")
    _state.mode = mode


def backend_for(device: torch.device | str) -> str:
    """The back end that runs contiguous float32 tensors on ``device`` now: ``native``,
    ``torch_compile`` or ``reference`` (e.g. for a benchmark to report; after the first
    call it also reflects a failed build)."""
    if backend() == REFERENCE:
        return REFERENCE
    if torch.device(device).type == "cpu" and BACKENDS[NATIVE].ready():
        return NATIVE
    return TORCH_COMPILE if BACKENDS[TORCH_COMPILE].ready() else REFERENCE


def implementations(fn: Callable) -> dict[str, Callable]:
    """The fast versions registered for reference function ``fn``, by back-end name."""
    return dict(_TABLE.get(fn, {}))


def register(fn: Callable, backend_name: str, impl: Callable) -> None:
    """Make ``impl`` the ``backend_name`` version of reference function ``fn``.

    ``impl`` must return bitwise what ``fn`` returns. Used by tests and benchmarks to put
    spies or switches in front of a kernel; takes effect on the next call.
    """
    if backend_name not in BACKENDS:
        raise ValueError(f"unknown back end {backend_name!r}; known: {list(BACKENDS)}")
    _TABLE.setdefault(fn, {})[backend_name] = impl
    _state.dispatchers.clear()


def reset() -> None:
    """Forget compiled kernels and failed builds of torch.compile (the mode is kept)."""
    _state.compile_failed = False
    _state.compiled.clear()
    _state.dispatchers.clear()


def kernel(fn: Callable) -> Callable:
    """The implementation of reference function ``fn`` to call under the current mode:
    same results as ``fn``, as fast as this machine runs it."""
    if (_state.mode or backend()) == REFERENCE:
        return fn
    run = _state.dispatchers.get(fn)
    if run is None:
        run = _state.dispatchers[fn] = _dispatcher(fn)
    return run


def _dispatcher(fn: Callable) -> Callable:
    """``fn``'s registered versions tried in BACKENDS order, per call; ``fn`` if none fits."""
    impls = _TABLE.get(fn, {})
    fast = [(BACKENDS[name].accepts, BACKENDS[name].ready, impls[name])
            for name in BACKENDS if name in impls]

    def run(*args: torch.Tensor):
        for accepts, ready, impl in fast:
            if accepts(*args) and ready():
                return impl(*args)
        return fn(*args)

    run.__wrapped__ = fn
    return run
