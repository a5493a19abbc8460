"""The "native" back end: C versions of the CPU quantization kernels (native_kernels.c),
built once and loaded with ctypes; backends.py registers them against reference.py.

Same results as the torch functions in reference.py, bitwise (tests/quant/test_quant_backends.py),
at a fraction of the per-call cost: in a training step each call comes after a convolution
has flushed the caches, and torch.compile's wrapper layers then cost ~0.2 ms per call
against ~0.03 ms for a ctypes call. The library is compiled with the system C compiler
(~0.3 s) into a cache directory, keyed by the source, the flags and the CPU, so a shared
home directory on a mixed cluster never loads a build made for another CPU. No compiler
means no native kernels: backends.py falls back to the next back end.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_kernels.c")
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-ffp-contract=off", "-fPIC", "-shared"]
_F, _I64, _I32, _P, _INT = (ctypes.c_float, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p,
                            ctypes.c_int)
SIGNATURES = {  # the last argument of each: threads; _INT after levels: zero_exact
    "quant_tensor_batch_range": [_P, _P, _I64, _F, _INT, _P, _INT],
    "quant_tensor_given_range": [_P, _P, _I64, _F, _F, _F, _INT, _P, _INT],
    "quant_per_channel": [_P, _P, _I64, _I64, _F, _INT, _P, _P, _INT],
    "quant_stochastic": [_P, _P, _I64, _F, _I32, _P, _INT],
    "quant_mx_blocks": [_P, _P, _I64, _I64, _I64, _I64, _INT, _INT, _INT, _INT, _INT, _F, _INT],
    "grid_codes": [_P, _P, _I64, _F, _F, _F, _INT],  # int8.py: values -> int8/uint8 codes
}
F32 = torch.float32
_lib: ctypes.CDLL | None = None
_tried = False


def cache_dir() -> Path:
    """``$CPREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cprec``, else ``~/.cache/cprec``."""
    if os.environ.get("CPREC_CACHE_DIR"):
        return Path(os.environ["CPREC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cprec"


def private_temp_dir() -> Path:
    """A temp directory only this user can write (0700, owned by us), so no other user can
    plant a library under the name we would load. OSError if it is not ours."""
    path = Path(tempfile.gettempdir()) / f"cprec-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{path} is not private to this user")
    return path


def _cpu_id() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return platform.machine() + flags


class BuildError(Exception):
    """The compiler rejected the source or its flags."""


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file next to ``target``, then rename: concurrent jobs of a
    sweep may build at once, and none ever loads a half-written library. OSError: the
    directory is not writable; BuildError: the compiler failed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for openmp in (["-fopenmp"], []):  # e.g. Apple clang has no OpenMP: one thread then
            cmd = [*shlex.split(compiler), *FLAGS, *openmp, str(SOURCE), "-o", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.chmod(tmp, 0o755)  # mkstemp makes it 0600: others sharing the cache load it
                os.replace(tmp, target)
                return
        raise BuildError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else
                         f"{compiler} exited with {done.returncode}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _built(compiler: str, name: str) -> Path:
    """The library's path in the cache directory (built there if missing), or in a private
    temp directory when the cache directory is not writable."""
    error: Exception = OSError("no directory")
    for directory in (cache_dir, private_temp_dir):
        try:
            target = directory() / name  # cache_dir: RuntimeError if there is no home
            if not target.exists():
                _build(compiler, target)
            return target
        except (OSError, RuntimeError) as e:
            error = e
    raise error


def library() -> ctypes.CDLL | None:
    """The loaded library, building it on first use; None (once warned) where it cannot be."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: native quantization kernels unavailable, CPU kernels "
                    "fall back to torch.compile or the reference torch ops (slower)")
        return None
    try:
        key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), " ".join(FLAGS).encode(),
                                         compiler.encode(), _cpu_id().encode()]))
        lib = ctypes.CDLL(str(_built(compiler, f"native-kernels-{key.hexdigest()[:16]}.so")))
    except (OSError, RuntimeError, BuildError, subprocess.SubprocessError) as e:
        log.warning("native quantization kernels unavailable (%s); CPU kernels fall back to "
                    "torch.compile or the reference torch ops", str(e)[:200])
        return None
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    _lib = lib
    return _lib


