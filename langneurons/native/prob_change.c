/*
 * Exact change of attention probabilities when one query/key dimension is removed,
 * for every (head, dimension) pair of one document: the native kernel behind
 * langneurons.attention_change (see its docstring for the definition).
 *
 * For every query row (b, h, t) that counts (rows[b, t] != 0) and every lane d (a removed dimension):
 *   z[s, d]  = softcap(row[b, h, t, d] * col[b, h, s, d] * (raw[b, h, t, s] - delta_scale * delta[s, d]))
 *              + bias[b, h, t, s]
 *   delta    = left[b, h, t, 0, d] * right[b, h, s, 0, d] + left[b, h, t, 1, d] * right[b, h, s, 1, d]
 *   out[b, h, t, d] = sum_s (softmax_s(z[., d])[s] - probs[b, h, t, s])^2
 * over the columns from the first to the last key that the bias does not mask
 * (bias > -1.7e38: transformers masks with the float32 minimum); outside them
 * the probabilities are zero before and after. The lane is the innermost, contiguous axis, so each
 * step over s is a few vector instructions for all lanes, with no horizontal
 * reductions; a row's scores (n x lanes floats) stay in the first or second level cache.
 *
 * Attention without a soft-cap skips the pass that finds each lane's maximum when the
 * removal (and the scales) cannot move any logit of the row by more than SHIFT_LIMIT:
 * the exponentials are then shifted by the row's largest logit plus that lane's bound,
 * which is at least every new logit and at most 2 * SHIFT_LIMIT above the largest,
 * so nothing that matters underflows.
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

#if defined(__AVX512F__)
#include <immintrin.h>
/* exp_nonpositive on 16 lanes: the same reduction and polynomial, 2^k by scalef (which also
 * underflows to zero where the scalar version clamps); NaN stays NaN (max keeps its second operand). */
static inline __m512 exp16_nonpositive(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-100.0f), x);
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, k);
}
#endif

#define MASKED (-1.7e38f)
/* Bound on how far the removal may move a logit for the two-pass path (see the top). */
#define SHIFT_LIMIT 10.0f

/* Lanes are worked on in blocks of BLOCK (one 512-bit vector): a block's exponentials of a
 * row (n x BLOCK floats) stay in the first-level cache between the passes over the row. */
#define BLOCK 16
/* Query rows per task (and per slot of the output). */
#define TILE 32

typedef struct {
    float *scores; /* [n][BLOCK]: one lane block's exponentials (or scores) of the row */
    float *logit;  /* [n]: the row's logits raw + bias (plain attention) */
    float *ones;   /* [BLOCK] ones: the column scales where there are none */
} Workspace;

typedef struct {
    int64_t n_heads, n_lanes, n, bias_batch, bias_heads, ld;
    const float *raw, *bias, *probs, *left, *right, *right_bound, *row_scale, *column_scale, *column_bound;
    const uint8_t *rows;
    float delta_scale, softcap;
    float *out;
} Problem;

typedef struct {
    int64_t bh, t, s0, s1;
    const float *raw_row, *bias_row, *prob_row;
    float top, raw_abs; /* the largest logit and the largest |raw| of the row (shiftable rows) */
    int shiftable;      /* no soft-cap and a removal: the two-pass path may apply */
    int plain;          /* shiftable and no scales */
} Row;

