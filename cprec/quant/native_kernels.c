/* The CPU quantization kernels of cprec.quant.reference, in C (built by cprec/quant/native.py).
 *
 * Same math, operation for operation, as the torch functions in reference.py, so results are
 * bitwise the same: float32 throughout, no fused multiply-add (-ffp-contract=off), round half
 * to even (nearbyintf), NaN propagated like torch's min/max/clamp. Each function is one call
 * per tensor: a parallel range pass, then a parallel rounding pass, into a caller-allocated
 * output, on `threads` threads (torch's count: the caller passes torch.get_num_threads(), so
 * sweeps that share out the cores are obeyed whatever OpenMP runtime is loaded).
 * Why not torch.compile on CPU: in a training step every call arrives with caches
 * emptied by the convolutions, and its Python wrapper layers then cost ~0.2 ms per call;
 * a ctypes call into this library costs ~0.03 ms.
 */
#include <math.h>
#include <stdint.h>

#define EPS 1e-12f
/* below this many elements one thread does the work: waking the pool costs more */
#define PARALLEL_MIN 32768

/* One value into a running min/max (NaN recorded apart: torch's min/max propagate it).
 * A macro, not a function: it updates OpenMP simd reduction variables in place. */
#define WIDEN_RANGE(value, lo, hi, nan)   \
    do {                                  \
        const float v_ = (value);         \
        (lo) = v_ < (lo) ? v_ : (lo);     \
        (hi) = v_ > (hi) ? v_ : (hi);     \
        (nan) |= v_ != v_;                \
    } while (0)

/* reference.grid: scale and offset of the grid for [lo, hi]. zero_exact: the grid spans
 * [min(lo, 0), max(hi, 0)], offset = its integer zero point; else CPT's grid from lo to hi,
 * offset = lo. */
static void grid(float lo, float hi, float levels, int zero_exact, float *scale,
                 float *offset) {
    if (!zero_exact) {
        float s = (hi - lo) / levels;
        *scale = s < EPS ? EPS : s;
        *offset = lo;
        return;
    }
    lo = lo > 0.0f ? 0.0f : lo;
    hi = hi < 0.0f ? 0.0f : hi;
    float s = (hi - lo) / levels;
    s = s < EPS ? EPS : s;
    *scale = s;
    *offset = nearbyintf(-lo / s);
}

/* reference.round_nearest for one value, on the zero-exact grid (offset: zero point) */
static inline float round_to_grid(float v, float scale, float zero_point, float levels) {
    float q = nearbyintf(v / scale) + zero_point;
    q = q < 0.0f ? 0.0f : q;
    q = q > levels ? levels : q;
    return (q - zero_point) * scale;
}

/* reference.round_nearest for one value, on CPT's grid starting at lo (the offset) */
static inline float round_from_min(float v, float scale, float lo, float levels) {
    float q = (v - lo) / scale;
    q = q < 0.0f ? 0.0f : q;
    q = q > levels ? levels : q;
    return nearbyintf(q) * scale + lo;
}

/* The rounding pass over x[0..n) as an OpenMP worksharing loop: inside a parallel region
 * every thread takes its share, outside it one thread does all. One loop per grid, so each
 * vectorizes without a per-element branch. */
#define ROUND_LOOP(x, out, n, scale, offset, levels, zero_exact)                  \
    do {                                                                            \
        if (zero_exact) {                                                           \
            _Pragma("omp for simd schedule(static)")                                \
            for (int64_t i = 0; i < (n); i++)                                       \
                (out)[i] = round_to_grid((x)[i], (scale), (offset), (levels));      \
        } else {                                                                    \
            _Pragma("omp for simd schedule(static)")                                \
            for (int64_t i = 0; i < (n); i++)                                       \
                (out)[i] = round_from_min((x)[i], (scale), (offset), (levels));     \
        }                                                                           \
    } while (0)

