"""The generated CUDA text run on the host: a CuPy ``ElementwiseKernel`` compiled as C++ by the
system compiler and called through ``ctypes`` (test support; no GPU needed).

:class:`HostKernel` takes the same arguments as ``cupy.ElementwiseKernel`` and follows its
calling conventions, so a kernel body and the preamble (``kernels/preamble.cuh``) run
unchanged on NumPy arrays standing in for device arrays:

* typed parameters (``"float32 a0, bool a1"``) take arrays of exactly that dtype (``TypeError:
  Type is mismatched`` otherwise, as CuPy); a type placeholder (``"T x"``) takes the dtype of
  the first array bound to it;
* scalars (Python or NumPy scalars, never arrays) are converted to their parameter's dtype and
  broadcast; every array argument, outputs included, broadcasts to one loop shape;
* outputs are bound by reference (``o0 = ...`` writes the array passed in, ``o0 += ...``
  reads it first), allocated when not passed, and must have the loop shape;
* inputs are ``const T &`` bindings, the loop index is ``i``;
* ``float16`` is CuPy's storage class (implicit from ``float``, explicit from ``double``,
  ``operator float()``, rounding to nearest even), and the preamble's ``__half`` overloads
  compile against a host ``__half`` (the ``cuda_fp16.h`` subset they use).

What differs from a device: CUDA's math library (``expf``, ``tanhf``, ``rsqrtf``...) is
replaced by the host's C library (both within a few ulp of the exact value), and the host
build neither contracts ``a * b + c`` into a fused multiply-add (nvcc does by default) nor
flushes denormals; the comparisons in ``tests/test_hostcuda.py`` allow for both.

Compiled libraries are cached by a hash of the compiler, its flags and the source, in
``$GRADTAPE_HOSTCUDA_CACHE``, else ``$XDG_CACHE_HOME/gradtape/hostcuda`` (``~/.cache/...``),
else a folder in the temporary directory. :func:`build` compiles many kernels in one go (one
library per translation unit, units compiled in parallel), so a test suite pays a few compiler
runs, not one per kernel. :func:`compiler_unavailable_reason` says why nothing can run here.

Example:
    >>> import numpy as np
    >>> k = HostKernel("float32 x, float32 s", "float32 y", "y = x * s + 1.0f", "scale")
    >>> k(np.arange(3, dtype=np.float32), 2.0)  # doctest: +SKIP
    array([1., 3., 5.], dtype=float32)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .cuda import cuda_preamble

__all__ = ["HostKernel", "HostCompileError", "build", "gradtape_kernel", "compiler", "compiler_unavailable_reason",
           "cache_dir", "C_TYPES", "HOST_HEADER"]

#: CuPy's C type name of each dtype a kernel parameter may have.
C_TYPES = {"bool": "bool", "int8": "signed char", "uint8": "unsigned char", "int16": "short",
           "uint16": "unsigned short", "int32": "int", "uint32": "unsigned int",
           "int64": "long long", "uint64": "unsigned long long", "float16": "float16",
           "float32": "float", "float64": "double"}

#: What a CuPy kernel sees before its preamble, for the host: CUDA qualifiers as no-ops, the
#: device-only math functions, ``__half`` with its conversions, and CuPy's ``float16`` class.
HOST_HEADER = r"""
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>
#define __device__
#define __host__
#define __forceinline__ inline
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }

/* IEEE binary16 <-> binary32, round to nearest even (as __float2half_rn). */
static inline unsigned short gt_host_f2h(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    const unsigned short sign = (unsigned short)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);   /* inf, or rounds to it */
    if (a < 0x38800000u) {                                             /* half subnormal or 0 */
        if (a < 0x33000000u) return sign;                              /* below 2^-25: 0 */
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e;
        uint32_t q = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return (unsigned short)(sign | q);
    }
    uint32_t r = a - 0x38000000u;                                      /* rebias 127 -> 15 */
    r += 0xfffu + ((r >> 13) & 1u);
    return (unsigned short)(sign | (r >> 13));
}
static inline float gt_host_h2f(unsigned short h) {
    const uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    const uint32_t e = ((uint32_t)h >> 10) & 0x1fu, m = (uint32_t)h & 0x3ffu;
    uint32_t x;
    if (e == 0x1fu) x = sign | 0x7f800000u | (m << 13);
    else if (e == 0u) {
        float v = (float)m * 5.9604644775390625e-08f;                 /* m * 2^-24, exact */
        return sign ? -v : v;
    } else x = sign | ((e + 112u) << 23) | (m << 13);
    float f; memcpy(&f, &x, 4); return f;
}