/* Lanes [d0, d0 + width) of one row, width <= BLOCK; inlined with width = BLOCK for the full blocks. */
static inline __attribute__((always_inline)) void block_change(const Problem *P, const Row *R, int64_t d0,
                                                               int64_t width, float *o, Workspace *w) {
    const int64_t n = P->n, ld = P->ld, bh = R->bh, t = R->t, s0 = R->s0, s1 = R->s1;
    const float a = P->delta_scale, softcap = P->softcap;
    float l0[BLOCK], l1[BLOCK], rs[BLOCK], mx[BLOCK], sm[BLOCK], acc[BLOCK];
    const float *left = P->left ? P->left + (bh * n + t) * 2 * ld + d0 : NULL;
    const float *row_scale = P->row_scale ? P->row_scale + (bh * n + t) * ld + d0 : NULL;
    for (int64_t j = 0; j < width; j++) {
        l0[j] = left ? -a * left[j] : 0.0f;
        l1[j] = left ? -a * left[ld + j] : 0.0f;
        rs[j] = row_scale ? row_scale[j] : 1.0f;
        mx[j] = -INFINITY;
        sm[j] = 0.0f;
        acc[j] = 0.0f;
    }
    const float *r_base = P->right ? P->right + bh * n * 2 * ld + d0 : NULL;
    float *restrict z = w->scores - s0 * BLOCK; /* z + s * BLOCK: key s */
    int shifted = 0;
    if (R->shiftable) {
        /* each lane's bound on how far the removal moves a logit of the row:
         * |z - logit| = |(r c - 1) raw + r c (l0 r0 + l1 r1)|, r c within [lo, hi] */
        const float *b0 = P->right_bound + bh * 2 * ld + d0, *b1 = b0 + ld;
        const float *c_hi = P->column_bound ? P->column_bound + bh * 2 * ld + d0 : NULL;
        const float *c_lo = c_hi ? c_hi + ld : NULL;
        float widest = 0.0f;
        for (int64_t j = 0; j < width; j++) {
            const float lo = rs[j] * (c_lo ? c_lo[j] : 1.0f), hi = rs[j] * (c_hi ? c_hi[j] : 1.0f);
            const float stretch = fmaxf(fabsf(lo - 1.0f), fabsf(hi - 1.0f)), amplitude = fmaxf(fabsf(lo), fabsf(hi));
            float bound = stretch * R->raw_abs + amplitude * (fabsf(l0[j]) * b0[j] + fabsf(l1[j]) * b1[j]);
            mx[j] = R->top + bound;
            widest = bound > widest || bound != bound ? bound : widest;
        }
        shifted = widest <= SHIFT_LIMIT; /* false for NaN too: then the three passes propagate it */
    }
#if defined(__AVX512F__)
    if (shifted && R->plain && width == BLOCK) { /* the two passes on one vector of lanes */
        const __m512 L0 = _mm512_loadu_ps(l0), L1 = _mm512_loadu_ps(l1), shift = _mm512_loadu_ps(mx);
        __m512 sum = _mm512_setzero_ps(), total = _mm512_setzero_ps();
        for (int64_t s = s0; s < s1; s++) {
            const float *r0 = r_base + s * 2 * ld;
            __m512 v = _mm512_sub_ps(_mm512_set1_ps(w->logit[s]), shift);
            v = _mm512_fmadd_ps(L0, _mm512_loadu_ps(r0), v);
            v = _mm512_fmadd_ps(L1, _mm512_loadu_ps(r0 + ld), v);
            const __m512 e = exp16_nonpositive(v);
            _mm512_store_ps(z + s * BLOCK, e);
            sum = _mm512_add_ps(sum, e);
        }
        const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
        for (int64_t s = s0; s < s1; s++) {
            const __m512 diff = _mm512_fmsub_ps(_mm512_load_ps(z + s * BLOCK), inverse, _mm512_set1_ps(R->prob_row[s]));
            total = _mm512_fmadd_ps(diff, diff, total);
        }
        _mm512_storeu_ps(o + d0, _mm512_add_ps(_mm512_loadu_ps(o + d0), total));
        return;
    }
#endif
    if (shifted && R->plain) {
        for (int64_t s = s0; s < s1; s++) {
            const float *restrict r0 = r_base + s * 2 * ld, *restrict r1 = r0 + ld;
            const float logit = w->logit[s];
            float *restrict zs = z + s * BLOCK;
#pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                float e = exp_nonpositive(logit + l0[j] * r0[j] + l1[j] * r1[j] - mx[j]);
                zs[j] = e;
                sm[j] += e;
            }
        }
    } else if (shifted) { /* query/key norms: row and column scales */
        for (int64_t s = s0; s < s1; s++) {
            const float *restrict r0 = r_base + s * 2 * ld, *restrict r1 = r0 + ld;
            const float *restrict cs = P->column_scale ? P->column_scale + (bh * n + s) * ld + d0 : w->ones;
            const float base = R->raw_row[s], bias = R->bias_row[s];
            float *restrict zs = z + s * BLOCK;
#pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                float e = exp_nonpositive((base + l0[j] * r0[j] + l1[j] * r1[j]) * (rs[j] * cs[j]) + bias - mx[j]);
                zs[j] = e;
                sm[j] += e;
            }
        }
    } else {
        for (int64_t j = 0; j < width; j++) mx[j] = -INFINITY;
        for (int64_t s = s0; s < s1; s++) {
            float *restrict zs = z + s * BLOCK;
            const float base = R->raw_row[s], bias = R->bias_row[s];
            const float *restrict r0 = r_base ? r_base + s * 2 * ld : NULL;
            const float *restrict r1 = r_base ? r0 + ld : NULL;
            const float *restrict cs = P->column_scale ? P->column_scale + (bh * n + s) * ld + d0 : NULL;
            if (r_base) {
#pragma omp simd
                for (int64_t j = 0; j < width; j++) zs[j] = base + l0[j] * r0[j] + l1[j] * r1[j];
            } else {
                for (int64_t j = 0; j < width; j++) zs[j] = base;
            }
            if (row_scale)
                for (int64_t j = 0; j < width; j++) zs[j] *= rs[j];
            if (cs)
                for (int64_t j = 0; j < width; j++) zs[j] *= cs[j];
            if (softcap > 0.0f) {
                const float inv_cap = 1.0f / softcap;
#pragma omp simd
                for (int64_t j = 0; j < width; j++) zs[j] = softcap * tanh_single(zs[j] * inv_cap);
            }
#pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                float v = zs[j] + bias;
                zs[j] = v;
                mx[j] = v > mx[j] ? v : mx[j];
            }
        }
        for (int64_t s = s0; s < s1; s++) {
            float *restrict zs = z + s * BLOCK;
#pragma omp simd
            for (int64_t j = 0; j < width; j++) {
                float e = exp_nonpositive(zs[j] - mx[j]);
                zs[j] = e;
                sm[j] += e;
            }
        }
    }
    for (int64_t j = 0; j < width; j++) sm[j] = 1.0f / sm[j];
    for (int64_t s = s0; s < s1; s++) {
        const float *restrict zs = z + s * BLOCK;
        const float p = R->prob_row[s];
#pragma omp simd
        for (int64_t j = 0; j < width; j++) {
            float diff = zs[j] * sm[j] - p;
            acc[j] += diff * diff;
        }
    }
    for (int64_t j = 0; j < width; j++) o[d0 + j] += acc[j];
}

