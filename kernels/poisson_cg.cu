// Batched masked Poisson solve (cai_aug.poisson, CuPy path): multigrid-preconditioned conjugate gradient.
//
// Layout: values are (N, C, H, W) contiguous ("planes" = N * C, one per sample and channel), operator
// weights are (N, 1, H, W): east[p] couples p and p + (0, 1), south[p] couples p and p + (1, 0), diag is
// the per-pixel diagonal and inv_diag its inverse (0 where the pixel is not an unknown). The operator is
//     (A x)(p) = diag(p) x(p) - sum over the 4 edges (p, q) of w(p, q) x(q),
// the same as cai_aug.poisson.multigrid on the torch path. Launch every kernel with
// grid = (ceil(plane_pixels / blockDim.x), planes) and blockDim.x a multiple of 32 (<= 1024); kernels
// with a reduction add their per-block partial sums into a per-plane double accumulator with atomicAdd.
// Per-plane CG scalars (rz, pq, rr, tol2) are doubles, active flags int32, iteration counts int64.
// Everything is extern "C" device code only (compiled by CuPy's RawModule with NVRTC at run time).

#include "common.cuh"

#ifndef CAI_CUDA_EMULATION
__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// Sum v over the block and add it to *out. Every thread of the block must call it.
__device__ __forceinline__ void block_add(double v, double* out) {
    __shared__ double partial[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int warps = (blockDim.x + 31) >> 5;
        v = lane < warps ? partial[lane] : 0.0;
        v = warp_sum(v);
        if (lane == 0 && v != 0.0) atomicAdd(out, v);
    }
}
#else
// CPU emulation in the tests runs one thread at a time: a plain add is the block sum.
__device__ __forceinline__ void block_add(double v, double* out) { *out += v; }
#endif

// q = A p and pq[plane] += <p, q>
template <typename T>
__device__ __forceinline__ void apply_dot(const T* __restrict__ p, T* __restrict__ q, const T* __restrict__ east,
                                          const T* __restrict__ south, const T* __restrict__ diag,
                                          double* __restrict__ pq, int C, int H, int W) {
    const int plane = blockIdx.y;
    const int hw = H * W;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    const long long off = (long long)plane * hw;
    const long long woff = (long long)(plane / C) * hw;
    double part = 0.0;
    if (pix < hw) {
        const int y = pix / W;
        const int xx = pix - y * W;
        const T v = diag[woff + pix] * p[off + pix] - neighbour_sum(p + off, east + woff, south + woff, y, xx, H, W);
        q[off + pix] = v;
        part = (double)v * (double)p[off + pix];
    }
    block_add(part, pq + plane);
}

// alpha = active && pq > 0 ? rz / pq : 0;  x += alpha p;  r -= alpha q;  rr[plane] += <r, r>
template <typename T>
__device__ __forceinline__ void update(T* __restrict__ x, T* __restrict__ r, const T* __restrict__ p,
                                       const T* __restrict__ q, const double* __restrict__ rz,
                                       const double* __restrict__ pq, const int* __restrict__ active,
                                       double* __restrict__ rr, int hw) {
    const int plane = blockIdx.y;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    const long long i = (long long)plane * hw + pix;
    const double denom = pq[plane];
    const T alpha = (active[plane] && denom > 0.0) ? (T)(rz[plane] / denom) : T(0);
    double part = 0.0;
    if (pix < hw) {
        T ri = r[i];
        if (alpha != T(0)) {
            x[i] += alpha * p[i];
            ri -= alpha * q[i];
            r[i] = ri;
        }
        part = (double)ri * (double)ri;
    }
    block_add(part, rr + plane);
}

// out[plane] += <a, b>
template <typename T>
__device__ __forceinline__ void dot(const T* __restrict__ a, const T* __restrict__ b, double* __restrict__ out,
                                    int hw) {
    const int plane = blockIdx.y;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    const long long i = (long long)plane * hw + pix;
    double part = 0.0;
    if (pix < hw) part = (double)a[i] * (double)b[i];
    block_add(part, out + plane);
}

// beta = rz_old > 0 ? rz_new / rz_old : 0;  p = z + beta p
template <typename T>
__device__ __forceinline__ void direction(T* __restrict__ p, const T* __restrict__ z,
                                          const double* __restrict__ rz_old, const double* __restrict__ rz_new,
                                          int hw) {
    const int plane = blockIdx.y;
    const int pix = blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= hw) return;
    const long long i = (long long)plane * hw + pix;
    const double old = rz_old[plane];
    const T beta = old > 0.0 ? (T)(rz_new[plane] / old) : T(0);
    p[i] = z[i] + beta * p[i];
}

extern "C" {

__global__ void cg_apply_dot_f32(const float* p, float* q, const float* east, const float* south,
                                 const float* diag, double* pq, int C, int H, int W) {
    apply_dot<float>(p, q, east, south, diag, pq, C, H, W);
}
__global__ void cg_apply_dot_f64(const double* p, double* q, const double* east, const double* south,
                                 const double* diag, double* pq, int C, int H, int W) {
    apply_dot<double>(p, q, east, south, diag, pq, C, H, W);
}

__global__ void cg_update_f32(float* x, float* r, const float* p, const float* q, const double* rz,
                              const double* pq, const int* active, double* rr, int hw) {
    update<float>(x, r, p, q, rz, pq, active, rr, hw);
}
__global__ void cg_update_f64(double* x, double* r, const double* p, const double* q, const double* rz,
                              const double* pq, const int* active, double* rr, int hw) {
    update<double>(x, r, p, q, rz, pq, active, rr, hw);
}

__global__ void cg_dot_f32(const float* a, const float* b, double* out, int hw) { dot<float>(a, b, out, hw); }
__global__ void cg_dot_f64(const double* a, const double* b, double* out, int hw) { dot<double>(a, b, out, hw); }

__global__ void cg_direction_f32(float* p, const float* z, const double* rz_old, const double* rz_new, int hw) {
    direction<float>(p, z, rz_old, rz_new, hw);
}
__global__ void cg_direction_f64(double* p, const double* z, const double* rz_old, const double* rz_new,
                                 int hw) {
    direction<double>(p, z, rz_old, rz_new, hw);
}

// Per-plane bookkeeping after an update (1-D launch over planes):
// iterations += active;  active = active && rr > tol2.
__global__ void cg_flags(int* active, long long* iterations, const double* rr, const double* tol2, int planes) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= planes) return;
    const int a = active[k];
    iterations[k] += a;
    active[k] = (a && rr[k] > tol2[k]) ? 1 : 0;
}

}  // extern "C"
