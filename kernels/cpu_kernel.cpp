// The CPU solve of cai_aug.poisson in one compiled pass per (sample, channel) plane.
//
// Same algorithm as the torch loop of pcg.py (aggregation hierarchy with COARSE_SCALE, symmetric
// red-black Gauss-Seidel V-cycle, exact coarsest solve, PCG with the rtol / atol stopping rules),
// but a plane's whole solve runs here: its arrays (about a megabyte for a 180-px pattern) stay in
// the cache instead of ~30 full-array torch passes per CG iteration, and the per-call overhead of
// small canvases (hierarchy building, dozens of tiny torch calls per level) disappears.
//
// Arrays of a level are stored with a one-pixel zero halo (row stride w + 2), so the neighbour
// sums need no bounds checks: weights and values are zero there and never written.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

template <typename T>
struct Level {
  int h = 0, w = 0, wp = 0;  // interior size, padded row stride
  size_t size = 0;           // padded array length (h + 2) * (w + 2)
  T *we = nullptr, *ws = nullptr, *wd = nullptr;  // east, south, Dirichlet weights
  T *diag = nullptr, *inv = nullptr, *act = nullptr;
  T *b = nullptr, *x = nullptr;
};

template <typename T>
struct Plan {
  std::vector<Level<T>> levels;
  int k = 0;                 // unknowns of the coarsest level (its h * w)
  double *chol = nullptr;    // Cholesky factor of the coarsest operator, k x k
  double *tmp = nullptr;     // k
  T *rhs = nullptr, *xs = nullptr, *r = nullptr, *p = nullptr, *q = nullptr, *z = nullptr;
  T *om = nullptr, *kn = nullptr;  // unknowns and known in-image pixels of the finest level (blend only)
};

// the workspace of this thread, reused across samples and calls (fresh multi-megabyte arrays cost
// page faults on first touch, more than the arithmetic done in them)
template <typename T>
std::vector<T> &pool() {
  static thread_local std::vector<T> mem;
  return mem;
}
std::vector<double> &dpool() {
  static thread_local std::vector<double> mem;
  return mem;
}

// a thread keeps at most this much workspace between samples (a 1024 x 1024 ROI takes ~90 MiB in float32)
constexpr size_t KEEP_BYTES = size_t(256) << 20;

template <typename T>
void trim_pool() {
  std::vector<T> &mem = pool<T>();
  if (mem.size() * sizeof(T) > KEEP_BYTES) std::vector<T>().swap(mem);
}

template <typename T>
inline T nsum(const Level<T> &L, const T *x, size_t p) {
  return L.we[p - 1] * x[p - 1] + L.we[p] * x[p + 1] + L.ws[p - L.wp] * x[p - L.wp] + L.ws[p] * x[p + L.wp];
}

// the weights and values around one row, as pointers to its first pixel: loops over a row then index
// with a plain int (with size_t offsets into the level arrays gcc vectorises with gathers, ~2x slower)
template <typename T>
struct Row {
  const T *we, *ws, *wn;  // east and south weights of the row, south weights of the row above
  Row(const T *east, const T *south, size_t row, int wp) : we(east + row), ws(south + row), wn(south + row - wp) {}
  inline T sum(const T *x, const T *up, const T *down, int j) const {
    return we[j - 1] * x[j - 1] + we[j] * x[j + 1] + wn[j] * up[j] + ws[j] * down[j];
  }
};

template <typename T>
void plan(Plan<T> &P, int h, int w, int dense_max) {
  P.levels.clear();
  size_t total = 0;
  for (;;) {
    Level<T> L;
    L.h = h;
    L.w = w;
    L.wp = w + 2;
    L.size = static_cast<size_t>(h + 2) * (w + 2);
    P.levels.push_back(L);
    total += 8 * L.size;
    if (std::max(h, w) <= dense_max) break;
    h = (h + 1) / 2;
    w = (w + 1) / 2;
  }
  size_t n0 = P.levels[0].size;
  total += 8 * n0;
  std::vector<T> &mem = pool<T>();
  if (mem.size() < total) mem.resize(total);
  std::fill(mem.begin(), mem.begin() + total, T(0));
  T *cur = mem.data();
  for (auto &L : P.levels) {
    T **arrays[] = {&L.we, &L.ws, &L.wd, &L.diag, &L.inv, &L.act, &L.b, &L.x};
    for (T **a : arrays) {
      *a = cur;
      cur += L.size;
    }
  }
  T **cg[] = {&P.rhs, &P.xs, &P.r, &P.p, &P.q, &P.z, &P.om, &P.kn};
  for (T **a : cg) {
    *a = cur;
    cur += n0;
  }
  // the finest level's V-cycle reads r and writes z
  P.levels[0].b = P.r;
  P.levels[0].x = P.z;
  const Level<T> &C = P.levels.back();
  P.k = C.h * C.w;
  std::vector<double> &dm = dpool();
  size_t dn = static_cast<size_t>(P.k) * P.k + P.k;
  if (dm.size() < dn) dm.resize(dn);
  P.chol = dm.data();
  P.tmp = P.chol + static_cast<size_t>(P.k) * P.k;
}

