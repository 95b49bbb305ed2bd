// Lets kernels/*.cu compile as plain C++ on the host (g++ -include cuda_cpu_shim.h), so tests can run
// the real kernel source on the CPU. A launcher sets blockIdx/threadIdx and calls the kernel body once
// per thread, one thread after another. That is exact for kernels whose threads are independent; it
// cannot emulate __shared__, __syncthreads() or warp intrinsics, so kernels using those need the GPU.
#pragma once
#include <cmath>
#include <cstdint>
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct scdl_shim_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};
// thread_local so a launcher could run blocks on several host threads without sharing the indices.
inline thread_local scdl_shim_dim3 threadIdx, blockIdx, blockDim, gridDim;

// Threads run one after another, so plain read-modify-writes are exact (atomicAdd adds in entry order).
template <typename T>
inline T atomicAdd(T* address, T value)
{
    const T old = *address;
    *address = old + value;
    return old;
}

template <typename T>
inline T atomicOr(T* address, T value)
{
    const T old = *address;
    *address = old | value;
    return old;
}
