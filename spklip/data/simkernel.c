#include <stddef.h>
#include <stdint.h>
/* Integrate-and-fire the planes a_k + w[j] (b_k - a_k) of `pairs` consecutive frame pairs, exactly as
   simulate.py's numpy loop: the same float64 operations in the same order, pixel by pixel (pixels are independent;
   each pixel's pairs and planes are done in time order). Pair k reads a0 + k * stride and b0 + k * stride (for a
   run of frames F: a0 = F, b0 = F + n, stride = n) and writes planes k * planes ... onto `out` [pairs * planes, n].
   The pixels go in cache-sized blocks, all pairs of a block before the next block, so the charge stays in the
   cache across frames and each frame is read from memory once.
   A call does the pixels [begin, end) of the n (n is also the row stride of `out` and the dark planes), so
   threads can share a frame's pixels: each owns its range of the charge and of every output row.
   Two entry points: spklip_fire reads float64 frames and returns how many of their values lie outside [0, 1] (NaN
   included; the caller raises), so no separate validation pass is needed; spklip_fire_u8 reads 8-bit frames and
   converts each value as numpy's `frames / 255.0` does (an exact double division), so no float64 copy is made. */
#define STEP(J, TH, DARK) { \
        double p = s * w[J] + ai; \
        DARK \
        const double x = c + p; \
        const double r = x >= (TH) ? (TH) : 0.0; \
        c = x - r; \
        o[(ptrdiff_t)(J) * n + i] = (uint8_t)(x >= (TH)); \
    }
#define DARK_ON p = p + dk[(ptrdiff_t)j * n + i]; p = p < 1.0 ? p : 1.0;
#define DARK_OFF
/* PP planes known at compile time: each pixel's planes in turn, unrolled, the charge kept in a register */
#define PIXELS(LOAD, TH, DARK, PP) \
    for (ptrdiff_t i = i0; i < i1; i++) { \
        const double ai = LOAD(a[i]), s = LOAD(b[i]) - ai, th = (TH); \
        double c = charge[i]; \
        for (int j = 0; j < (PP); j++) STEP(j, th, DARK) \
        charge[i] = c; \
    }
/* any number of planes: plane by plane over the block (which stays in the cache) */
#define PLANES(LOAD, TH, DARK) \
    for (int j = 0; j < planes; j++) \
        for (ptrdiff_t i = i0; i < i1; i++) { \
            const double ai = LOAD(a[i]), s = LOAD(b[i]) - ai, th = (TH); \
            double c = charge[i]; \
            STEP(j, th, DARK) \
            charge[i] = c; \
        }
/* one plane at w = 0 (P = 1, the CLI default): s * 0 + a is a for every finite s (and for a = -0: the charge then
   gets the same sum), so b is not read: one conversion per pixel instead of two */
#define HELD(LOAD, TH, DARK) \
    for (ptrdiff_t i = i0; i < i1; i++) { \
        const double ai = LOAD(a[i]), th = (TH); \
        double c = charge[i]; \
        const int j = 0; \
        double p = ai; \
        DARK \
        const double x = c + p; \
        const double r = x >= th ? th : 0.0; \
        c = x - r; \
        o[i] = (uint8_t)(x >= th); \
        charge[i] = c; \
        (void)j; \
    }
#define BY_PLANES(LOAD, TH, DARK) \
    if (planes == 1 && w[0] == 0.0) HELD(LOAD, TH, DARK) \
    else if (planes == 1) PIXELS(LOAD, TH, DARK, 1) \
    else if (planes == 2) PIXELS(LOAD, TH, DARK, 2) \
    else if (planes == 4) PIXELS(LOAD, TH, DARK, 4) \
    else PLANES(LOAD, TH, DARK)
#define AS_IS(x) (x)
#define FROM_U8(x) ((double)(x) / 255.0)
/* the out-of-range count of one block of a pair: a comparison per value, while the block is in the cache */
#define CHECK_F64 \
    for (ptrdiff_t i = i0; i < i1; i++) bad += !(a[i] >= 0.0 && a[i] <= 1.0) + !(b[i] >= 0.0 && b[i] <= 1.0);
#define CHECK_NONE
/* one pair's planes over the pixels [i0, i1): a function of its own so that every pointer is a restrict parameter
   (which the compiler trusts; restrict locals it may not, and the loops then lose their vectorisation) */
#define PAIR(NAME, T, LOAD, CHECK) \
    static inline __attribute__((always_inline)) ptrdiff_t NAME##_pair( \
            const T *restrict a, const T *restrict b, double *restrict charge, const double *restrict theta, \
            double theta0, const double *restrict w, int planes, const double *restrict dk, uint8_t *restrict o, \
            ptrdiff_t n, ptrdiff_t i0, ptrdiff_t i1) { \
        ptrdiff_t bad = 0; \
        CHECK \
        if (theta && dk) { BY_PLANES(LOAD, theta[i], DARK_ON) } \
        else if (theta) { BY_PLANES(LOAD, theta[i], DARK_OFF) } \
        else if (dk) { BY_PLANES(LOAD, theta0, DARK_ON) } \
        else { BY_PLANES(LOAD, theta0, DARK_OFF) } \
        return bad; \
    }
#define KERNEL(NAME, T, LOAD, CHECK) \
    PAIR(NAME, T, LOAD, CHECK) \
    CLONES ptrdiff_t NAME(const T *a0, const T *b0, ptrdiff_t stride, int pairs, double *charge, \
                          const double *theta, double theta0, const double *w, int planes, const double *dark, \
                          uint8_t *out, ptrdiff_t n, ptrdiff_t block, ptrdiff_t begin, ptrdiff_t end) { \
        ptrdiff_t bad = 0; \
        for (ptrdiff_t i0 = begin; i0 < end; i0 += block) { \
            const ptrdiff_t i1 = i0 + block < end ? i0 + block : end; \
            for (int k = 0; k < pairs; k++) \
                bad += NAME##_pair(a0 + k * stride, b0 + k * stride, charge, theta, theta0, w, planes, \
                                   dark ? dark + (ptrdiff_t)k * planes * n : NULL, out + (ptrdiff_t)k * planes * n, \
                                   n, i0, i1); \
        } \
        return bad; \
    }
/* x86-64: builds for wider vectors chosen at load time where the CPU has them, else SSE2 (5x slower here). The same
   IEEE operations in every build (no FMA: -ffp-contract=off), so the same bits. SPKLIP_CLONES=4: AVX-512
   (x86-64-v4, 1.3-1.7x the AVX2 build at 240x320 x 4 planes) and AVX2; 2: AVX2 only (compilers without v4). */
#if defined(SPKLIP_CLONES) && SPKLIP_CLONES >= 4
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#elif defined(SPKLIP_CLONES)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
KERNEL(spklip_fire, double, AS_IS, CHECK_F64)
KERNEL(spklip_fire_u8, uint8_t, FROM_U8, CHECK_NONE)