/* Adds row (b, h, t)'s change of every lane to o. */
static void row_change(const Problem *P, int64_t b, int64_t h, int64_t t, float *o, Workspace *w) {
    const int64_t D = P->n_lanes, n = P->n, bh = b * P->n_heads + h;
    const int64_t hb = (P->bias_batch > 1 ? b : 0) * P->bias_heads + (P->bias_heads > 1 ? h : 0);
    if (!P->rows[b * n + t]) return;
    Row R = {bh, t, 0, n, P->raw + (bh * n + t) * n, P->bias + (hb * n + t) * n, P->probs + (bh * n + t) * n,
             -INFINITY, 0.0f, P->softcap <= 0.0f && P->left != NULL, 0};
    R.plain = R.shiftable && !P->row_scale && !P->column_scale;
    while (R.s0 < n && !(R.bias_row[R.s0] > MASKED)) R.s0++;
    while (R.s1 > R.s0 && !(R.bias_row[R.s1 - 1] > MASKED)) R.s1--;
    if (R.shiftable) {
        for (int64_t s = R.s0; s < R.s1; s++) {
            float logit = R.raw_row[s] + R.bias_row[s], size = fabsf(R.raw_row[s]);
            w->logit[s] = logit;
            R.top = logit > R.top ? logit : R.top;
            R.raw_abs = size > R.raw_abs || size != size ? size : R.raw_abs;
        }
    }
    int64_t d0 = 0;
    for (; d0 + BLOCK <= D; d0 += BLOCK) block_change(P, &R, d0, BLOCK, o, w);
    if (d0 < D) block_change(P, &R, d0, D - d0, o, w);
}