/* The cuda_fp16.h subset the preamble's __half overloads use. */
#define __CUDA_FP16_H__
struct __half { unsigned short x; };
static inline __half __float2half(float f) { __half h; h.x = gt_host_f2h(f); return h; }
static inline float __half2float(__half h) { return gt_host_h2f(h.x); }

/* CuPy's float16 storage class (cupy/float16.cuh): implicit from float, explicit from the
   other arithmetic types, read as float. */
class float16 {
  private:
    unsigned short data_;
  public:
    float16() {}
    float16(float v) : data_(gt_host_f2h(v)) {}
    explicit float16(double v) : data_(gt_host_f2h((float)v)) {}
    explicit float16(bool v) : data_(gt_host_f2h((float)v)) {}
    explicit float16(int v) : data_(gt_host_f2h((float)v)) {}
    explicit float16(long long v) : data_(gt_host_f2h((float)v)) {}
    explicit float16(const __half &v) : data_(v.x) {}
    operator float() const { return gt_host_h2f(data_); }
    float16 &operator=(const float16 &) = default;
    template <typename T> float16 &operator=(const T &rhs) {
        *this = static_cast<float16>(rhs); return *this; }
};
"""

_FLAGS = ("-O1", "-std=c++14", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
          "-fno-strict-aliasing")
_MAX_DIMS = 32


class HostCompileError(RuntimeError):
    """The host compiler rejected a kernel (the message holds its diagnostics)."""


# --------------------------------------------------------------------------- the compiler
_compiler_lock = threading.Lock()
_compiler: tuple[str | None, str, str] | None = None  # (path, identity, reason)


def _find_compiler() -> tuple[str | None, str, str]:
    global _compiler
    if _compiler is None:
        with _compiler_lock:
            if _compiler is None:
                cand = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") \
                    or shutil.which("clang++")
                if not cand:
                    _compiler = (None, "", "no C++ compiler found (set CXX, or install g++)")
                else:
                    try:
                        res = subprocess.run([cand, "--version"], capture_output=True, text=True,
                                             timeout=60)
                        ident = res.stdout.splitlines()[0] if res.stdout else cand
                        if res.returncode != 0:
                            raise OSError(res.stderr.strip()[:200])
                        _compiler = (cand, ident, "")
                    except (OSError, subprocess.SubprocessError) as exc:
                        _compiler = (None, "", f"the C++ compiler {cand!r} does not run ({exc})")
    return _compiler


def compiler() -> str | None:
    """The host C++ compiler's path (``$CXX``, else ``g++``, ``c++``, ``clang++``), or None."""
    return _find_compiler()[0]


def compiler_unavailable_reason() -> str | None:
    """Why kernels cannot be compiled here, or None when they can."""
    path, _, reason = _find_compiler()
    return None if path else reason


