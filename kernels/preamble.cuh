// gradtape device helpers: prepended (as the `preamble`) to every generated backward kernel.
//
// Every function of the derivative-expression vocabulary (gradtape/_src/codegen/expr.py, FUNCTIONS)
// plus pow has an overload for float and for double, named gt_<name>. float overloads call
// the single-precision CUDA intrinsics (expf, tanhf, ...) so float32 kernels contain no
// double-precision instruction; literals inside are float (1.0f). __half overloads compute
// in float and round once on return (generated kernels instead widen their float16 loads to
// float and narrow at the store, which rounds once per kernel, not once per helper).
#ifndef GRADTAPE_PREAMBLE_CUH
#define GRADTAPE_PREAMBLE_CUH

#define GT_DEVICE static __device__ __forceinline__

#define GT_UNARY(name, fexpr, dexpr)                  \
    GT_DEVICE float gt_##name(float x) { return fexpr; } \
    GT_DEVICE double gt_##name(double x) { return dexpr; }

GT_UNARY(exp, expf(x), exp(x))
GT_UNARY(log, logf(x), log(x))
GT_UNARY(log1p, log1pf(x), log1p(x))
GT_UNARY(expm1, expm1f(x), expm1(x))
GT_UNARY(sqrt, sqrtf(x), sqrt(x))
GT_UNARY(rsqrt, rsqrtf(x), rsqrt(x))
GT_UNARY(sin, sinf(x), sin(x))
GT_UNARY(cos, cosf(x), cos(x))
GT_UNARY(tan, tanf(x), tan(x))
GT_UNARY(tanh, tanhf(x), tanh(x))
GT_UNARY(sinh, sinhf(x), sinh(x))
GT_UNARY(cosh, coshf(x), cosh(x))
GT_UNARY(arcsin, asinf(x), asin(x))
GT_UNARY(arccos, acosf(x), acos(x))
GT_UNARY(arctan, atanf(x), atan(x))
GT_UNARY(erf, erff(x), erf(x))
GT_UNARY(erfc, erfcf(x), erfc(x))
GT_UNARY(abs, fabsf(x), fabs(x))
GT_UNARY(square, x * x, x * x)
// sign: -1, 0 or 1 (NaN stays NaN, as NumPy's sign)
GT_UNARY(sign, (x > 0.0f) ? 1.0f : ((x < 0.0f) ? -1.0f : ((x == 0.0f) ? 0.0f : x)),
         (x > 0.0) ? 1.0 : ((x < 0.0) ? -1.0 : ((x == 0.0) ? 0.0 : x)))
// logistic exp(-log(1 + exp(-x))), as the CPU route: no overflow, precise in the negative
// tail (the form (tanh(x / 2) + 1) / 2 cancels to 0 there)
GT_UNARY(sigmoid, expf(-(fmaxf(-x, 0.0f) + log1pf(expf(-fabsf(x))))),
         exp(-(fmax(-x, 0.0) + log1p(exp(-fabs(x))))))
#undef GT_UNARY

GT_DEVICE float gt_pow(float a, float b) { return powf(a, b); }
GT_DEVICE double gt_pow(double a, double b) { return pow(a, b); }

template <typename T>
GT_DEVICE T gt_where(bool c, T a, T b) { return c ? a : b; }

#if defined(__CUDA_FP16_H__)
// float16: compute in float, round once.
#define GT_HALF_UNARY(name) \
    GT_DEVICE __half gt_##name(__half x) { return __float2half(gt_##name(__half2float(x))); }
GT_HALF_UNARY(exp) GT_HALF_UNARY(log) GT_HALF_UNARY(log1p) GT_HALF_UNARY(expm1)
GT_HALF_UNARY(sqrt) GT_HALF_UNARY(rsqrt) GT_HALF_UNARY(sin) GT_HALF_UNARY(cos)
GT_HALF_UNARY(tan) GT_HALF_UNARY(tanh) GT_HALF_UNARY(sinh) GT_HALF_UNARY(cosh)
GT_HALF_UNARY(arcsin) GT_HALF_UNARY(arccos) GT_HALF_UNARY(arctan) GT_HALF_UNARY(erf) GT_HALF_UNARY(erfc)
GT_HALF_UNARY(abs) GT_HALF_UNARY(square) GT_HALF_UNARY(sign) GT_HALF_UNARY(sigmoid)
#undef GT_HALF_UNARY
GT_DEVICE __half gt_pow(__half a, __half b) {
    return __float2half(powf(__half2float(a), __half2float(b)));
}
#endif

#endif  // GRADTAPE_PREAMBLE_CUH
