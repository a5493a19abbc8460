/* The CPU quantization kernels of cprec.quant.kernels, in C (built by cprec/quant/native.py).
 *
 * Same math, operation for operation, as the torch functions in kernels.py, so results are
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

static void range_of(const float *x, int64_t n, float *lo_out, float *hi_out, int threads) {
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
#pragma omp parallel for simd if (n >= PARALLEL_MIN) num_threads(threads) schedule(static) \
    reduction(min : lo) reduction(max : hi) reduction(| : nan)
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        nan |= v != v;
    }
    *lo_out = nan ? NAN : lo;
    *hi_out = nan ? NAN : hi;
}

/* Scale and integer zero point of a grid spanning [min(lo, 0), max(hi, 0)] (kernels._grid). */
static void grid(float lo, float hi, float levels, float *scale, float *zero_point) {
    lo = lo > 0.0f ? 0.0f : lo;
    hi = hi < 0.0f ? 0.0f : hi;
    float s = (hi - lo) / levels;
    s = s < EPS ? EPS : s;
    *scale = s;
    *zero_point = nearbyintf(-lo / s);
}

static void round_nearest(const float *x, float *out, int64_t n, float scale,
                          float zero_point, float levels, int threads) {
#pragma omp parallel for simd if (n >= PARALLEL_MIN) num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float q = nearbyintf(x[i] / scale) + zero_point;
        q = q < 0.0f ? 0.0f : q;
        q = q > levels ? levels : q;
        out[i] = (q - zero_point) * scale;
    }
}

/* kernels.quant_tensor_batch_range; stats <- lo, hi, scale, zero point */
void quant_tensor_batch_range(const float *x, float *out, int64_t n, float levels,
                              float *stats, int threads) {
    range_of(x, n, &stats[0], &stats[1], threads);
    grid(stats[0], stats[1], levels, &stats[2], &stats[3]);
    round_nearest(x, out, n, stats[2], stats[3], levels, threads);
}

/* kernels.quant_tensor_given_range; stats <- scale, zero point */
void quant_tensor_given_range(const float *x, float *out, int64_t n, float lo, float hi,
                              float levels, float *stats, int threads) {
    grid(lo, hi, levels, &stats[0], &stats[1]);
    round_nearest(x, out, n, stats[0], stats[1], levels, threads);
}

/* kernels.quant_per_channel over `channels` contiguous rows of `per` values;
 * scales and zero_points get one value per channel */
void quant_per_channel(const float *w, float *out, int64_t channels, int64_t per, float levels,
                       float *scales, float *zero_points, int threads) {
#pragma omp parallel for if (channels * per >= PARALLEL_MIN) num_threads(threads) \
    schedule(static)
    for (int64_t c = 0; c < channels; c++) {
        const float *row = w + c * per;
        float lo = INFINITY, hi = -INFINITY;
        int nan = 0;
        for (int64_t i = 0; i < per; i++) {
            float v = row[i];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
            nan |= v != v;
        }
        if (nan) lo = hi = NAN;
        grid(lo, hi, levels, &scales[c], &zero_points[c]);
        float s = scales[c], zp = zero_points[c];
        for (int64_t i = 0; i < per; i++) {
            float q = nearbyintf(row[i] / s) + zp;
            q = q < 0.0f ? 0.0f : q;
            q = q > levels ? levels : q;
            out[c * per + i] = (q - zp) * s;
        }
    }
}

/* kernels._uniform_from_hash: U[0, 1) with 24 bits from a murmur-style mix of index + key */
static inline float uniform_from_hash(uint32_t index, uint32_t key) {
    uint32_t h = (index + key) * 0x2C9277B5u;
    h ^= h >> 15;
    h *= 0x5BD1E995u;
    return (float)((h >> 8) & 0xFFFFFFu) * (1.0f / 16777216.0f);
}

/* kernels.quant_stochastic; stats <- scale */
void quant_stochastic(const float *g, float *out, int64_t n, float levels, int32_t key,
                      float *stats, int threads) {
    float lo, hi;
    range_of(g, n, &lo, &hi, threads);
    float s = (hi - lo) / levels;
    s = s < EPS ? EPS : s;
    stats[0] = s;
#pragma omp parallel for simd if (n >= PARALLEL_MIN) num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float q = floorf((g[i] - lo) / s + uniform_from_hash((uint32_t)i, (uint32_t)key));
        q = q > levels ? levels : q;
        out[i] = q * s + lo;
    }
}