static void round_nearest(const float *x, float *out, int64_t n, float scale, float offset,
                          float levels, int zero_exact, int threads) {
#pragma omp parallel if (n >= PARALLEL_MIN) num_threads(threads)
    ROUND_LOOP(x, out, n, scale, offset, levels, zero_exact);
}

/* reference.quant_tensor_batch_range; stats <- lo, hi, scale, offset. One parallel
 * region for both passes (one fork/join per call). */
void quant_tensor_batch_range(const float *x, float *out, int64_t n, float levels,
                              int zero_exact, float *stats, int threads) {
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
#pragma omp parallel if (n >= PARALLEL_MIN) num_threads(threads)
    {
#pragma omp for simd schedule(static) reduction(min : lo) reduction(max : hi) reduction(| : nan)
        for (int64_t i = 0; i < n; i++) {
            WIDEN_RANGE(x[i], lo, hi, nan);
        }
        /* after the loop's barrier every thread sees the reduced range */
        const float low = nan ? NAN : lo, high = nan ? NAN : hi;
        float scale, offset;
        grid(low, high, levels, zero_exact, &scale, &offset);
#pragma omp single nowait
        {
            stats[0] = low, stats[1] = high, stats[2] = scale, stats[3] = offset;
        }
        ROUND_LOOP(x, out, n, scale, offset, levels, zero_exact);
    }
}

/* reference.quant_tensor_given_range; stats <- scale, offset */
void quant_tensor_given_range(const float *x, float *out, int64_t n, float lo, float hi,
                              float levels, int zero_exact, float *stats, int threads) {
    grid(lo, hi, levels, zero_exact, &stats[0], &stats[1]);
    round_nearest(x, out, n, stats[0], stats[1], levels, zero_exact, threads);
}

/* reference.quant_per_channel over `channels` contiguous rows of `per` values;
 * scales and offsets get one value per channel */
void quant_per_channel(const float *w, float *out, int64_t channels, int64_t per, float levels,
                       int zero_exact, float *scales, float *offsets, int threads) {
#pragma omp parallel for if (channels * per >= PARALLEL_MIN) num_threads(threads) \
    schedule(static)
    for (int64_t c = 0; c < channels; c++) {
        const float *row = w + c * per;
        float lo = INFINITY, hi = -INFINITY;
        int nan = 0;
        for (int64_t i = 0; i < per; i++) {
            WIDEN_RANGE(row[i], lo, hi, nan);
        }
        if (nan) lo = hi = NAN;
        grid(lo, hi, levels, zero_exact, &scales[c], &offsets[c]);
        const float s = scales[c], off = offsets[c];
        float *dst = out + c * per;
        if (zero_exact) {
            for (int64_t i = 0; i < per; i++) dst[i] = round_to_grid(row[i], s, off, levels);
        } else {
            for (int64_t i = 0; i < per; i++) dst[i] = round_from_min(row[i], s, off, levels);
        }
    }
}

/* reference.uniform_from_hash: U[0, 1) with 24 bits from a murmur-style mix of index + key */
static inline float uniform_from_hash(uint32_t index, uint32_t key) {
    uint32_t h = (index + key) * 0x2C9277B5u;
    h ^= h >> 15;
    h *= 0x5BD1E995u;
    return (float)((h >> 8) & 0xFFFFFFu) * (1.0f / 16777216.0f);
}

/* reference.quant_stochastic; stats <- scale. One parallel region for both passes; a 32-bit
 * counter (n < 2^31, checked by the caller) keeps the hash's index arithmetic in 32-bit
 * vector lanes, ~15% faster than widening a 64-bit one. */
