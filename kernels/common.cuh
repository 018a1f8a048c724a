// Device helpers shared by poisson_cg.cu and poisson_mg.cu (cai_aug.poisson, CuPy path).
//
// Included by both kernel files; cai_aug.poisson.cupy_backend.kernel_sources() inlines this text
// before NVRTC compiles a kernel file (NVRTC has no include path by default); nvcc needs -I kernels/.
//
// Layout: a plane (one sample and channel) is H x W contiguous; east[i] couples pixel i and i + 1,
// south[i] couples i and i + W (zero where there is no neighbour), as in cai_aug.poisson.multigrid.
#pragma once

// Weighted sum of the 4 neighbours of pixel (y, xx): sum over the edges (p, q) of w(p, q) x(q).
template <typename T>
__device__ __forceinline__ T neighbour_sum(const T* __restrict__ x, const T* __restrict__ east,
                                           const T* __restrict__ south, int y, int xx, int H, int W) {
    const int i = y * W + xx;
    T acc = T(0);
    if (xx + 1 < W) acc += east[i] * x[i + 1];
    if (xx > 0) acc += east[i - 1] * x[i - 1];
    if (y + 1 < H) acc += south[i] * x[i + W];
    if (y > 0) acc += south[i - W] * x[i - W];
    return acc;
}
