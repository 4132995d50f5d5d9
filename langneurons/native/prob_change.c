/*
 * Exact change of attention probabilities when one query/key dimension is removed,
 * for every (head, dimension) pair of one document: the native kernel behind
 * langneurons.attention_change (see its docstring for the definition).
 *
 * For every row (h, t) and every dimension d, with lanes over d:
 *   z[s, d]  = softcap(row[h, t, d] * col[h, s, d] * (raw[h, t, s] - delta_scale * delta[s, d])) + bias[t, s]
 *   delta    = left[h, t, 0, d] * right[h, s, 0, d] + left[h, t, 1, d] * right[h, s, 1, d]
 *   out[h, t, d] = sum_s (softmax_s(z[., d])[s] - probs[h, t, s])^2
 * over the columns from the first to the last key that the bias does not mask
 * (bias > -1.7e38: transformers masks with the float32 minimum); outside them
 * the probabilities are zero before and after. The dimension is the innermost, contiguous axis, so each
 * step over s is a few vector instructions for all dimensions, with no horizontal
 * reductions; a row's scores (n x D floats) stay in the first-level cache.
 *
 * Plain C99 + OpenMP, no Python or torch headers: built on first use by
 * langneurons.native with the system C compiler; when there is none, the torch
 * implementation runs instead.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

/* exp(x) for x <= 0 (scores minus their row maximum), Cephes single precision
 * (about 1 ulp); exactly 0 below -87, where float32 exp is subnormal or zero. */
static inline float exp_nonpositive(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float t = xc * 1.44269504088896341f + 12582912.0f; /* round(x / ln 2) in the low mantissa bits */
    int32_t tb;
    memcpy(&tb, &t, 4);
    float k = t - 12582912.0f;
    float r = xc - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
               + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    int32_t bits = (tb - 0x4B400000 + 127) << 23; /* 2^k */
    float scale;
    memcpy(&scale, &bits, 4);
    return x < -87.0f ? 0.0f : y * scale;
}

/* tanh, Cephes single precision (about 1 ulp): odd polynomial below 0.625, else (1 - e) / (1 + e), e = exp(-2|x|). */
static inline float tanh_single(float x) {
    float ax = fabsf(x);
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                   - 3.33332819422e-1f) * z * x + x;
    float e = exp_nonpositive(-2.0f * ax);
    float large = copysignf((1.0f - e) / (1.0f + e), x);
    return ax < 0.625f ? small : large;
}

#define MASKED (-1.7e38f)

typedef struct {
    float *scores, *row_max, *row_sum, *l0, *l1, *row_scale;
} Workspace;