// diag = D + E + S + W + N (the order of multigrid.make_level), its inverse and the active flag
template <typename T>
void finish_level(Level<T> &L) {
  for (int i = 0; i < L.h; ++i) {
    for (int j = 0; j < L.w; ++j) {
      size_t p = static_cast<size_t>(i + 1) * L.wp + j + 1;
      T d = L.wd[p] + L.we[p] + L.ws[p] + L.we[p - 1] + L.ws[p - L.wp];
      L.diag[p] = d;
      L.inv[p] = d > 0 ? T(1) / std::max(d, T(1e-30)) : T(0);
      L.act[p] = d > 0 ? T(1) : T(0);
    }
  }
}

// Galerkin coarsening of multigrid.coarsen: block sums of the edges leaving / Dirichlet weights
template <typename T>
void coarsen(const Level<T> &F, Level<T> &C, T scale) {
  for (int I = 0; I < C.h; ++I) {
    for (int J = 0; J < C.w; ++J) {
      size_t pc = static_cast<size_t>(I + 1) * C.wp + J + 1;
      size_t f00 = static_cast<size_t>(2 * I + 1) * F.wp + 2 * J + 1;
      size_t f10 = f00 + F.wp;
      C.we[pc] = (F.we[f00 + 1] + F.we[f10 + 1]) * scale;
      C.ws[pc] = (F.ws[f10] + F.ws[f10 + 1]) * scale;
      C.wd[pc] = (F.wd[f00] + F.wd[f00 + 1] + F.wd[f10] + F.wd[f10 + 1]) * scale;
    }
  }
}

// the coarsest operator as a dense SPD matrix (identity rows / columns for inactive pixels), factored
template <typename T>
void factor_coarsest(Plan<T> &P) {
  const Level<T> &L = P.levels.back();
  int k = P.k;
  double *A = P.chol;
  std::fill(A, A + static_cast<size_t>(k) * k, 0.0);
  for (int i = 0; i < L.h; ++i) {
    for (int j = 0; j < L.w; ++j) {
      int a = i * L.w + j;
      size_t p = static_cast<size_t>(i + 1) * L.wp + j + 1;
      A[static_cast<size_t>(a) * k + a] = L.act[p] > 0 ? static_cast<double>(L.diag[p]) : 1.0;
      if (j + 1 < L.w && L.we[p] != 0) {
        A[static_cast<size_t>(a) * k + a + 1] = -static_cast<double>(L.we[p]);
        A[static_cast<size_t>(a + 1) * k + a] = -static_cast<double>(L.we[p]);
      }
      if (i + 1 < L.h && L.ws[p] != 0) {
        A[static_cast<size_t>(a) * k + a + L.w] = -static_cast<double>(L.ws[p]);
        A[static_cast<size_t>(a + L.w) * k + a] = -static_cast<double>(L.ws[p]);
      }
    }
  }
  // in-place Cholesky, lower triangle
  for (int c = 0; c < k; ++c) {
    double d = A[static_cast<size_t>(c) * k + c];
    for (int m = 0; m < c; ++m) d -= A[static_cast<size_t>(c) * k + m] * A[static_cast<size_t>(c) * k + m];
    d = std::sqrt(std::max(d, 1e-300));
    A[static_cast<size_t>(c) * k + c] = d;
    for (int r = c + 1; r < k; ++r) {
      double s = A[static_cast<size_t>(r) * k + c];
      for (int m = 0; m < c; ++m) s -= A[static_cast<size_t>(r) * k + m] * A[static_cast<size_t>(c) * k + m];
      A[static_cast<size_t>(r) * k + c] = s / d;
    }
  }
}

template <typename T>
void coarsest_solve(const Plan<T> &P, const Level<T> &L) {
  int k = P.k;
  const double *A = P.chol;
  double *y = P.tmp;
  for (int a = 0; a < k; ++a) {
    size_t p = static_cast<size_t>(a / L.w + 1) * L.wp + a % L.w + 1;
    double s = L.b[p];
    for (int m = 0; m < a; ++m) s -= A[static_cast<size_t>(a) * k + m] * y[m];
    y[a] = s / A[static_cast<size_t>(a) * k + a];
  }
  for (int a = k - 1; a >= 0; --a) {
    double s = y[a];
    for (int m = a + 1; m < k; ++m) s -= A[static_cast<size_t>(m) * k + a] * y[m];
    y[a] = s / A[static_cast<size_t>(a) * k + a];
  }
  for (int a = 0; a < k; ++a) {
    size_t p = static_cast<size_t>(a / L.w + 1) * L.wp + a % L.w + 1;
    L.x[p] = static_cast<T>(y[a]) * L.act[p];
  }
}