def cache_dir() -> str:
    """Where compiled libraries are kept (created on first use)."""
    base = os.environ.get("GRADTAPE_HOSTCUDA_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "gradtape", "hostcuda")
        try:
            os.makedirs(base, exist_ok=True)
        except OSError:
            base = os.path.join(tempfile.gettempdir(), f"gradtape-hostcuda-{os.getuid()}")
    os.makedirs(base, exist_ok=True)
    return base


# --------------------------------------------------------------------------- kernels
class _Param:
    __slots__ = ("ctype", "dtype", "name", "raw")

    def __init__(self, text: str, what: str) -> None:
        parts = text.split()
        if len(parts) == 3 and parts[0] == "raw":
            raise NotImplementedError(f"HostKernel: raw parameters are not supported ({text!r})")
        if len(parts) != 2 or not parts[1].isidentifier():
            raise ValueError(f"HostKernel: {what} parameter {text!r} is not '<type> <name>'")
        self.ctype, self.name = parts
        self.raw = False
        self.dtype: np.dtype | None = None  # one letter (as CuPy): a type placeholder such as T
        if len(self.ctype) > 1:
            try:
                self.dtype = np.dtype(self.ctype)
            except TypeError:
                raise TypeError(f"HostKernel: parameter {self.name!r} has unknown type "
                                f"{self.ctype!r}") from None
            if self.dtype.name not in C_TYPES:
                raise TypeError(f"HostKernel: parameter {self.name!r} has unsupported dtype {self.dtype}")


def _params(text: str, what: str) -> tuple[_Param, ...]:
    return tuple(_Param(p, what) for p in text.split(",")) if text.strip() else ()


_libraries: dict[str, ctypes.CDLL] = {}
_lib_lock = threading.Lock()
# C symbol (a hash of the kernel's source) -> its loaded function, for the process: a kernel
# made again (another HostKernel object with the same text) finds it without compiling
_functions: dict[str, Any] = {}


class HostKernel:
    """A CuPy ``ElementwiseKernel`` run on the host (see the module docstring).

    Args:
        in_params, out_params: CuPy's parameter lists, e.g. ``"float32 a0, float32 p0"``.
        operation: the loop body (CUDA C++).
        name: the kernel's name (the C symbol is derived from the source's hash).
        preamble: code placed before the kernel (``kernels/preamble.cuh`` for gradtape's).

    Calling it with the inputs (and optionally the outputs) runs the body once per element of
    the broadcast shape and returns the output array (a tuple for several outputs).
    """

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 preamble: str = "", **kwargs: Any) -> None:
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f'Invalid kernel name: "{name}"')
        if kwargs.get("reduce_dims", True) is not True or kwargs.get("no_return") \
                or kwargs.get("return_tuple") or kwargs.get("loop_prep") or kwargs.get("after_loop"):
            raise NotImplementedError(f"HostKernel: options {sorted(kwargs)} are not supported")
        self.in_params = _params(in_params, "input")
        self.out_params = _params(out_params, "output")
        names = [p.name for p in self.in_params + self.out_params]
        if "i" in names:
            raise ValueError("Can not use 'i' as a parameter name")
        if len(set(names)) != len(names):
            raise ValueError(f"HostKernel {name}: repeated parameter names {names}")
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.operation = operation
        self.name = name
        self.preamble = preamble
        self._fns: dict[tuple, Any] = {}  # resolved types -> ctypes function

    # --- the C source ------------------------------------------------------------------------
    def _types(self, in_types: tuple[np.dtype, ...], out_types: tuple[np.dtype, ...]) -> tuple:
        return tuple(t.name for t in in_types + out_types)

    def source(self, types: tuple[str, ...] | None = None) -> tuple[str, str]:
        """``(symbol, C++ function)`` for the resolved dtypes ``types`` (one per parameter,
        inputs then outputs; None: every parameter is typed)."""
        params = self.in_params + self.out_params
        if types is None:
            if any(p.dtype is None for p in params):
                raise TypeError(f"HostKernel {self.name}: type placeholders need argument dtypes")
            types = tuple(p.dtype.name for p in params)  # type: ignore[union-attr]
        typedefs: dict[str, str] = {}
        for p, t in zip(params, types):
            if p.dtype is None:
                typedefs[p.ctype] = C_TYPES[t]
        binds = []
        for k, (p, t) in enumerate(zip(params, types)):
            c = C_TYPES[t] if p.dtype is not None else p.ctype
            const = "const " if k < self.nin else ""
            binds.append(f"        {const}{c} &{p.name} = *({const}{c} *)(_ptr[{k}] + _off[{k}]);")
        n = len(params)
        body = "\n".join("        " + ln for ln in self.operation.splitlines())
        tdefs = "".join(f"    typedef {c} {t};\n" for t, c in sorted(typedefs.items()))
        text = (
            f"{tdefs}"
            f"    char *const *_ptr = _ptrs;\n"
            f"    long long _off[{n}], _idx[{_MAX_DIMS}];\n"
            f"    for (int _k = 0; _k < {n}; ++_k) _off[_k] = 0;\n"
            f"    for (int _d = 0; _d < _ndim; ++_d) _idx[_d] = 0;\n"
            f"    for (long long _i = 0; _i < _n; ++_i) {{\n"
            f"        const ptrdiff_t i = (ptrdiff_t)_i; (void)i;\n"
            + "\n".join(binds) + "\n"
            f"        do {{\n{body};\n        }} while (0);\n"
            f"        for (int _d = _ndim - 1; _d >= 0; --_d) {{\n"
            f"            ++_idx[_d];\n"
            f"            for (int _k = 0; _k < {n}; ++_k) _off[_k] += _st[_k * _ndim + _d];\n"
            f"            if (_idx[_d] < _shape[_d]) break;\n"
            f"            for (int _k = 0; _k < {n}; ++_k) _off[_k] -= _st[_k * _ndim + _d] * _shape[_d];\n"
            f"            _idx[_d] = 0;\n"
            f"        }}\n"
            f"    }}\n")
        digest = hashlib.sha1(repr((self.preamble, text)).encode()).hexdigest()[:20]
        symbol = f"gth_{self.name[:40]}_{digest}"
        fn = (f'extern "C" void {symbol}(char *const *_ptrs, const long long *_st, '
              f"const long long *_shape, int _ndim, long long _n) {{\n{text}}}\n")
        return symbol, fn

    # --- calling -----------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("block_size", None)
        kwargs.pop("stream", None)
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        n_args = len(args)
        if n_args not in (self.nin, self.nin + self.nout):
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either "
                            f"{self.nin} or {self.nin + self.nout} (with outputs), but given {n_args}.")
        for a in args:
            if not isinstance(a, (np.ndarray, np.generic, bool, int, float, complex)):
                raise TypeError(f"Unsupported type {type(a)}")
        ins = list(args[:self.nin])
        outs: list[Any] = list(args[self.nin:])
        for a in outs:
            if not isinstance(a, np.ndarray):
                raise TypeError("Output arguments type must be cupy.ndarray")
        # types, as CuPy's _decide_params_type_core: arrays match typed parameters exactly
        tdict: dict[str, np.dtype] = {}
        # outputs first, then the array inputs (scalars take their parameter's type)
        typed = [*zip(self.out_params, outs),
                 *((p, a) for p, a in zip(self.in_params, ins) if isinstance(a, np.ndarray))]
        for p, a in typed:
            if p.dtype is not None:
                if a.dtype != p.dtype:
                    raise TypeError(f"Type is mismatched. {p.name} {a.dtype} {p.dtype}")
            elif p.ctype in tdict and tdict[p.ctype] != a.dtype:
                raise TypeError(f"Type is mismatched. {p.name} {a.dtype} {tdict[p.ctype]} {p.ctype}")
            else:
                tdict[p.ctype] = a.dtype
        try:
            in_types = tuple(p.dtype if p.dtype is not None else tdict[p.ctype] for p in self.in_params)
            out_types = tuple(p.dtype if p.dtype is not None else tdict[p.ctype] for p in self.out_params)
        except KeyError as exc:
            raise TypeError(f"HostKernel {self.name}: the type {exc} is bound to no array") from None
        arrays = [a for a in (*ins, *outs) if isinstance(a, np.ndarray)]
        if not arrays:
            raise ValueError("Loop size is undecided.")
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        if outs:
            for a in outs:
                if a.shape != shape:
                    raise ValueError("Out shape is mismatched")
        else:
            outs = [np.empty(shape, t) for t in out_types]
        ret = outs[0] if self.nout == 1 else tuple(outs)
        size = 1
        for s in shape:
            size *= s
        if size == 0:
            return ret
        if len(shape) > _MAX_DIMS:
            raise ValueError(f"HostKernel: at most {_MAX_DIMS} dimensions, got {len(shape)}")
        views: list[np.ndarray] = []
        for a, t in zip(ins, in_types):
            if isinstance(a, np.ndarray):
                views.append(np.broadcast_to(a, shape))
            else:  # a scalar: converted to the parameter's dtype (CuPy's CScalar.apply_dtype)
                views.append(np.broadcast_to(np.array(a, dtype=t), shape))
        views.extend(outs)
        fn = self._function(self._types(in_types, out_types))
        flat = all(v.flags.c_contiguous or not any(v.strides) for v in views)
        if flat:
            dims = (size,)
            strides = [v.itemsize if any(v.strides) else 0 for v in views]
        else:
            dims = shape
            strides = [s for v in views for s in v.strides]
        ptrs = (ctypes.c_void_p * len(views))(*[v.ctypes.data for v in views])
        st = (ctypes.c_longlong * len(strides))(*strides)
        sh = (ctypes.c_longlong * len(dims))(*dims)
        fn(ptrs, st, sh, len(dims), size)
        return ret

    def _function(self, types: tuple[str, ...]) -> Any:
        fn = self._fns.get(types)
        if fn is None:
            typed = all(p.dtype is not None for p in self.in_params + self.out_params)
            build([self], None if typed else [types], jobs=1)
            fn = self._fns[types]
        return fn


