// Aggregation-multigrid V-cycle pieces for the batched masked Poisson operator (cai_aug.poisson, CuPy path).
//
// Same algorithm and layout as cai_aug.poisson.multigrid: values (N, C, H, W), weights (N, 1, H, W) with
// east/south edge weights, diag and inv_diag (0 off the unknowns); red pixels have (y + x) even.
// Launch with grid = (ceil(pixels / blockDim.x), planes), where "pixels" is the plane size of the
// array the kernel writes (the coarse one for mg_residual_restrict). Device code only, extern "C".

#include "common.cuh"

// One colour of Gauss-Seidel in place: on pixels of that colour, x = (b + sum_q w x(q)) / diag.
// The neighbours of a pixel all have the other colour, so in-place updates do not race.
// from_zero = 1: x is known to be zero everywhere (first sweep of a cycle): write the colour's values
// and zero elsewhere, without reading x.
template <typename T>
__device__ __forceinline__ void gs_sweep(T* __restrict__ x, const T* __restrict__ b, const T* __restrict__ east,
                                         const T* __restrict__ south, const T* __restrict__ inv_diag, int C, int H,
                                         int W, int colour, int from_zero) {
    const int plane = blockIdx.y;
    const int hw = H * W;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= hw) return;
    const int y = pix / W;
    const int xx = pix - y * W;
    const long long off = (long long)plane * hw;
    const long long woff = (long long)(plane / C) * hw;
    const bool mine = ((y + xx) & 1) == colour;
    if (from_zero) {
        x[off + pix] = mine ? b[off + pix] * inv_diag[woff + pix] : T(0);
        return;
    }
    if (!mine) return;
    const T inv = inv_diag[woff + pix];
    x[off + pix] = inv == T(0) ? T(0)
                               : (b[off + pix] + neighbour_sum(x + off, east + woff, south + woff, y, xx, H, W)) * inv;
}

// rc = P^T (b - A x): the fine residual summed over each 2x2 block, one thread per coarse pixel.
template <typename T>
__device__ __forceinline__ void residual_restrict(T* __restrict__ rc, const T* __restrict__ b,
                                                  const T* __restrict__ x, const T* __restrict__ east,
                                                  const T* __restrict__ south, const T* __restrict__ diag, int C,
                                                  int H, int W, int Hc, int Wc) {
    const int plane = blockIdx.y;
    const int hwc = Hc * Wc;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= hwc) return;
    const int yc = pix / Wc;
    const int xc = pix - yc * Wc;
    const int hw = H * W;
    const long long off = (long long)plane * hw;
    const long long woff = (long long)(plane / C) * hw;
    T acc = T(0);
    for (int dy = 0; dy < 2; ++dy) {
        const int y = 2 * yc + dy;
        if (y >= H) break;
        for (int dx = 0; dx < 2; ++dx) {
            const int xx = 2 * xc + dx;
            if (xx >= W) break;
            const int i = y * W + xx;
            acc += b[off + i] - diag[woff + i] * x[off + i]
                   + neighbour_sum(x + off, east + woff, south + woff, y, xx, H, W);
        }
    }
    rc[(long long)plane * hwc + pix] = acc;
}

// x += P xc on the unknowns (piecewise-constant prolongation), one thread per fine pixel.
template <typename T>
__device__ __forceinline__ void prolong_add(T* __restrict__ x, const T* __restrict__ xc,
                                            const T* __restrict__ inv_diag, int C, int H, int W, int Hc, int Wc) {
    const int plane = blockIdx.y;
    const int hw = H * W;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= hw) return;
    const int y = pix / W;
    const int xx = pix - y * W;
    if (inv_diag[(long long)(plane / C) * hw + pix] == T(0)) return;
    x[(long long)plane * hw + pix] += xc[(long long)plane * Hc * Wc + (y >> 1) * Wc + (xx >> 1)];
}

extern "C" {

__global__ void mg_gs_sweep_f32(float* x, const float* b, const float* east, const float* south,
                                const float* inv_diag, int C, int H, int W, int colour, int from_zero) {
    gs_sweep<float>(x, b, east, south, inv_diag, C, H, W, colour, from_zero);
}
__global__ void mg_gs_sweep_f64(double* x, const double* b, const double* east, const double* south,
                                const double* inv_diag, int C, int H, int W, int colour, int from_zero) {
    gs_sweep<double>(x, b, east, south, inv_diag, C, H, W, colour, from_zero);
}

__global__ void mg_residual_restrict_f32(float* rc, const float* b, const float* x, const float* east,
                                         const float* south, const float* diag, int C, int H, int W, int Hc,
                                         int Wc) {
    residual_restrict<float>(rc, b, x, east, south, diag, C, H, W, Hc, Wc);
}
__global__ void mg_residual_restrict_f64(double* rc, const double* b, const double* x, const double* east,
                                         const double* south, const double* diag, int C, int H, int W, int Hc,
                                         int Wc) {
    residual_restrict<double>(rc, b, x, east, south, diag, C, H, W, Hc, Wc);
}

__global__ void mg_prolong_add_f32(float* x, const float* xc, const float* inv_diag, int C, int H, int W, int Hc,
                                   int Wc) {
    prolong_add<float>(x, xc, inv_diag, C, H, W, Hc, Wc);
}
__global__ void mg_prolong_add_f64(double* x, const double* xc, const double* inv_diag, int C, int H, int W,
                                   int Hc, int Wc) {
    prolong_add<double>(x, xc, inv_diag, C, H, W, Hc, Wc);
}

}  // extern "C"
