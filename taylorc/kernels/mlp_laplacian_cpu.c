/* taylorc::mlp_laplacian on the CPU: value and collapsed Laplacian of a tanh MLP.
 *
 * Compiled at first use by taylorc/kernels/mlp_laplacian_cpu.py with the system C compiler
 * (-O3 -march=native -fopenmp, -DP=<padded width>, -DREAL_DOUBLE for float64: the exported
 * function is mlp_laplacian_tanh_f32 or _f64). Per hidden layer (Dangel, Mueller,
 * Zeinhofer 2024, "Collapsing Taylor mode AD", eq. 8 at K = 2):
 *
 *     z = v W^T + b,   z_r = v_r W^T,   z_s = s W^T
 *     v' = tanh(z),    v'_r = g1 z_r,   s' = g1 z_s + g2 sum_r z_r^2
 *
 * with g1 = 1 - tanh^2, g2 = -2 tanh g1, from v = x, v_r = e_r, s = 0 (the first layer's z_r
 * is the column W[:, r]: no GEMM). A tile of points keeps its whole jet (D + 2 rows of P per
 * point) in two buffers that stay in the core's cache from the coordinates to the output:
 * each layer is one register-blocked GEMM of the tile against W^T, then the Taylor step
 * over the tile. The GEMM's output never goes to memory, which is what the layered graph
 * (one ATen GEMM per coefficient block, then inductor's elementwise kernels) cannot avoid.
 * Threads: OpenMP over tiles, the runtime PyTorch already loaded (one libgomp).
 */
#include <stdlib.h>
#include <string.h>

#ifndef P
#error "compile with -DP=<padded width: 16, 32, 64 or 128>"
#endif

#ifdef REAL_DOUBLE
typedef double real;
typedef long long ielem;
#define RBYTES 8
#define KERNEL mlp_laplacian_tanh_f64
#else
typedef float real;
typedef int ielem;
#define RBYTES 4
#define KERNEL mlp_laplacian_tanh_f32
#endif

#if defined(__AVX512F__)
#define VBYTES 64
#ifndef CB
#define CB 4 /* vectors per micro-tile row */
#define MR 6 /* rows per micro-tile: 24 accumulators of 32 registers */
#endif
#else
#define VBYTES 32
#ifndef CB
#define CB 2
#define MR 6 /* 12 accumulators of 16 registers */
#endif
#endif
#define LANES (VBYTES / RBYTES)
#define COLS (CB * LANES)
#if P < COLS
#undef CB
#define CB (P / LANES)
#undef COLS
#define COLS P
#endif
#ifndef TILE
#define TILE 16 /* points per tile: the two buffers stay within L2 */
#endif

typedef real vf __attribute__((vector_size(VBYTES), aligned(RBYTES)));
typedef ielem vi __attribute__((vector_size(VBYTES), aligned(RBYTES)));

static inline vf splat(real a) { return (vf){} + a; }
static inline vf blend(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }

#ifndef REAL_DOUBLE
/* exp(x) for x <= 0 (Cephes expf's range reduction and polynomial) */
static inline vf exp_neg(vf x) {
  x = blend(x >= splat(-87.0f), x, splat(-87.0f));
  vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;
}

/* tanh of a = |x| (Cephes tanhf: an odd polynomial below 0.625, (1 - e) / (1 + e),
 * e = exp(-2a), above) */
static inline vf tanh_abs(vf a) {
  vf e = exp_neg(-2.0f * a);
  vf big = (1.0f - e) / (1.0f + e);
  vf z = a * a;
  vf small = -5.70498872745e-3f * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * a + a;
  return blend(a < splat(0.625f), small, big);
}
#else
/* tanh of a = |x| as -m / (2 + m), m = expm1(-2a): expm1(y) = 2^n expm1(r) + (2^n - 1) with
 * y = n ln2 + r, |r| <= ln2 / 2, and expm1(r) by its Taylor series to r^13 (error below
 * 1e-17 relative); n = 0 near 0, so small arguments keep their relative accuracy */
