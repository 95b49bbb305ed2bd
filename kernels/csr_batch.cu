// CSR minibatch assembly: staged rows (archive dtypes) -> remapped, scaled, log1p'd CSR or dense output.
//
// Inputs shared by every kernel: `vals`/`cols` are the batch's stored entries concatenated in output row
// order, `in_ptr` (int64, n_rows + 1, in_ptr[0] == 0) gives each row's span, n = in_ptr[n_rows].
// `remap` (nullable) maps an archive column to an output column, -1 = drop the entry.
// NumPy twins: scdl_gpu/backend/_reference.py (the CPU path and the test oracle).
//
// Compiled three ways, so the file stays self-contained: by CuPy through NVRTC (no host std headers),
// by nvcc in the compile test, and by g++ through tests/kernels/cuda_cpu_shim.h to run the kernels on
// the CPU. Launches are 1-D, one thread per entry (per row for scdl_row_sums); n == 0 or n_rows == 0:
// the caller launches nothing (a 0-block grid is a CUDA launch error), though any launch is a no-op.
// int64 is spelled `long long` and uint64 `unsigned long long` so CuPy name expressions, nvcc and g++
// all name the same types (uint64_t is `unsigned long` on LP64 hosts).

#ifdef __CUDACC_RTC__
// No uint64_t typedef: it is unused here, and would clash if a runtime ever defines it as `unsigned long`.
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
#else
#include <cstdint>
#endif

// Row of entry i: the last r with in_ptr[r] <= i (upper_bound - 1), so empty rows, whose starts
// repeat the next row's start, are skipped. Requires 0 <= i < in_ptr[n_rows].
__device__ __forceinline__ long long scdl_row_of(const long long* __restrict__ in_ptr, long long n_rows, long long i)
{
    long long lo = 0, hi = n_rows + 1;
    while (lo < hi) {
        const long long mid = lo + (hi - lo) / 2;
        if (in_ptr[mid] <= i) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo - 1;
}

// The value transform shared by emit and densify, always in double (exact for integers up to 2**53),
// so every archive and output dtype takes the same rounding steps as the NumPy reference.
__device__ __forceinline__ double scdl_transform(double v, const double* __restrict__ row_scale, long long r,
                                                 int do_log1p)
{
    if (row_scale) {
        v *= row_scale[r];
    }
    if (do_log1p) {
        v = log1p(v);
    }
    return v;
}

// CuPy compiles with -ftz=true, under which float<->double conversions flush subnormals (cvt.ftz) that
// the CPU keeps; inline PTX pins the plain conversions. (Densify's float atomicAdd flushes regardless:
// PTX's atom.add.f32 does.)
template <typename T>
__device__ __forceinline__ double scdl_widen(T v)
{
    return (double)v;
}
template <typename T>
__device__ __forceinline__ T scdl_narrow(double v)
{
    return (T)v;
}
#ifdef __CUDA_ARCH__
template <>
__device__ __forceinline__ double scdl_widen<float>(float v)
{
    double r;
    asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(v));
    return r;
}
template <>
__device__ __forceinline__ float scdl_narrow<float>(double v)
{
    float r;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(v));
    return r;
}
#endif