// Every pass below works row by row, and consecutive passes are fused into one sweep down the
// plane with a lag of a row or two (a "wavefront"): a row is touched while its neighbours are still
// in the cache, instead of one trip through memory per pass. The lags are the dependencies of the
// unfused order, so the arithmetic is that order's exactly.

template <typename T>
inline size_t row_start(const Level<T> &L, int i) {
  return static_cast<size_t>(i + 1) * L.wp + 1;
}

// one row of one colour of Gauss-Seidel: x = (b + N x) / diag on pixels with (i + j) % 2 == colour
template <typename T>
inline void sweep_row(const Level<T> &L, int i, int colour) {
  size_t row = row_start(L, i);
  Row<T> R(L.we, L.ws, row, L.wp);
  T *x = L.x + row;
  const T *up = x - L.wp, *down = x + L.wp, *inv = L.inv + row, *b = L.b + row;
#pragma omp simd
  for (int j = (i + colour) & 1; j < L.w; j += 2) x[j] = inv[j] * (b[j] + R.sum(x, up, down, j));
}

// the red sweep from a zero guess needs no neighbours
template <typename T>
inline void red_from_zero_row(const Level<T> &L, int i) {
  size_t row = row_start(L, i);
  T *x = L.x + row;
  const T *inv = L.inv + row, *b = L.b + row;
#pragma omp simd
  for (int j = i & 1; j < L.w; j += 2) x[j] = inv[j] * b[j];
}

// coarse rhs row I: the block sums of the residual, zero on black after the black sweep, so only the
// two red pixels of each 2x2 block count
template <typename T>
inline void restrict_row(const Level<T> &L, const Level<T> &C, int I) {
  T *bc = C.b + row_start(C, I);
  size_t row0 = row_start(L, 2 * I), row1 = row0 + L.wp;
  Row<T> R0(L.we, L.ws, row0, L.wp), R1(L.we, L.ws, row1, L.wp);
  const T *x0 = L.x + row0, *b0 = L.b + row0, *d0 = L.diag + row0;
  const T *x1 = L.x + row1, *b1 = L.b + row1, *d1 = L.diag + row1;
  // blocks whose second red pixel (2I + 1, 2J + 1) lies in the level; the others have only the first
  int both = 2 * I + 1 < L.h ? L.w / 2 : 0;
#pragma omp simd
  for (int J = 0; J < both; ++J) {
    int j0 = 2 * J, j1 = 2 * J + 1;
    bc[J] = (b0[j0] - d0[j0] * x0[j0] + R0.sum(x0, x0 - L.wp, x0 + L.wp, j0)) +
            (b1[j1] - d1[j1] * x1[j1] + R1.sum(x1, x1 - L.wp, x1 + L.wp, j1));
  }
  for (int J = both; J < C.w; ++J) {
    int j0 = 2 * J;
    bc[J] = b0[j0] - d0[j0] * x0[j0] + R0.sum(x0, x0 - L.wp, x0 + L.wp, j0);
  }
}

// prolongation: only the red values survive the black sweep that follows
template <typename T>
inline void prolong_row(const Level<T> &L, const Level<T> &C, int i) {
  size_t row = row_start(L, i);
  T *x = L.x + row;
  const T *act = L.act + row, *xc = C.x + row_start(C, i / 2);
#pragma omp simd
  for (int j = i & 1; j < L.w; j += 2) x[j] += act[j] * xc[j / 2];
}

template <typename T>
inline double dot_row(const Level<T> &L, const T *a, const T *b, int i) {
  size_t row = row_start(L, i);
  a += row;
  b += row;
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < L.w; ++j) s += static_cast<double>(a[j]) * b[j];
  return s;
}

