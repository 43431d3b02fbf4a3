/* taylorc::mlp_laplacian on the CPU: value and collapsed Laplacian of a tanh MLP, float32.
 *
 * Compiled at first use by taylorc/kernels/mlp_laplacian_cpu.py with the system C compiler
 * (-O3 -march=native -fopenmp, -DP=<padded width>). Per hidden layer (Dangel, Mueller,
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
#define LANES (VBYTES / 4)
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
#define MAXD 16

typedef float vf __attribute__((vector_size(VBYTES), aligned(4)));
typedef int vi __attribute__((vector_size(VBYTES), aligned(4)));

static inline vf splat(float a) { return (vf){} + a; }

/* exp(x) for x <= 0 (Cephes expf's range reduction and polynomial) */
static inline vf exp_neg(vf x) {
  x = (vf)((vi)x & (vi)(x >= splat(-87.0f))) + (vf)((vi)splat(-87.0f) & (vi)(x < splat(-87.0f)));
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

/* tanh (Cephes tanhf: an odd polynomial below 0.625, (1 - e) / (1 + e), e = exp(-2|x|), above) */
static inline vf tanh_v(vf x) {
  vi sign = (vi)x & ((vi){} + (int)0x80000000); /* splat(-0.0f) would be +0 */
  vf a = (vf)((vi)x ^ sign);
  vf e = exp_neg(-2.0f * a);
  vf big = (1.0f - e) / (1.0f + e);
  vf z = a * a;
  vf small = -5.70498872745e-3f * z + 2.06390887954e-2f;
  small = small * z - 5.37397155531e-2f;
  small = small * z + 1.33314422036e-1f;
  small = small * z - 3.33332819422e-1f;
  small = small * z * a + a;
  vi m = (vi)(a < splat(0.625f));
  vi nan = (vi)(x != x); /* NaN stays NaN (the clamp in exp_neg would make it finite) */
  return (vf)(((((vi)small & m) | ((vi)big & ~m) | sign) & ~nan) | ((vi)x & nan));
}

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* C[rows, P] = A[rows, P] @ Wt[P, P], rows a multiple of MR */
static void tile_gemm(const float *A, const float *Wt, float *C, int rows) {
  for (int m = 0; m < rows; m += MR)
    for (int n = 0; n < P; n += COLS) {
      vf acc[MR][CB];
#pragma GCC unroll 8
      for (int r = 0; r < MR; r++)
#pragma GCC unroll 8
        for (int j = 0; j < CB; j++) acc[r][j] = splat(0.0f);
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
static void tanh_step(const float *C, const float *bias, float *A, int D, int dirs) {
  const int S = D + 1;
  for (int n = 0; n < P; n += LANES) {
    vf z = load(C + n) + load(bias + n);
    vf t = tanh_v(z);
    vf g1 = 1.0f - t * t;
    vf g2 = -2.0f * t * g1;
    vf sq = splat(0.0f);
    for (int d = 1; d <= D; d++) {
      vf zr = load(C + d * P + n);
      sq += zr * zr;
      if (dirs) store(A + d * P + n, g1 * zr);
    }
    store(A + n, t);
    store(A + S * P + n, g1 * load(C + S * P + n) + g2 * sq);
  }
}

static float dot(const float *a, const float *b) {
  vf acc = splat(0.0f);
  for (int k = 0; k < P; k += LANES) acc += load(a + k) * load(b + k);
  float t[LANES]; /* a tree: log2(LANES) dependent adds, not LANES */
  memcpy(t, &acc, sizeof t);
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int l = 0; l < w; l++) t[l] += t[l + w];
  return t[0];
}

/* x (B, D); w (L, P, P) packed (out, in); b (L, P);
 * u, lap (B, P): the network's value and Laplacian; columns >= n_out are set to zero;
 * threads: the OpenMP team's size (the caller's torch.get_num_threads()).
 * Returns 0, or 1 when the transposed weights could not be allocated (nothing written). */
int mlp_laplacian_tanh_f32(const float *x, const float *w, const float *b, float *u,
                           float *lap, long B, int D, int L, int n_out, int threads) {
  float *wt = malloc((size_t)L * P * P * sizeof(float)); /* W^T per layer: the GEMMs' B */
  if (!wt) return 1; /* out of memory: the caller raises */
  for (int l = 0; l < L; l++)
    for (int i = 0; i < P; i++)
      for (int j = 0; j < P; j++) wt[(long)l * P * P + j * P + i] = w[(long)l * P * P + i * P + j];
  const int R = D + 2;
  const long tiles = (B + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long tile = 0; tile < tiles; tile++) {
    float A[(TILE * (MAXD + 2) + MR) * P] __attribute__((aligned(64)));
    float C[(TILE * (MAXD + 2) + MR) * P] __attribute__((aligned(64)));
    const long p0 = tile * TILE;
    const int pts = (int)(B - p0 < TILE ? B - p0 : TILE);
    const int rows = ((pts * R + MR - 1) / MR) * MR;
    memset(C + pts * R * P, 0, (size_t)(rows - pts * R) * P * sizeof(float));
    memset(A + pts * R * P, 0, (size_t)(rows - pts * R) * P * sizeof(float));
    for (int p = 0; p < pts; p++) { /* layer 0: z = x W^T (bias in the step), z_r = W[:, r] */
      float *c = C + p * R * P;
      for (int n = 0; n < P; n++) c[n] = 0.0f;
      for (int d = 0; d < D; d++) {
        const float xd = x[(p0 + p) * D + d];
        for (int n = 0; n < P; n++) c[n] += xd * wt[d * P + n];
        memcpy(c + (d + 1) * P, wt + d * P, P * sizeof(float));
      }
      memset(c + (D + 1) * P, 0, P * sizeof(float));
    }
    for (int l = 1; l < L; l++) {
      for (int p = 0; p < pts; p++)
        tanh_step(C + p * R * P, b + (l - 1) * P, A + p * R * P, D, l < L - 1);
      if (l < L - 1) {
        tile_gemm(A, wt + (long)l * P * P, C, rows);
        continue;
      }
      const float *wl = w + (long)l * P * P, *bl = b + (long)l * P;
      for (int p = 0; p < pts; p++) { /* the output layer: the value and s rows only */
        const float *a = A + p * R * P;
        float *uo = u + (p0 + p) * P, *lo = lap + (p0 + p) * P;
        for (int n = 0; n < P; n++) {
          uo[n] = n < n_out ? dot(a, wl + n * P) + bl[n] : 0.0f;
          lo[n] = n < n_out ? dot(a + (D + 1) * P, wl + n * P) : 0.0f;
        }
      }
    }
  }
  free(wt);
  return 0;
}