static void row_change(int64_t h, int64_t t, int64_t n_dims, int64_t n, int64_t bias_heads, const float *raw,
                       const float *bias, const float *probs, const float *left, const float *right,
                       const float *row_scale, const float *column_scale, float delta_scale, float softcap,
                       float *out, Workspace *w) {
    const int64_t D = n_dims, hb = bias_heads > 1 ? h : 0;
    const float *raw_row = raw + (h * n + t) * n, *bias_row = bias + (hb * n + t) * n;
    const float *prob_row = probs + (h * n + t) * n;
    int64_t s0 = 0, s1 = n;
    while (s0 < n && !(bias_row[s0] > MASKED)) s0++;
    while (s1 > s0 && !(bias_row[s1 - 1] > MASKED)) s1--;
    float *o = out + (h * n + t) * D;
    float *restrict l0 = w->l0, *restrict l1 = w->l1, *restrict rs = w->row_scale;
    float *restrict mx = w->row_max, *restrict sm = w->row_sum;
    for (int64_t d = 0; d < D; d++) {
        l0[d] = left ? -delta_scale * left[((h * n + t) * 2) * D + d] : 0.0f;
        l1[d] = left ? -delta_scale * left[((h * n + t) * 2 + 1) * D + d] : 0.0f;
        rs[d] = row_scale ? row_scale[(h * n + t) * D + d] : 1.0f;
        mx[d] = -INFINITY;
        sm[d] = 0.0f;
        o[d] = 0.0f;
    }
    const int plain = !row_scale && !column_scale && softcap <= 0.0f && left;
    for (int64_t s = s0; s < s1; s++) {
        float *restrict z = w->scores + s * D;
        const float base = raw_row[s], b = bias_row[s];
        const float *restrict r0 = right ? right + ((h * n + s) * 2) * D : NULL;
        const float *restrict r1 = right ? r0 + D : NULL;
        if (plain) {
            const float logit = base + b;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) {
                float v = logit + l0[d] * r0[d] + l1[d] * r1[d];
                z[d] = v;
                mx[d] = v > mx[d] ? v : mx[d];
            }
        } else {
            const float *restrict cs = column_scale ? column_scale + (h * n + s) * D : NULL;
            for (int64_t d = 0; d < D; d++) z[d] = left ? base + l0[d] * r0[d] + l1[d] * r1[d] : base;
            if (row_scale)
                for (int64_t d = 0; d < D; d++) z[d] *= rs[d];
            if (cs)
                for (int64_t d = 0; d < D; d++) z[d] *= cs[d];
            if (softcap > 0.0f) {
                const float inv_cap = 1.0f / softcap;
#pragma omp simd
                for (int64_t d = 0; d < D; d++) z[d] = softcap * tanh_single(z[d] * inv_cap);
            }
#pragma omp simd
            for (int64_t d = 0; d < D; d++) {
                float v = z[d] + b;
                z[d] = v;
                mx[d] = v > mx[d] ? v : mx[d];
            }
        }
    }
    for (int64_t s = s0; s < s1; s++) {
        float *restrict z = w->scores + s * D;
#pragma omp simd
        for (int64_t d = 0; d < D; d++) {
            float e = exp_nonpositive(z[d] - mx[d]);
            z[d] = e;
            sm[d] += e;
        }
    }
    for (int64_t d = 0; d < D; d++) sm[d] = 1.0f / sm[d];
    for (int64_t s = s0; s < s1; s++) {
        const float *restrict z = w->scores + s * D;
        const float p = prob_row[s];
#pragma omp simd
        for (int64_t d = 0; d < D; d++) {
            float diff = z[d] * sm[d] - p;
            o[d] += diff * diff;
        }
    }
}

/* Returns 0, or 1 when a workspace could not be allocated (out is then incomplete). */
int prob_change_rows(int64_t n_heads, int64_t n_dims, int64_t n, int64_t bias_heads, const float *raw,
                     const float *bias, const float *probs, const float *left, const float *right,
                     const float *row_scale, const float *column_scale, float delta_scale, float softcap,
                     float *out, int threads) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#if defined(__SSE__)
        /* Flush subnormals to zero while this kernel runs: squares of tiny differences
         * would otherwise take the slow path. Restored below (the threads are torch's). */
        unsigned int saved_csr = _mm_getcsr();
        _mm_setcsr(saved_csr | 0x8040);
#endif
        const size_t width = (size_t)((n_dims + 15) / 16) * 16;
        Workspace w;
        w.scores = aligned_alloc(64, (size_t)n * width * sizeof(float));
        float *vectors = aligned_alloc(64, 5 * width * sizeof(float));
        const int ready = w.scores && vectors;
        failed = !ready;
        w.row_max = vectors;
        w.row_sum = vectors + width;
        w.l0 = vectors + 2 * width;
        w.l1 = vectors + 3 * width;
        w.row_scale = vectors + 4 * width;
        /* every thread takes part in the loop (a work-sharing loop must be met by all of them) */
#pragma omp for schedule(dynamic, 4)
        for (int64_t row = 0; row < n_heads * n; row++)
            if (ready)
                row_change(row / n, row % n, n_dims, n, bias_heads, raw, bias, probs, left, right, row_scale,
                           column_scale, delta_scale, softcap, out, &w);
        free(w.scores);
        free(vectors);
#if defined(__SSE__)
        _mm_setcsr(saved_csr);
#endif
    }
    return failed;
}