// the symmetric V-cycle of multigrid.vcycle / QuarteredLevel.vcycle from a zero guess: L.x = M L.b;
// with ``bx``, also the inner product of L.b and L.x (the r.z of CG)
template <typename T>
void vcycle(const Plan<T> &P, size_t l, double *bx = nullptr) {
  const Level<T> &L = P.levels[l];
  if (l + 1 == P.levels.size()) {
    coarsest_solve(P, L);
    if (bx) {
      *bx = 0;
      for (int i = 0; i < L.h; ++i) *bx += dot_row(L, L.b, L.x, i);
    }
    return;
  }
  const Level<T> &C = P.levels[l + 1];
  // pre-smoothing and restriction: red row k, black row k - 1 (its red neighbours are done), coarse
  // row (k - 3) / 2 (its fine rows 2I, 2I + 1 and their neighbours in row 2I + 2 are final)
  for (int k = 0; k <= 2 * C.h + 1; ++k) {
    if (k < L.h) red_from_zero_row(L, k);
    if (k >= 1 && k - 1 < L.h) sweep_row(L, k - 1, 1);
    if (k >= 3 && ((k - 3) & 1) == 0 && (k - 3) / 2 < C.h) restrict_row(L, C, (k - 3) / 2);
  }
  vcycle(P, l + 1);
  // post-smoothing: prolong row k, black row k - 1, red row k - 2 (both colours of row k - 2 final)
  double s = 0;
  for (int k = 0; k <= L.h + 1; ++k) {
    if (k < L.h) prolong_row(L, C, k);
    if (k >= 1 && k - 1 < L.h) sweep_row(L, k - 1, 1);
    if (k >= 2) {
      sweep_row(L, k - 2, 0);
      if (bx) s += dot_row(L, L.b, L.x, k - 2);
    }
  }
  if (bx) *bx = s;
}

// b - A x into out (interior), returns its squared norm
template <typename T>
double residual(const Level<T> &L, const T *b, const T *x, T *out) {
  double rr = 0;
  for (int i = 0; i < L.h; ++i) {
    size_t row = row_start(L, i);
    Row<T> R(L.we, L.ws, row, L.wp);
    const T *xr = x + row, *up = xr - L.wp, *down = xr + L.wp, *br = b + row, *diag = L.diag + row;
    T *o = out + row;
#pragma omp simd reduction(+ : rr)
    for (int j = 0; j < L.w; ++j) {
      T v = br[j] - diag[j] * xr[j] + R.sum(xr, up, down, j);
      o[j] = v;
      rr += static_cast<double>(v) * v;
    }
  }
  return rr;
}

// one plane's PCG: P.rhs and P.xs hold its right-hand side and initial guess (halo zero), P.xs the
// solution on return
template <typename T>
void solve_plane(Plan<T> &P, int64_t *iters_out, double *rel_out, double rtol, double atol, double stop_factor,
                 double atol_step_factor, int max_iter) {
  const Level<T> &L = P.levels[0];
  T *b = P.rhs, *x = P.xs, *r = P.r, *p = P.p, *q = P.q, *z = P.z;
  double bb = 0;
  for (int i = 0; i < L.h; ++i) bb += dot_row(L, b, b, i);
  double bnorm = std::sqrt(bb);
  double tol = stop_factor * rtol * bnorm;
  double tol2 = tol * tol;
  double rr = residual(L, b, x, r);
  bool active = rr > tol2;
  int64_t iters = 0;
  if (active && max_iter > 0) {
    double rz = 0;
    vcycle(P, 0, &rz);
    T beta = 0;
    for (int it = 0; it < max_iter; ++it) {
      // p = z + beta p (p = z at first) for row k, then q = A p, p.q and max |p| for row k - 1
      double pq = 0;
      T pmax = 0;
      for (int k = 0; k <= L.h; ++k) {
        if (k < L.h) {
          size_t row = row_start(L, k);
          if (it == 0) {
            std::memcpy(p + row, z + row, L.w * sizeof(T));
          } else {
#pragma omp simd
            for (int j = 0; j < L.w; ++j) p[row + j] = z[row + j] + beta * p[row + j];  // unit stride: no gather
          }
        }
        if (k >= 1) {
          size_t row = row_start(L, k - 1);
          Row<T> R(L.we, L.ws, row, L.wp);
          const T *pr = p + row, *up = pr - L.wp, *down = pr + L.wp, *diag = L.diag + row;
          T *qr = q + row;
#pragma omp simd reduction(+ : pq) reduction(max : pmax)
          for (int j = 0; j < L.w; ++j) {
            T v = diag[j] * pr[j] - R.sum(pr, up, down, j);
            qr[j] = v;
            pq += static_cast<double>(pr[j]) * v;
            pmax = std::max(pmax, std::abs(pr[j]));
          }
        }
      }
      double alpha = pq > 0 ? rz / pq : 0.0;
      T a = static_cast<T>(alpha);
      rr = 0;
      for (int i = 0; i < L.h; ++i) {
        size_t row = row_start(L, i);
        T *xr = x + row, *rr_ = r + row;
        const T *pr = p + row, *qr = q + row;
#pragma omp simd reduction(+ : rr)
        for (int j = 0; j < L.w; ++j) {
          xr[j] += a * pr[j];
          T v = rr_[j] - a * qr[j];
          rr_[j] = v;
          rr += static_cast<double>(v) * v;
        }
      }
      ++iters;
      active = rr > tol2;
      if (atol > 0) active = active && std::abs(alpha) * pmax > atol_step_factor * atol;
      if (!active) break;
      double rz_new = 0;
      vcycle(P, 0, &rz_new);
      beta = static_cast<T>(rz > 0 ? rz_new / rz : 0.0);
      rz = rz_new;
    }
  }
  // the true residual for the report
  double res = residual(L, b, x, q);
  *rel_out = bnorm > 0 ? std::sqrt(res) / bnorm : 0.0;
  *iters_out = iters;
}