__device__ __forceinline__ long long scdl_thread_index()
{
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

template <typename TC>
__global__ void scdl_keep_flags(const TC* __restrict__ cols, long long n, const long long* __restrict__ remap,
                                int* __restrict__ flags)
{
    const long long i = scdl_thread_index();
    if (i >= n) return;
    flags[i] = remap[cols[i]] >= 0 ? 1 : 0;
}

// One thread per row, summed sequentially: rows are short (hundreds to a few thousand entries) and
// a fixed order keeps the result deterministic from run to run.
template <typename TV, typename TC>
__global__ void scdl_row_sums(const TV* __restrict__ vals, const TC* __restrict__ cols,
                              const long long* __restrict__ in_ptr, long long n_rows,
                              const long long* __restrict__ remap, double* __restrict__ sums)
{
    const long long r = scdl_thread_index();
    if (r >= n_rows) return;
    double s = 0.0;
    for (long long k = in_ptr[r]; k < in_ptr[r + 1]; ++k) {
        if (remap == nullptr || remap[cols[k]] >= 0) {
            s += scdl_widen(vals[k]);
        }
    }
    sums[r] = s;
}

// `pos` (nullable): output slot of each entry, the exclusive prefix sum of scdl_keep_flags; required
// whenever `remap` drops entries, else dropped entries would leave holes. nullptr: entry i goes to i.
template <typename TV, typename TC, typename OV, typename OI>
__global__ void scdl_emit(const TV* __restrict__ vals, const TC* __restrict__ cols, long long n,
                          const long long* __restrict__ in_ptr, long long n_rows, const long long* __restrict__ remap,
                          const long long* __restrict__ pos, const double* __restrict__ row_scale, int do_log1p,
                          OV* __restrict__ out_vals, OI* __restrict__ out_cols)
{
    const long long i = scdl_thread_index();
    if (i >= n) return;
    const long long c = remap ? remap[cols[i]] : (long long)cols[i];
    if (c < 0) return;
    const long long j = pos ? pos[i] : i;
    // The row search is only needed for the scale; skip it otherwise.
    const long long r = row_scale ? scdl_row_of(in_ptr, n_rows, i) : 0;
    out_vals[j] = scdl_narrow<OV>(scdl_transform(scdl_widen(vals[i]), row_scale, r, do_log1p));
    out_cols[j] = (OI)c;
}

// `out` is row-major n_rows x n_out_cols and zeroed by the caller. Entries of one row that land on
// the same column add up (as scipy's toarray does), hence the atomic; every output column must be
// < n_out_cols (not checked here: the caller validates remap / width once per loader).
template <typename TV, typename TC, typename OV>
__global__ void scdl_densify(const TV* __restrict__ vals, const TC* __restrict__ cols, long long n,
                             const long long* __restrict__ in_ptr, long long n_rows,
                             const long long* __restrict__ remap, const double* __restrict__ row_scale,
                             int do_log1p, long long n_out_cols, OV* __restrict__ out)
{
    const long long i = scdl_thread_index();
    if (i >= n) return;
    const long long c = remap ? remap[cols[i]] : (long long)cols[i];
    if (c < 0) return;
    const long long r = scdl_row_of(in_ptr, n_rows, i);
    atomicAdd(&out[r * n_out_cols + c], scdl_narrow<OV>(scdl_transform(scdl_widen(vals[i]), row_scale, r, do_log1p)));
}

// Every combination the loader can ask for, so that nvcc (compile test) and g++ (CPU shim) build
// real code. CuPy does not need this: it instantiates through name_expressions.
#ifdef SCDL_INSTANTIATE_ALL
#define SCDL_FOR_TV(M, ...)                \
    M(uint8_t, __VA_ARGS__)                \
    M(uint16_t, __VA_ARGS__)               \
    M(uint32_t, __VA_ARGS__)               \
    M(unsigned long long, __VA_ARGS__)     \
    M(float, __VA_ARGS__)                  \
    M(double, __VA_ARGS__)

#define SCDL_KEEP(TC) template __global__ void scdl_keep_flags<TC>(const TC*, long long, const long long*, int*);
SCDL_KEEP(uint8_t)
SCDL_KEEP(uint16_t)
SCDL_KEEP(uint32_t)
SCDL_KEEP(unsigned long long)

#define SCDL_SUMS(TV, TC)                                                                                     \
    template __global__ void scdl_row_sums<TV, TC>(const TV*, const TC*, const long long*, long long,        \
                                                   const long long*, double*);
#define SCDL_EMIT(TV, TC, OV, OI)                                                                             \
    template __global__ void scdl_emit<TV, TC, OV, OI>(const TV*, const TC*, long long, const long long*,    \
                                                       long long, const long long*, const long long*,        \
                                                       const double*, int, OV*, OI*);
#define SCDL_DENSIFY(TV, TC, OV)                                                                              \
    template __global__ void scdl_densify<TV, TC, OV>(const TV*, const TC*, long long, const long long*,     \
                                                      long long, const long long*, const double*, int,       \
                                                      long long, OV*);

#define SCDL_ALL_TV(TC)                                                                                       \
    SCDL_FOR_TV(SCDL_SUMS, TC)                                                                                \
    SCDL_FOR_TV(SCDL_EMIT, TC, float, int)                                                                    \
    SCDL_FOR_TV(SCDL_EMIT, TC, float, long long)                                                              \
    SCDL_FOR_TV(SCDL_EMIT, TC, double, int)                                                                   \
    SCDL_FOR_TV(SCDL_EMIT, TC, double, long long)                                                             \
    SCDL_FOR_TV(SCDL_DENSIFY, TC, float)                                                                      \
    SCDL_FOR_TV(SCDL_DENSIFY, TC, double)
SCDL_ALL_TV(uint8_t)
SCDL_ALL_TV(uint16_t)
SCDL_ALL_TV(uint32_t)
SCDL_ALL_TV(unsigned long long)
#endif