def _library(source: str) -> ctypes.CDLL:
    """Compile ``source`` into a shared library (or find it in the cache) and load it."""
    path_cc, ident, reason = _find_compiler()
    if path_cc is None:
        raise HostCompileError(f"cannot compile host kernels: {reason}")
    digest = hashlib.sha256(repr((ident, _FLAGS, source)).encode()).hexdigest()[:32]
    lib = _libraries.get(digest)
    if lib is not None:
        return lib
    folder = cache_dir()
    path = os.path.join(folder, f"{digest}.so")
    if not os.path.isfile(path):
        src = os.path.join(folder, f"{digest}.{os.getpid()}.{threading.get_ident()}.cpp")
        tmp = src[:-4] + ".so"
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        try:
            res = subprocess.run([path_cc, *_FLAGS, "-o", tmp, src], capture_output=True,
                                 text=True, timeout=600)
            if res.returncode != 0:
                raise HostCompileError(_diagnose(res.stderr, source))
            os.replace(tmp, path)  # atomic: a concurrent process sees the whole file or none
        finally:
            for p in (src, tmp):
                if os.path.exists(p):
                    os.remove(p)
    with _lib_lock:
        lib = _libraries.get(digest)
        if lib is None:
            lib = _libraries[digest] = ctypes.CDLL(path)
    return lib