// the coarse levels and the coarsest factor, once the finest level's weights are in place
template <typename T>
void build_levels(Plan<T> &P, T scale) {
  finish_level(P.levels[0]);
  for (size_t l = 1; l < P.levels.size(); ++l) {
    coarsen(P.levels[l - 1], P.levels[l], scale);
    finish_level(P.levels[l]);
  }
  factor_coarsest(P);
}

// pcg.pcg on assembled canvases (N, C, h, w), weights (N, 1, h, w)
template <typename T>
void solve(int n, int c, int h, int w, const T *east, const T *south, const T *dirichlet, const T *b, const T *guess,
           T *x, int64_t *iters, double *rel, double rtol, double atol, double stop_factor, double atol_step_factor,
           int max_iter, double coarse_scale, int dense_max) {
  size_t hw = static_cast<size_t>(h) * w;
  for (int s = 0; s < n; ++s) {
    Plan<T> P;
    plan(P, h, w, dense_max);
    Level<T> &F = P.levels[0];
    for (int i = 0; i < h; ++i) {
      size_t row = row_start(F, i);
      const size_t src = s * hw + static_cast<size_t>(i) * w;
      std::memcpy(F.we + row, east + src, w * sizeof(T));
      std::memcpy(F.ws + row, south + src, w * sizeof(T));
      std::memcpy(F.wd + row, dirichlet + src, w * sizeof(T));
    }
    build_levels(P, static_cast<T>(coarse_scale));
    for (int ch = 0; ch < c; ++ch) {
      size_t plane = static_cast<size_t>(s) * c + ch;
      for (int i = 0; i < h; ++i) {
        size_t row = row_start(F, i), src = plane * hw + static_cast<size_t>(i) * w;
        std::memcpy(P.rhs + row, b + src, w * sizeof(T));
        if (guess) std::memcpy(P.xs + row, guess + src, w * sizeof(T));
        else std::fill(P.xs + row, P.xs + row + w, T(0));
      }
      solve_plane(P, iters + plane, rel + plane, rtol, atol, stop_factor, atol_step_factor, max_iter);
      for (int i = 0; i < h; ++i) std::memcpy(x + plane * hw + static_cast<size_t>(i) * w, P.xs + row_start(F, i), w * sizeof(T));
    }
    trim_pool<T>();
  }
}

// system.assemble's right-hand side for one channel into P.rhs: over the in-image neighbours q of an
// unknown p, the guidance v(p, q) (source difference, or in mixed mode the larger of source and target
// difference) plus t(q) where q is known; ``tp``/``sp`` are t and s on the padded canvas, zero off the
// image. Returns sum (t - s) * Dirichlet weight, the numerator of system.initial_guess's offset.
template <typename T, bool Mixed>
double assemble_plane(Plan<T> &P, const T *tp, const T *sp) {
  const Level<T> &F = P.levels[0];
  const int wp = F.wp;
  const int offsets[4] = {1, -1, wp, -wp};  // east, west, south, north
  double shift = 0;
  for (int i = 0; i < F.h; ++i) {
    size_t row = row_start(F, i);
    const T *t = tp + row, *s = sp + row, *om = P.om + row, *kn = P.kn + row, *wd = F.wd + row;
    T *rhs = P.rhs + row;
#pragma omp simd reduction(+ : shift)
    for (int j = 0; j < F.w; ++j) {
      T sum = 0;
      for (int d = 0; d < 4; ++d) {
        const int q = j + offsets[d];
        T v = s[j] - s[q];
        if (Mixed) {
          T vt = t[j] - t[q];
          v = std::abs(vt) > std::abs(v) ? vt : v;
        }
        sum += (om[q] + kn[q]) * v + kn[q] * t[q];
      }
      rhs[j] = om[j] * sum;
      shift += static_cast<double>(t[j] - s[j]) * wd[j];
    }
  }
  return shift;
}