void quant_stochastic(const float *g, float *out, int64_t n, float levels, int32_t key,
                      float *stats, int threads) {
    const int32_t count = (int32_t)n;
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
#pragma omp parallel if (n >= PARALLEL_MIN) num_threads(threads)
    {
#pragma omp for simd schedule(static) reduction(min : lo) reduction(max : hi) reduction(| : nan)
        for (int32_t i = 0; i < count; i++) {
            WIDEN_RANGE(g[i], lo, hi, nan);
        }
        /* after the loop's barrier every thread sees the reduced range */
        const float low = nan ? NAN : lo, high = nan ? NAN : hi;
        float s = (high - low) / levels;
        s = s < EPS ? EPS : s;
#pragma omp single nowait
        stats[0] = s;
#pragma omp for simd schedule(static)
        for (int32_t i = 0; i < count; i++) {
            float q = floorf((g[i] - low) / s + uniform_from_hash((uint32_t)i, (uint32_t)key));
            q = q > levels ? levels : q;
            out[i] = q * s + low;
        }
    }
}

/* cprec.quant.mxblocks.quant_mx_blocks: OCP MX quantize-dequantize of x viewed as
 * (outer, L, inner), blocks of `block` consecutive elements along L (a shorter last block
 * is the zero-padded one: zeros change neither the amax nor the grid), one E8M0 scale per
 * block and inner index, as scales.quantize_e8m0 computes it: X from the block's amax by
 * rule 0 floor, 1 ceil, 2 even (NaN amax: X = NaN), v = clamp(x / X, +-maxv) rounded half
 * to even onto the element (kind 0: a float with man_bits and smallest normal exponent
 * min_exp, as elements.round_nearest_float; kind 1: int codes of 2^-man_bits, as
 * elements.round_saturated), times X. */
static inline uint32_t f2u(float f) {
    union { float f; uint32_t u; } c;
    c.f = f;
    return c.u;
}

static inline float u2f(uint32_t u) {
    union { float f; uint32_t u; } c;
    c.u = u;
    return c.f;
}

/* The rule as branch-free constants (so the scale loop vectorizes): even rounds amax half-up
 * to the element's mantissa first, ceil rounds the exponent up. */
typedef struct { uint32_t add, mask; int32_t up, emax; } E8M0Rule;

static E8M0Rule e8m0_rule(int rule, int emax, int man_bits) {
    E8M0Rule r = {0u, 0xFFFFFFFFu, 0, emax};
    if (rule == 2 && man_bits < 23) {
        r.add = 1u << (22 - man_bits);
        r.mask = 0x7F800000u;
    }
    r.up = rule == 1;
    return r;
}

static inline float e8m0_scale(float amax, E8M0Rule r) {
    const uint32_t bits = (f2u(amax) + r.add) & r.mask;
    int32_t e = (int32_t)((bits >> 23) & 0xFF) - 127 + (r.up & ((bits & 0x7FFFFFu) != 0)) - r.emax;
    e = e < -127 ? -127 : e;
    e = e > 128 ? 128 : e;
    /* code 0: 2^-127 (a float32 subnormal: bit 22); code 255 (or a NaN amax): NaN */
    const uint32_t code = (uint32_t)(e + 127);
    const uint32_t value = code == 0 ? 0x00400000u : code << 23;
    return u2f((amax != amax) | (code == 255) ? 0x7FC00000u : value);
}

static inline float mx_element(float v, int kind, int man_bits, uint32_t min_step, float maxv,
                               float unit, float top) {
    v = v < -maxv ? -maxv : (v > maxv ? maxv : v);
    if (kind == 0) {
        uint32_t e = f2u(v) & 0x7F800000u;
        e = e < min_step ? min_step : e;
        /* steps are powers of two: times the exact reciprocal is the division, bitwise */
        const uint32_t step = e - ((uint32_t)man_bits << 23);
        return nearbyintf(v * u2f(0x7F000000u - step)) * u2f(step);
    }
    float c = nearbyintf(v * (1.0f / unit));
    c = c < -top ? -top : (c > top ? top : c);
    return c * unit;
}

#define MX_CHUNK 256