def _diagnose(stderr: str, source: str) -> str:
    lines = source.splitlines()
    quoted = []
    for m in re.finditer(r"\.cpp:(\d+):", stderr):
        ln = int(m.group(1))
        if 0 < ln <= len(lines):
            quoted.append(f"{ln}: {lines[ln - 1]}")
        if len(quoted) >= 6:
            break
    return "host compilation failed:\n" + stderr[-4000:] + "\n" + "\n".join(quoted)


def build(kernels: Sequence[HostKernel], types: Sequence[tuple[str, ...] | None] | None = None,
          jobs: int = 2) -> None:
    """Compile ``kernels`` (each for its parameters' dtypes, or for ``types[k]`` when given)
    into as few libraries as possible: kernels sharing a preamble go into one translation unit,
    split into up to ``jobs`` units compiled in parallel. Kernels already compiled are skipped."""
    pending: dict[str, list[tuple[HostKernel, tuple[str, ...], str, str]]] = {}
    for k, kern in enumerate(kernels):
        t = None if types is None else types[k]
        symbol, fn = kern.source(t)
        params = kern.in_params + kern.out_params
        resolved = t if t is not None else tuple(p.dtype.name for p in params)  # type: ignore[union-attr]
        if resolved in kern._fns:
            continue
        if symbol in _functions:
            kern._fns[resolved] = _functions[symbol]
            continue
        pending.setdefault(kern.preamble, []).append((kern, resolved, symbol, fn))
    units: list[tuple[str, list[tuple[HostKernel, tuple[str, ...], str, str]]]] = []
    for preamble, items in pending.items():
        seen: dict[str, tuple] = {}
        for it in items:
            seen.setdefault(it[2], it)
        uniq = sorted(seen.values(), key=lambda it: it[2])
        n_units = max(1, min(jobs, len(uniq) // 40 + 1))
        for u in range(n_units):
            part = uniq[u::n_units]
            if part:
                units.append((preamble, part))

    def compile_unit(unit: tuple[str, list]) -> tuple[ctypes.CDLL, list]:
        preamble, part = unit
        text = HOST_HEADER + "\n" + preamble + "\n" + "\n".join(it[3] for it in part)
        return _library(text), part

    if len(units) <= 1:
        results = [compile_unit(u) for u in units]
    else:
        with ThreadPoolExecutor(max_workers=min(jobs, len(units))) as pool:
            results = list(pool.map(compile_unit, units))
    bound: dict[str, Any] = {}
    for lib, part in results:
        for _, _, symbol, _ in part:
            f = getattr(lib, symbol)
            f.restype = None
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                          ctypes.c_longlong]
            bound[symbol] = f
    _functions.update(bound)
    for items in pending.values():
        for kern, resolved, symbol, _ in items:
            kern._fns[resolved] = bound[symbol]


def gradtape_kernel(in_params: str, out_params: str, body: str, name: str) -> HostKernel:
    """A :class:`HostKernel` with gradtape's preamble (``kernels/preamble.cuh``), as
    :func:`gradtape._src.codegen.cuda.cupy_kernel` builds its CuPy kernels."""
    return HostKernel(in_params, out_params, body, name, preamble=cuda_preamble())