// blend.poisson_blend's whole CPU schedule for the selected samples: per sample, its ROI of the images
// becomes the canvas (pixels beyond it are no pixels), the system of system.assemble is set up there,
// every channel is solved and the unknowns are written into ``out``. One sample at a time, so no
// canvas is shared: each gets the hierarchy of its own ROI, which is the one it gets on any larger
// canvas of the same depth (aggregation is anchored at the canvas origin), the scheduler's buckets.
//   t, s, out: (B, C, H, W); omega, inside: (B, 1, H, W) 0/1 bytes (inside may be null: all), any
//   strides: ``strides`` holds (batch, channel, row, column) strides in elements for t, s, out, omega,
//   inside in turn (a permuted, channels-last input is read in place: a contiguous copy costs more
//   than the solve of a small pattern); rois: per sample (index, y0, x0, h, w); iters, rel: (nsel, C).
template <typename T>
void blend(int nsel, int c, const T *t, const T *s, const uint8_t *omega, const uint8_t *inside, T *out,
           const int64_t *strides, const int64_t *rois, int mixed, int64_t *iters, double *rel, double rtol, double atol,
           double stop_factor, double atol_step_factor, int max_iter, double coarse_scale, int dense_max) {
  const int64_t *st = strides, *ss = strides + 4, *so = strides + 8, *sm = strides + 12, *si = strides + 16;
  for (int k = 0; k < nsel; ++k) {
    const int64_t *roi = rois + 5 * static_cast<size_t>(k);
    const int64_t idx = roi[0];
    const int y0 = static_cast<int>(roi[1]), x0 = static_cast<int>(roi[2]);
    const int h = static_cast<int>(roi[3]), w = static_cast<int>(roi[4]);
    Plan<T> P;
    plan(P, h, w, dense_max);
    Level<T> &F = P.levels[0];
    const int wp = F.wp;
    const uint8_t *om_img = omega + idx * sm[0], *in_img = inside ? inside + idx * si[0] : nullptr;
    T *om = P.om, *kn = P.kn;
    for (int i = 0; i < h; ++i) {
      for (int j = 0; j < w; ++j) {
        size_t p = row_start(F, i) + j;
        bool in = !in_img || in_img[(y0 + i) * si[2] + (x0 + j) * si[3]];
        bool o = in && om_img[(y0 + i) * sm[2] + (x0 + j) * sm[3]];
        om[p] = o ? T(1) : T(0);
        kn[p] = in && !o ? T(1) : T(0);
      }
    }
    // system.assemble's weights: 1 between two unknowns, Dirichlet = known in-image neighbours
    for (int i = 0; i < h; ++i) {
      for (int j = 0; j < w; ++j) {
        size_t p = row_start(F, i) + j;
        F.we[p] = om[p] * om[p + 1];
        F.ws[p] = om[p] * om[p + wp];
        F.wd[p] = om[p] * (kn[p + 1] + kn[p - 1] + kn[p + wp] + kn[p - wp]);
      }
    }
    build_levels(P, static_cast<T>(coarse_scale));
    double wsum = 0;
    for (int i = 0; i < h; ++i)
      for (int j = 0; j < w; ++j) wsum += F.wd[row_start(F, i) + j];
    wsum = std::max(wsum, 1.0);
    for (int ch = 0; ch < c; ++ch) {
      const T *tc = t + idx * st[0] + ch * st[1], *sc = s + idx * ss[0] + ch * ss[1];
      // the ROI of t and s into the (still free) p and q arrays of the solve, zero off the image and
      // in the halo, so that the set-up below is branch-free, vectorised and never reads beyond the ROI
      T *tp = P.p, *sp = P.q;
      for (int i = 0; i < h; ++i) {
        size_t row = row_start(F, i);
        const T *tr = tc + (y0 + i) * st[2] + x0 * st[3], *sr = sc + (y0 + i) * ss[2] + x0 * ss[3];
        for (int j = 0; j < w; ++j) {
          bool in = om[row + j] != T(0) || kn[row + j] != T(0);
          tp[row + j] = in ? tr[j * st[3]] : T(0);
          sp[row + j] = in ? sr[j * ss[3]] : T(0);
        }
      }
      const double shift = mixed ? assemble_plane<T, true>(P, tp, sp) : assemble_plane<T, false>(P, tp, sp);
      const T offset = static_cast<T>(shift / wsum);
      for (int i = 0; i < h; ++i) {
        size_t row = row_start(F, i);
        const T *o = om + row, *sr = sp + row;
        T *x = P.xs + row;
#pragma omp simd
        for (int j = 0; j < w; ++j) x[j] = o[j] != T(0) ? (sr[j] + offset) * o[j] : T(0);
      }
      const size_t slot = static_cast<size_t>(k) * c + ch;
      solve_plane(P, iters + slot, rel + slot, rtol, atol, stop_factor, atol_step_factor, max_iter);
      T *oc = out + idx * so[0] + ch * so[1];
      for (int i = 0; i < h; ++i) {
        for (int j = 0; j < w; ++j) {
          size_t p = row_start(F, i) + j;
          if (om[p] != T(0)) oc[(y0 + i) * so[2] + (x0 + j) * so[3]] = P.xs[p];
        }
      }
    }
    trim_pool<T>();
  }
}

}  // namespace