/* One block of n contiguous elements (inner == 1: blocks along the last axis). */
static void mx_block_contiguous(const float *restrict x, float *restrict out, int64_t n, E8M0Rule rule,
                                int kind, int man_bits, uint32_t min_step, float maxv,
                                float unit, float top) {
    float amax = 0.0f;
    int nan = 0;
    for (int64_t l = 0; l < n; l++) {
        const float a = fabsf(x[l]);
        amax = a > amax ? a : amax;
        nan |= a != a;
    }
    if (nan) amax = NAN;
    const float scale = e8m0_scale(amax, rule), inv = 1.0f / scale;
    for (int64_t l = 0; l < n; l++)
        out[l] = mx_element(x[l] * inv, kind, man_bits, min_step, maxv, unit, top) * scale;
}

/* Blocks along L of an (L, inner) slab: one scale per block and inner index, the inner
 * index in chunks, so every loop runs along contiguous memory. */
static void mx_block_strided(const float *restrict x, float *restrict out, int64_t n,
                             int64_t inner, E8M0Rule rule, int kind, int man_bits,
                             uint32_t min_step, float maxv, float unit, float top) {
    for (int64_t i0 = 0; i0 < inner; i0 += MX_CHUNK) {
        const int64_t w = inner - i0 < MX_CHUNK ? inner - i0 : MX_CHUNK;
        float amax[MX_CHUNK], scale[MX_CHUNK], inv[MX_CHUNK];
        for (int64_t i = 0; i < w; i++) amax[i] = 0.0f;
        for (int64_t l = 0; l < n; l++) {
            const float *restrict row = x + l * inner + i0;
            for (int64_t i = 0; i < w; i++) {
                const float a = fabsf(row[i]);
                amax[i] = a > amax[i] || a != a ? a : amax[i]; /* a NaN stays: no a > NaN */
            }
        }
        /* 1 / X: exact (X a power of two, 2^-127 .. 2^127, or NaN) */
        for (int64_t i = 0; i < w; i++) {
            scale[i] = e8m0_scale(amax[i], rule);
            inv[i] = 1.0f / scale[i];
        }
        for (int64_t l = 0; l < n; l++) {
            const float *restrict row = x + l * inner + i0;
            float *restrict dst = out + l * inner + i0;
            for (int64_t i = 0; i < w; i++)
                dst[i] = mx_element(row[i] * inv[i], kind, man_bits, min_step, maxv, unit, top)
                    * scale[i];
        }
    }
}

void quant_mx_blocks(const float *x, float *out, int64_t outer, int64_t L, int64_t inner,
                     int64_t block, int rule, int emax, int kind, int man_bits, int min_exp,
                     float maxv, int threads) {
    const int64_t nb = (L + block - 1) / block, tasks = outer * nb;
    const uint32_t min_step = (uint32_t)(min_exp + 127) << 23;
    const float unit = ldexpf(1.0f, -man_bits), top = maxv / unit;
    const E8M0Rule r = e8m0_rule(rule, emax, man_bits);
#pragma omp parallel for if (outer * L * inner >= PARALLEL_MIN) num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t o = t / nb, l0 = (t % nb) * block;
        const int64_t n = (l0 + block < L ? l0 + block : L) - l0;
        const int64_t at = (o * L + l0) * inner;
        if (inner == 1)
            mx_block_contiguous(x + at, out + at, n, r, kind, man_bits, min_step, maxv, unit, top);
        else
            mx_block_strided(x + at, out + at, n, inner, r, kind, man_bits, min_step, maxv, unit,
                             top);
    }
}

/* int8.py's codes of values on a grid lo + k * scale: the byte of
 * nearbyintf((v - lo) / scale) + add (an integral float in -128..255: int8 or uint8 codes,
 * the caller's tensor type says which), as torch.round((v - lo) / scale) + add would give. */
void grid_codes(const float *v, uint8_t *out, int64_t n, float lo, float scale, float add,
                int threads) {
    const int32_t count = (int32_t)n;
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN) num_threads(threads)
    for (int32_t i = 0; i < count; i++) {
        out[i] = (uint8_t)(int32_t)(nearbyintf((v[i] - lo) / scale) + add);
    }
}