/* The argument list's version: langneurons.attention_change refuses a library whose version is not
 * the one it was written for (a source edited after the Python side was imported, say). */
int prob_change_abi(void) { return 2; }

/* Layouts (C order): raw, probs [B, H, n, n]; bias [1|B, 1|H, n, n]; rows [B, n];
 * left, right [B, H, n, 2, ld]; right_bound [B, H, 2, ld] (max over s of |right|);
 * row_scale, column_scale [B, H, n, ld]; column_bound [B, H, 2, ld] (max and min over s of
 * column_scale); the lane pointers start at the lane chunk's
 * first lane; out [B, H, ceil(n / TILE), n_lanes], each tile's sum over its rows that count.
 * Returns 0, or 1 when a workspace could not be allocated (out is then incomplete). */
int prob_change_rows(int64_t batch, int64_t n_heads, int64_t n_lanes, int64_t n, int64_t bias_batch,
                     int64_t bias_heads, int64_t ld,
                     const float *raw, const float *bias, const float *probs, const uint8_t *rows,
                     const float *left, const float *right, const float *right_bound, const float *row_scale,
                     const float *column_scale, const float *column_bound, float delta_scale, float softcap,
                     float *out, int threads) {
    const Problem P = {n_heads, n_lanes, n, bias_batch, bias_heads, ld, raw, bias, probs, left, right, right_bound,
                       row_scale, column_scale, column_bound, rows, delta_scale, softcap, out};
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#if defined(__SSE__)
        /* Flush subnormals to zero while this kernel runs: squares of tiny differences
         * would otherwise take the slow path. Restored below (the threads are torch's). */
        unsigned int saved_csr = _mm_getcsr();
        _mm_setcsr(saved_csr | 0x8040);
#endif
        Workspace w;
        w.scores = aligned_alloc(64, (size_t)n * BLOCK * sizeof(float));
        w.logit = aligned_alloc(64, (size_t)(n + 15) / 16 * 16 * sizeof(float));
        w.ones = aligned_alloc(64, BLOCK * sizeof(float));
        const int ready = w.scores && w.logit && w.ones;
        for (int j = 0; ready && j < BLOCK; j++) w.ones[j] = 1.0f;
        failed = !ready;
        /* one task per tile of TILE query rows of one (document, head), its sum in its own slot;
         * every thread takes part in the loop (a work-sharing loop must be met by all of them) */
        const int64_t n_tiles = (n + TILE - 1) / TILE;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < batch * n_heads * n_tiles; task++) {
            float *o = out + task * n_lanes;
            for (int64_t d = 0; d < n_lanes; d++) o[d] = 0.0f;
            const int64_t bh = task / n_tiles, t0 = task % n_tiles * TILE, t1 = t0 + TILE < n ? t0 + TILE : n;
            for (int64_t t = t0; t < t1 && ready; t++) row_change(&P, bh / n_heads, bh % n_heads, t, o, &w);
        }
        free(w.scores);
        free(w.logit);
        free(w.ones);
#if defined(__SSE__)
        _mm_setcsr(saved_csr);
#endif
    }
    return failed;
}