extern "C" {

#define CAI_SOLVE(NAME, T)                                                                                         \
  void NAME(int n, int c, int h, int w, const T *east, const T *south, const T *dirichlet, const T *b,             \
            const T *guess, T *x, int64_t *iters, double *rel, double rtol, double atol, double stop_factor,       \
            double atol_step_factor, int max_iter, double coarse_scale, int dense_max) {                           \
    solve<T>(n, c, h, w, east, south, dirichlet, b, guess, x, iters, rel, rtol, atol, stop_factor,                 \
             atol_step_factor, max_iter, coarse_scale, dense_max);                                                 \
  }

CAI_SOLVE(cai_poisson_pcg_f32, float)
CAI_SOLVE(cai_poisson_pcg_f64, double)

#define CAI_BLEND(NAME, T)                                                                                         \
  void NAME(int nsel, int c, const T *t, const T *s, const uint8_t *omega, const uint8_t *inside, T *out,         \
            const int64_t *strides, const int64_t *rois, int mixed, int64_t *iters, double *rel, double rtol, double atol,         \
            double stop_factor, double atol_step_factor, int max_iter, double coarse_scale, int dense_max) {       \
    blend<T>(nsel, c, t, s, omega, inside, out, strides, rois, mixed, iters, rel, rtol, atol, stop_factor,            \
             atol_step_factor, max_iter, coarse_scale, dense_max);                                                 \
  }

CAI_BLEND(cai_poisson_blend_f32, float)
CAI_BLEND(cai_poisson_blend_f64, double)
}

// Bilinear resampling of RGBA8 bank pixels into per-sample canvases (cai_aug.engine.resample): the
// same products and sums, in the same order and float32 rounding, as the torch path
//   ((f00 (1 - wx) + f01 wx) (1 - wy) + (f10 (1 - wx) + f11 wx) wy) / 255,
// so both give the same bits; no multiply-add contraction here, which would round differently.
namespace {

__attribute__((optimize("fp-contract=off"))) void render_rgba(
    int n, int hc, int wc, const uint8_t *pixels, const int64_t *base, const int64_t *stride, const int64_t *y0,
    const int64_t *y1, const float *wy, const int64_t *x0, const int64_t *x1, const float *wx, const int64_t *rows,
    const int64_t *cols, const int64_t *pattern_h, const int64_t *pattern_w, int pad, float *image, uint8_t *mask) {
  const size_t plane = static_cast<size_t>(hc) * wc;
  std::vector<float> ux(wc), vx(wc);
  for (int k = 0; k < n; ++k) {
    float *out = image + static_cast<size_t>(k) * 3 * plane;
    uint8_t *m = mask + static_cast<size_t>(k) * plane;
    const int64_t *ky0 = y0 + static_cast<size_t>(k) * hc, *ky1 = y1 + static_cast<size_t>(k) * hc;
    const int64_t *kx0 = x0 + static_cast<size_t>(k) * wc, *kx1 = x1 + static_cast<size_t>(k) * wc;
    const float *kwy = wy + static_cast<size_t>(k) * hc, *kwx = wx + static_cast<size_t>(k) * wc;
    const int rk = static_cast<int>(std::min<int64_t>(rows[k], hc)), ck = static_cast<int>(std::min<int64_t>(cols[k], wc));
    for (int j = 0; j < ck; ++j) {
      ux[j] = 1.0f - kwx[j];
      vx[j] = kwx[j];
    }
    for (int i = 0; i < rk; ++i) {
      const uint8_t *r0 = pixels + 4 * (base[k] + ky0[i] * stride[k]);
      const uint8_t *r1 = pixels + 4 * (base[k] + ky1[i] * stride[k]);
      const float vy = kwy[i], uy = 1.0f - vy;
      const bool row_in = i >= pad && i < pad + pattern_h[k];
      for (int j = 0; j < ck; ++j) {
        const uint8_t *p00 = r0 + 4 * kx0[j], *p01 = r0 + 4 * kx1[j];
        const uint8_t *p10 = r1 + 4 * kx0[j], *p11 = r1 + 4 * kx1[j];
        float v[4];
        for (int ch = 0; ch < 4; ++ch) {
          const float a = static_cast<float>(p00[ch]) * ux[j];
          const float b = static_cast<float>(p01[ch]) * vx[j];
          const float top = a + b;
          const float c = static_cast<float>(p10[ch]) * ux[j];
          const float d = static_cast<float>(p11[ch]) * vx[j];
          const float bottom = c + d;
          const float e = top * uy;
          const float f = bottom * vy;
          v[ch] = (e + f) / 255.0f;
        }
        const size_t at = static_cast<size_t>(i) * wc + j;
        out[at] = v[0];
        out[plane + at] = v[1];
        out[2 * plane + at] = v[2];
        m[at] = row_in && j >= pad && j < pad + pattern_w[k] && v[3] >= 0.5f;
      }
    }
  }
}

}  // namespace