static inline vf tanh_abs(vf a) {
  vf y = -2.0 * a;
  y = blend(y >= splat(-40.0), y, splat(-40.0)); /* tanh is 1 in double beyond */
  vf n = (y * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
  vf r = y - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
  vf p = splat(1.0 / 6227020800.0); /* 1/13! */
  static const double inv[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                               1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                               1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                               1.0 / 6.0,         1.0 / 2.0,        1.0};
  for (int i = 0; i < 12; i++) p = p * r + inv[i];
  p = p * r; /* expm1(r) */
  vf s = (vf)((__builtin_convertvector(n, vi) + 1023) << 52); /* 2^n */
  vf m = s * p + (s - 1.0);
  return -m / (2.0 + m);
}
#endif

/* tanh with its sign and NaN (the clamps above would make NaN finite) */
static inline vf tanh_v(vf x) {
  const vi bit = (vi){} + ((ielem)1 << (8 * RBYTES - 1)); /* splat(-0.0) would be +0 */
  vi sign = (vi)x & bit;
  vf t = (vf)(((vi)tanh_abs((vf)((vi)x ^ sign)) & ~bit) | sign); /* tanh(+0) = +0 */
  return blend(x != x, x, t);
}

static inline vf load(const real *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(real *p, vf v) { memcpy(p, &v, sizeof v); }

/* C[rows, P] = A[rows, P] @ Wt[P, P], rows a multiple of MR */
static void tile_gemm(const real *A, const real *Wt, real *C, int rows) {
  for (int m = 0; m < rows; m += MR)
    for (int n = 0; n < P; n += COLS) {
      vf acc[MR][CB];
#pragma GCC unroll 8
      for (int r = 0; r < MR; r++)
#pragma GCC unroll 8
        for (int j = 0; j < CB; j++) acc[r][j] = splat(0);
      for (int k = 0; k < P; k++) {
        vf b[CB];
#pragma GCC unroll 8
        for (int j = 0; j < CB; j++) b[j] = load(Wt + k * P + n + j * LANES);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
          vf a = splat(A[(m + r) * P + k]);
#pragma GCC unroll 8
          for (int j = 0; j < CB; j++) acc[r][j] += a * b[j];
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; r++)
#pragma GCC unroll 8
        for (int j = 0; j < CB; j++) store(C + (m + r) * P + n + j * LANES, acc[r][j]);
    }
}

/* the Taylor step of tanh on one point's rows: C (z, z_1..z_D, z_s) -> A (v, v_r, s);
 * dirs = 0 before the output layer, which reads only v and s */
static void tanh_step(const real *C, const real *bias, real *A, int D, int dirs) {
  const int S = D + 1;
  for (int n = 0; n < P; n += LANES) {
    vf z = load(C + n) + load(bias + n);
    vf t = tanh_v(z);
    vf g1 = 1 - t * t;
    vf g2 = -2 * t * g1;
    vf sq = splat(0);
    for (int d = 1; d <= D; d++) {
      vf zr = load(C + d * P + n);
      sq += zr * zr;
      if (dirs) store(A + d * P + n, g1 * zr);
    }
    store(A + n, t);
    store(A + S * P + n, g1 * load(C + S * P + n) + g2 * sq);
  }
}

static real dot(const real *a, const real *b) {
  vf acc = splat(0);
  for (int k = 0; k < P; k += LANES) acc += load(a + k) * load(b + k);
  real t[LANES]; /* a tree: log2(LANES) dependent adds, not LANES */
  memcpy(t, &acc, sizeof t);
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) t[l] += t[l + w];
  return t[0];
}

/* one tile of pts points from p0 through every layer; A, C: (pts (D + 2) + MR) x P each */
static void tile(const real *x, const real *w, const real *wt, const real *b, real *u, real *lap,
                 long p0, int pts, int D, int L, int n_out, real *A, real *C) {
  const int R = D + 2;
  const int rows = ((pts * R + MR - 1) / MR) * MR;
  memset(C + pts * R * P, 0, (size_t)(rows - pts * R) * P * sizeof(real));
  memset(A + pts * R * P, 0, (size_t)(rows - pts * R) * P * sizeof(real));
  for (int p = 0; p < pts; p++) { /* layer 0: z = x W^T (bias in the step), z_r = W[:, r] */
    real *c = C + p * R * P;
    for (int n = 0; n < P; n++) c[n] = 0;
    for (int d = 0; d < D; d++) {
      const real xd = x[(p0 + p) * D + d];
      for (int n = 0; n < P; n++) c[n] += xd * wt[d * P + n];
      memcpy(c + (d + 1) * P, wt + d * P, P * sizeof(real));
    }
    memset(c + (D + 1) * P, 0, P * sizeof(real));
  }
  for (int l = 1; l < L; l++) {
    for (int p = 0; p < pts; p++)
      tanh_step(C + p * R * P, b + (l - 1) * P, A + p * R * P, D, l < L - 1);
    if (l < L - 1) tile_gemm(A, wt + (long)l * P * P, C, rows);
  }
  const real *wl = w + (long)(L - 1) * P * P, *bl = b + (long)(L - 1) * P;
  for (int p = 0; p < pts; p++) { /* the output layer: the value and s rows only */
    const real *a = A + p * R * P;
    real *uo = u + (p0 + p) * P, *lo = lap + (p0 + p) * P;
    for (int n = 0; n < P; n++) {
      uo[n] = n < n_out ? dot(a, wl + n * P) + bl[n] : 0;
      lo[n] = n < n_out ? dot(a + (D + 1) * P, wl + n * P) : 0;
    }
  }
}

/* x (B, D); w (L, P, P) packed (out, in); b (L, P);
 * u, lap (B, P): the network's value and Laplacian; columns >= n_out are set to zero;
 * threads: the OpenMP team's size (the caller's torch.get_num_threads()).
 * Returns 0, or 1 when a buffer could not be allocated (the outputs are then incomplete). */
int KERNEL(const real *x, const real *w, const real *b, real *u, real *lap, long B, int D,
           int L, int n_out, int threads) {
  real *wt = malloc((size_t)L * P * P * sizeof(real)); /* W^T per layer: the GEMMs' B */
  if (!wt) return 1;
  for (int l = 0; l < L; l++)
    for (int i = 0; i < P; i++)
      for (int j = 0; j < P; j++) wt[(long)l * P * P + j * P + i] = w[(long)l * P * P + i * P + j];
  const long tiles = (B + TILE - 1) / TILE;
  const size_t size = (size_t)(TILE * (D + 2) + MR) * P;
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    /* per thread, on the heap (P = 128 in double would ask 0.6 MB of a worker's stack),
     * cache-line aligned (size * sizeof(real) is a multiple of 64: P >= 16) */
    real *A = aligned_alloc(64, 2 * size * sizeof(real));
#pragma omp for schedule(static)
    for (long t = 0; t < tiles; t++) {
      const long p0 = t * TILE;
      if (A)
        tile(x, w, wt, b, u, lap, p0, (int)(B - p0 < TILE ? B - p0 : TILE), D, L, n_out, A,
             A + size);
    }
    if (!A) {
#pragma omp atomic write
      failed = 1;
    }
    free(A);
  }
  free(wt);
  return failed;
}