def accepts(*args: torch.Tensor | bool) -> bool:
    """The C kernels take non-empty CPU tensors under 2^31 elements, the data as contiguous
    float32 (the SR key is int32); anything else stays with torch. Flags (``zero_exact``)
    are not tensors and pass."""
    return all(t.device.type == "cpu" and t.is_contiguous() and 0 < t.numel() < 2**31
               and (t.dtype == F32 or t.dtype == torch.int32 and t.dim() == 0)
               for t in args if isinstance(t, torch.Tensor))


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


Tensors = tuple[torch.Tensor, ...]

# Each wrapper below takes and returns what the reference function of the same name does;
# the library must be loaded (``library()`` not None) and ``accepts`` true of the arguments.


def quant_tensor_batch_range(x: torch.Tensor, levels: torch.Tensor,
                             zero_exact: bool = True) -> Tensors:
    out, stats = torch.empty_like(x), torch.empty(4, dtype=F32)
    _lib.quant_tensor_batch_range(_ptr(x), _ptr(out), x.numel(), levels.item(), zero_exact,
                                  _ptr(stats), torch.get_num_threads())
    return (out, *stats.unbind())


def quant_tensor_given_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                             levels: torch.Tensor, zero_exact: bool = True) -> Tensors:
    out, stats = torch.empty_like(x), torch.empty(2, dtype=F32)
    _lib.quant_tensor_given_range(_ptr(x), _ptr(out), x.numel(), lo.item(), hi.item(),
                                  levels.item(), zero_exact, _ptr(stats),
                                  torch.get_num_threads())
    return (out, *stats.unbind())


def quant_per_channel(w: torch.Tensor, levels: torch.Tensor, zero_exact: bool = True) -> Tensors:
    out = torch.empty_like(w)
    shape = [w.shape[0]] + [1] * (w.dim() - 1)
    scale, offset = torch.empty(shape, dtype=F32), torch.empty(shape, dtype=F32)
    _lib.quant_per_channel(_ptr(w), _ptr(out), w.shape[0], w[0].numel(), levels.item(),
                           zero_exact, _ptr(scale), _ptr(offset), torch.get_num_threads())
    return out, scale, offset


def quant_inputs_batch_range(x: torch.Tensor, w: torch.Tensor, levels: torch.Tensor,
                             zero_exact: bool = True) -> Tensors:
    return (quant_tensor_batch_range(x, levels, zero_exact)
            + quant_per_channel(w, levels, zero_exact))


def quant_inputs_given_range(x: torch.Tensor, w: torch.Tensor, lo: torch.Tensor,
                             hi: torch.Tensor, levels: torch.Tensor,
                             zero_exact: bool = True) -> Tensors:
    return (quant_tensor_given_range(x, lo, hi, levels, zero_exact)
            + quant_per_channel(w, levels, zero_exact))


def quant_stochastic(g: torch.Tensor, key: torch.Tensor, levels: torch.Tensor) -> Tensors:
    out, stats = torch.empty_like(g), torch.empty(1, dtype=F32)
    _lib.quant_stochastic(_ptr(g), _ptr(out), g.numel(), levels.item(), int(key.item()),
                          _ptr(stats), torch.get_num_threads())
    return out, stats[0]



def grid_codes(v: torch.Tensor, lo: float, scale: float, add: float, dtype: torch.dtype) -> torch.Tensor:
    """Codes round((v - lo) / scale) + add of a contiguous float32 tensor, as int8 or uint8."""
    out = torch.empty(v.shape, dtype=dtype)
    _lib.grid_codes(_ptr(v), _ptr(out), v.numel(), lo, scale, add, torch.get_num_threads())
    return out
def quant_mx_blocks(x: torch.Tensor, axis: int, block: int, rule: str, elem) -> Tensors:
    """mxblocks.quant_mx_blocks for a spec ``mxblocks.supported`` takes."""
    from cprec.quant.mxblocks import RULE_CODES

    axis = axis % x.dim()
    outer, inner = int(torch.tensor(x.shape[:axis]).prod()), int(torch.tensor(x.shape[axis + 1:]).prod())
    out = torch.empty_like(x)
    is_float = elem.kind == "float"
    _lib.quant_mx_blocks(_ptr(x), _ptr(out), outer, x.shape[axis], inner, block, RULE_CODES[rule],
                         elem.emax, 0 if is_float else 1, elem.man_bits,
                         elem.grid.min_exp if is_float else 0, elem.max_value,
                         torch.get_num_threads())
    return (out,)