extern "C" void cai_render_rgba(int n, int hc, int wc, const uint8_t *pixels, const int64_t *base,
                                const int64_t *stride, const int64_t *y0, const int64_t *y1, const float *wy,
                                const int64_t *x0, const int64_t *x1, const float *wx, const int64_t *rows,
                                const int64_t *cols, const int64_t *pattern_h, const int64_t *pattern_w, int pad,
                                float *image, uint8_t *mask) {
  render_rgba(n, hc, wc, pixels, base, stride, y0, y1, wy, x0, x1, wx, rows, cols, pattern_h, pattern_w, pad, image,
              mask);
}

// Canvas windows in and out of contiguous (B, C, H, W) images (cai_aug.engine.resample), for elements of
// `elem` bytes: one row copy per canvas row instead of several torch calls per sample.
extern "C" void cai_crop(int n, int c, int64_t h, int64_t w, int elem, const uint8_t *images, const int64_t *rows,
                         const int64_t *origin_y, const int64_t *origin_x, int hc, int wc, uint8_t *out) {
  // window pixels outside the image take the nearest image pixel (clamped indices)
  for (int k = 0; k < n; ++k) {
    const int64_t top = origin_y[k], left = origin_x[k];
    const int64_t x0 = std::min<int64_t>(std::max<int64_t>(left, 0), w - 1);
    const int64_t x1 = std::max<int64_t>(std::min<int64_t>(left + wc, w), x0 + 1);  // in-image columns [x0, x1)
    const int d0 = static_cast<int>(std::min<int64_t>(std::max<int64_t>(x0 - left, 0), wc));
    const int d1 = static_cast<int>(std::min<int64_t>(std::max<int64_t>(x1 - left, d0), wc));
    for (int ch = 0; ch < c; ++ch) {
      const uint8_t *plane = images + ((rows[k] * c + ch) * h) * w * elem;
      uint8_t *dst = out + ((static_cast<int64_t>(k) * c + ch) * hc) * wc * elem;
      for (int i = 0; i < hc; ++i) {
        const int64_t y = std::min<int64_t>(std::max<int64_t>(top + i, 0), h - 1);
        const uint8_t *line = plane + y * w * elem;
        uint8_t *to = dst + static_cast<int64_t>(i) * wc * elem;
        if (d1 > d0) std::memcpy(to + d0 * elem, line + (left + d0) * elem, static_cast<size_t>(d1 - d0) * elem);
        for (int j = 0; j < d0; ++j) std::memcpy(to + j * elem, line, elem);
        for (int j = d1; j < wc; ++j) std::memcpy(to + j * elem, line + (w - 1) * elem, elem);
      }
    }
  }
}

extern "C" void cai_paste(int n, int c, int64_t h, int64_t w, int elem, uint8_t *images, const uint8_t *canvases,
                          const int64_t *rows, const int64_t *origin_y, const int64_t *origin_x, int hc, int wc,
                          const uint8_t *wheres, const int64_t *pick) {
  // canvas pixels outside the image are dropped; with `where` (N, 1, Hc, Wc) only its pixels are written;
  // write k takes canvas (and where) pick[k] (k without `pick`)
  for (int k = 0; k < n; ++k) {
    const int64_t from_k = pick ? pick[k] : k;
    const uint8_t *canvas = canvases + from_k * c * hc * wc * elem;
    const uint8_t *where = wheres ? wheres + from_k * hc * wc : nullptr;
    const int64_t top = origin_y[k], left = origin_x[k];
    const int64_t i0 = std::max<int64_t>(0, -top), i1 = std::min<int64_t>(hc, h - top);
    const int64_t j0 = std::max<int64_t>(0, -left), j1 = std::min<int64_t>(wc, w - left);
    if (i0 >= i1 || j0 >= j1) continue;
    for (int ch = 0; ch < c; ++ch) {
      uint8_t *plane = images + ((rows[k] * c + ch) * h) * w * elem;
      const uint8_t *src = canvas + static_cast<int64_t>(ch) * hc * wc * elem;
      const uint8_t *keep = where;
      for (int64_t i = i0; i < i1; ++i) {
        uint8_t *to = plane + ((top + i) * w + left) * elem;
        const uint8_t *from = src + i * wc * elem;
        if (!keep) {
          std::memcpy(to + j0 * elem, from + j0 * elem, static_cast<size_t>(j1 - j0) * elem);
          continue;
        }
        const uint8_t *flag = keep + i * wc;
        for (int64_t j = j0; j < j1; ++j)
          if (flag[j]) std::memcpy(to + j * elem, from + j * elem, elem);
      }
    }
  }
}
