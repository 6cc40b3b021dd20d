"""Compile the CUDA side with nvcc (no GPU needed): every source in kernels/ and every
generated backward kernel body (each elementwise primitive, and fused chains), in float16,
float32 and float64, for sm_80 and sm_90 with warnings as errors; float16/float32 PTX must
contain no double-precision instruction.

Generated bodies are wrapped in a small ``__global__`` harness that binds parameters the way
CuPy's ``ElementwiseKernel`` does: inputs as ``const`` values, outputs as references, the
float16 storage type named ``float16``. All kernels of a kind go into one translation unit
so the whole file costs a few nvcc invocations, run in parallel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import gradtape as gt
from gradtape import extend

# The generated CUDA text has no public face: the kernels are rendered here from the backward
# graphs of single records and of fused runs planned on real tapes (the engine's own steps).
from gradtape._src.autodiff import fusion as _fusion
from gradtape._src.autodiff.engine import forward_reach as _forward_reach
from gradtape._src.codegen import cuda as _codegen_cuda
from gradtape._src.codegen import graph as _codegen_graph
from gradtape.extend import REGISTRY

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").is_file() else None)
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (CUDA toolkit absent)")

ARCHS = ("80", "90")
DTYPES = ("float16", "float32", "float64")
C_TYPE = {"float16": "float16", "float32": "float", "float64": "double", "bool": "bool"}
ELEMENTWISE = sorted(name for name, p in REGISTRY.items() if p.is_elementwise)


@pytest.fixture(autouse=True)
def _fuse_short_runs():
    """These tests use small arrays; fuse runs of 3 or more members whatever their size (the
    default size thresholds are tested in test_fusion.py::test_small_runs_stay_unfused)."""
    with extend.fusion_thresholds(min_run_by_size=()):
        yield


def harness(kernel: _codegen_cuda.CudaKernel) -> str:
    """A __global__ function binding ``kernel``'s parameters as CuPy's ElementwiseKernel does."""
    params, binds = [], []
    for dtype, name in kernel.in_params:
        ctype = C_TYPE[dtype]
        if name.startswith("p"):  # scalar parameter: passed by value
            params.append(f"const {ctype} {name}")
        else:
            params.append(f"const {ctype}* __restrict__ _{name}")
            binds.append(f"const {ctype} {name} = _{name}[_i];")
    for dtype, name in kernel.out_params:
        ctype = C_TYPE[dtype]
        params.append(f"{ctype}* __restrict__ _{name}")
        binds.append(f"{ctype} &{name} = _{name}[_i];")
    params.append("const long long _n")
    body = "\n".join("    " + ln for ln in (*binds, *kernel.body.splitlines()))
    return (f'extern "C" __global__ void {kernel.name}({", ".join(params)}) {{\n'
            "  for (long long _i = (long long)blockIdx.x * blockDim.x + threadIdx.x; _i < _n;\n"
            "       _i += (long long)blockDim.x * gridDim.x) {\n"
            f"{body}\n  }}\n}}\n")


def translation_unit(kernels: list[_codegen_cuda.CudaKernel]) -> str:
    seen, parts = set(), []
    for k in kernels:
        if k.out_params and k.name not in seen:  # identical bodies share a name (content hash)
            seen.add(k.name)
            parts.append(harness(k))
    head = ("#include <cuda_fp16.h>\n"
            "typedef __half float16;  // CuPy's storage type name for float16\n"
            f'#include "{_codegen_cuda.kernels_dir()}/preamble.cuh"\n')
    return head + "\n".join(parts)


# --------------------------------------------------------------------------- kernels to build
def primitive_kernels(prim, dtype: str) -> list[_codegen_cuda.CudaKernel]:
    """The single-record backward of ``prim``: every float input differentiated; both the
    first-contribution (write) and the accumulate variants."""
    n = len(prim.arg_names)
    kinds = ["f"]  # leaf 0: gy
    dtypes = [dtype]
    for d in prim.domains:
        kinds.append("b" if d.kind == "bool" else "f")
        dtypes.append("bool" if d.kind == "bool" else dtype)
    kinds.append("f")  # y
    dtypes.append(dtype)
    targets, k = [], 0
    for i in range(n):
        if kinds[i + 1] == "b":
            targets.append(None)
        else:
            targets.append(("o", k))
            k += 1
    member = (prim, tuple(range(1, n + 1)), n + 1, tuple(range(len(prim.param_names))),
              tuple(targets))
    out = []
    for acc in (False, True):
        graph = _codegen_graph.backward_graph([member], tuple(kinds), len(prim.param_names), k)
        out.append(_codegen_cuda.render_cuda(graph, tuple(dtypes), dtype, (acc,) * k))
    return out


def chain_programs(dtype: str) -> list[_codegen_cuda.CudaKernel]:
    """Fused runs taken from real tapes: the benchmark chain, a broadcast/where/clip chain, and
    seeded random chains over the unary primitives."""
    rng = np.random.default_rng(3)
    x = gt.tensor(rng.uniform(0.2, 0.9, (4, 3)).astype(dtype))
    b = gt.tensor(rng.uniform(0.5, 1.5, (3,)).astype(dtype))

    def bench_chain(x, b):
        h = gt.cos(gt.sin(gt.exp(gt.tanh(x))))
        return ((h * x + 1.0) * (h * x + 1.0)) * 0.5

    def mixed(x, b):
        h = gt.where(x > 0.5, gt.sigmoid(x) / b, gt.leaky_relu(x - b, 0.1))
        h = gt.clip(h, -0.5, 0.8) + gt.maximum(h, b) * gt.pow(x, b)
        return gt.gelu(h, approximate="tanh") + gt.elu(h, 0.7)

    unary = ["tanh", "exp", "sin", "cos", "sigmoid", "softplus", "arctan", "square", "abs",
             "relu", "silu", "gelu", "erf", "expm1", "sinh"]

    def random_chain(seed):
        def f(x, b):
            r = np.random.default_rng(seed)
            h = x
            for _ in range(8):
                h = getattr(gt, str(r.choice(unary)))(h)
                if r.random() < 0.3:
                    h = h * b
            return h
        return f

    kernels = []
    for fn in (bench_chain, mixed, *(random_chain(s) for s in range(3))):
        with gt.GradientTape() as tape:
            tape.watch([x, b])
            y = fn(x, b)
        # the engine's planning step on the tape's records and tensor ids (no public face)
        reach = _forward_reach(tape._records, {x._id, b._id})
        runs = _fusion.plan(tape._records, reach, {x._id, b._id, y._id}).runs
        g = np.ones(y.shape, y.dtype)
        for run in runs.values():
            ga = run.gather(g if run.shape == y.shape else np.ones(run.shape, run.dtype), reach)
            if ga is None:
                continue
            n_out = len(ga.out_ids)
            for acc in ((False,) * n_out, (True,) * n_out):
                kernels.append(_codegen_cuda.render_cuda(ga.graph(), ga.dtype_names(), dtype, acc))
    return kernels


def all_kernels(dtypes: tuple[str, ...]) -> list[_codegen_cuda.CudaKernel]:
    out = []
    for dtype in dtypes:
        for name in ELEMENTWISE:
            out.extend(primitive_kernels(REGISTRY[name], dtype))
        out.extend(chain_programs(dtype))
    return out


def nvcc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def fail_text(res: subprocess.CompletedProcess, src: Path) -> str:
    lines = src.read_text().splitlines()
    msgs = []
    for m in re.finditer(r"\((\d+)\)", res.stderr):
        ln = int(m.group(1))
        msgs.append(f"{ln}: {lines[ln - 1] if 0 < ln <= len(lines) else ''}")
        if len(msgs) > 5:
            break
    return res.stderr[-4000:] + "\n" + "\n".join(msgs)


# --------------------------------------------------------------------------- tests
def test_every_primitive_renders():
    for name in ELEMENTWISE:
        for dtype in DTYPES:
            for k in primitive_kernels(REGISTRY[name], dtype):
                assert k.out_params or all(a is not None for a in k.alias), \
                    f"{name}: a gradient is neither computed nor passed through"
                if dtype != "float64":
                    assert "double" not in k.body, f"{name} {dtype}: double in body:\n{k.body}"


def test_generated_kernels_and_sources_compile(tmp_path):
    """One translation unit per target architecture holding every generated kernel of every
    dtype, plus each .cu source of kernels/ and a unit including every .cuh header."""
    kernels = all_kernels(DTYPES)
    assert len(kernels) > 3 * 2 * len(ELEMENTWISE)
    src = tmp_path / "generated.cu"
    src.write_text(translation_unit(kernels))
    kdir = Path(_codegen_cuda.kernels_dir())
    headers = tmp_path / "headers.cu"
    headers.write_text("#include <cuda_fp16.h>\n" + "".join(
        f'#include "{p}"\n' for p in sorted(kdir.glob("*.cuh")))
        + 'extern "C" __global__ void gt_headers_probe(float* o) { o[0] = gt_sigmoid(o[0]); }\n')
    jobs = [(src, arch) for arch in ARCHS]
    jobs += [(p, arch) for p in [headers, *sorted(kdir.glob("*.cu"))] for arch in ARCHS]

    def compile_one(job):
        path, arch = job
        res = nvcc(["--fatbin", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Werror",
                    "all-warnings", "-I", str(kdir), "-o", f"{path.stem}_{arch}.fatbin",
                    str(path)], tmp_path)
        return path, arch, res

    with ThreadPoolExecutor(max_workers=2) as pool:
        for path, arch, res in pool.map(compile_one, jobs):
            assert res.returncode == 0, f"nvcc sm_{arch} failed on {path.name}:\n{fail_text(res, path)}"


def f64_lines(ptx: str) -> dict[str, set[str]]:
    """Per kernel entry: its double-precision PTX lines, registers renumbered away."""
    found: dict[str, set[str]] = {}
    current = "?"
    for line in ptx.splitlines():
        m = re.match(r"\s*\.(?:visible\s+)?\.entry\s+(\w+)", line)
        if m:
            current = m.group(1)
        if re.search(r"\.f64\b", line) and not line.strip().startswith(".reg"):
            found.setdefault(current, set()).add(re.sub(r"%(\w+?)\d+", r"%\1", line.strip()))
    return found


def libdevice_baseline(tmp_path: Path) -> set[str]:
    """The f64 lines CUDA's own single-precision math brings (sinf/cosf/tanf's Payne-Hanek
    reduction for huge arguments multiplies in double on that rare path): every float helper
    of the preamble applied once."""
    names = [n for n in extend.FUNCTIONS if n != "where"] + ["pow"]
    calls = " + ".join(f"gt_{n}(x, x)" if n == "pow" else f"gt_{n}(x)" for n in names)
    src = tmp_path / "baseline.cu"
    src.write_text(f'#include "{_codegen_cuda.kernels_dir()}/preamble.cuh"\n'
                   'extern "C" __global__ void base(float* o) {\n'
                   f"  const float x = o[threadIdx.x];\n  o[threadIdx.x] = {calls};\n}}\n")
    res = nvcc(["--ptx", "-arch=sm_80", "-o", "baseline.ptx", str(src)], tmp_path)
    assert res.returncode == 0, res.stderr
    return set().union(*f64_lines((tmp_path / "baseline.ptx").read_text()).values())


def double_offenders(ptx: str, baseline: set[str]) -> dict[str, set[str]]:
    return {k: v - baseline for k, v in f64_lines(ptx).items() if v - baseline}


def test_single_precision_ptx_has_no_double_instructions(tmp_path):
    """float16/float32 kernels: no .f64 instruction of their own (a stray untyped literal would
    add some); only what CUDA's single-precision math library itself contains is tolerated."""
    baseline = libdevice_baseline(tmp_path)
    assert len(baseline) <= 4, f"unexpected double precision in CUDA's float math: {baseline}"
    kernels = all_kernels(("float16", "float32"))
    src = tmp_path / "single.cu"
    src.write_text(translation_unit(kernels))
    res = nvcc(["--ptx", "-arch=sm_80", "-Werror", "all-warnings", "-o", "single.ptx", str(src)],
               tmp_path)
    assert res.returncode == 0, fail_text(res, src)
    offenders = double_offenders((tmp_path / "single.ptx").read_text(), baseline)
    if offenders:
        bodies = {k.name: k.body for k in kernels}
        name, lines = next(iter(offenders.items()))
        pytest.fail(f"{len(offenders)} kernel(s) use double precision, e.g. {name}: "
                    f"{sorted(lines)[:4]}\n{bodies.get(name, '')}")


def test_ptx_lint_catches_an_untyped_literal(tmp_path):
    """The lint itself: a float kernel with a bare double literal is flagged."""
    baseline = libdevice_baseline(tmp_path)
    src = tmp_path / "bad.cu"
    src.write_text(f'#include "{_codegen_cuda.kernels_dir()}/preamble.cuh"\n'
                   'extern "C" __global__ void bad(float* o) { o[0] = gt_sin(o[0]) * 1.1; }\n')
    res = nvcc(["--ptx", "-arch=sm_80", "-o", "bad.ptx", str(src)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bad" in double_offenders((tmp_path / "bad.ptx").read_text(), baseline)
