#include <stddef.h>
#include <stdint.h>
/* Integrate-and-fire `planes` planes a + w[j] (b - a) of one frame pair, exactly as simulate.py's numpy loop:
   the same float64 operations in the same order, pixel by pixel (pixels are independent). */
#define STEP(J, TH, DARK) { \
        double p = s * w[J] + ai; \
        DARK \
        const double x = c + p; \
        const double r = x >= (TH) ? (TH) : 0.0; \
        c = x - r; \
        out[(ptrdiff_t)(J) * n + i] = (uint8_t)(x >= (TH)); \
    }
#define DARK_ON p = p + dark[(ptrdiff_t)j * n + i]; p = p < 1.0 ? p : 1.0;
#define DARK_OFF
/* PP planes known at compile time: each pixel's planes in turn, unrolled, the charge kept in a register */
#define PIXELS(TH, DARK, PP) \
    for (ptrdiff_t i = i0; i < i1; i++) { \
        const double ai = a[i], s = b[i] - ai, th = (TH); \
        double c = charge[i]; \
        for (int j = 0; j < (PP); j++) STEP(j, th, DARK) \
        charge[i] = c; \
    }
/* any number of planes: plane by plane over the block (which stays in the cache) */
#define PLANES(TH, DARK) \
    for (int j = 0; j < planes; j++) \
        for (ptrdiff_t i = i0; i < i1; i++) { \
            const double ai = a[i], s = b[i] - ai, th = (TH); \
            double c = charge[i]; \
            STEP(j, th, DARK) \
            charge[i] = c; \
        }
#define BY_PLANES(TH, DARK) \
    if (planes == 1) PIXELS(TH, DARK, 1) \
    else if (planes == 2) PIXELS(TH, DARK, 2) \
    else if (planes == 4) PIXELS(TH, DARK, 4) \
    else PLANES(TH, DARK)
#ifdef SPKLIP_CLONES /* x86-64: an AVX2 build chosen at load time where the CPU has it, else SSE2 */
__attribute__((target_clones("avx2", "default")))
#endif
void spklip_fire(const double *restrict a, const double *restrict b, double *restrict charge,
                 const double *restrict theta, double theta0, const double *restrict w, int planes,
                 const double *restrict dark, uint8_t *restrict out, ptrdiff_t n, ptrdiff_t block) {
    for (ptrdiff_t i0 = 0; i0 < n; i0 += block) {
        const ptrdiff_t i1 = i0 + block < n ? i0 + block : n;
        if (theta && dark) { BY_PLANES(theta[i], DARK_ON) }
        else if (theta) { BY_PLANES(theta[i], DARK_OFF) }
        else if (dark) { BY_PLANES(theta0, DARK_ON) }
        else { BY_PLANES(theta0, DARK_OFF) }
    }
}
