// Row gather from resident entries: with GPU residency an archive's rows (a rank's share) stay in device
// memory or mapped pinned host memory, and each batch is copied out of them here, bounds-checked, so a
// wrong plan yields a flag and zeros instead of a read outside the resident arrays.
//
// Inputs: `data`/`cols` hold the n_data resident entries in archive dtypes (float16 values passed as
// their uint16 bits). Row r of the batch occupies out[out_ptr[r] : out_ptr[r + 1]] (`out_ptr` int64,
// n_rows + 1, non-decreasing, out_ptr[0] == 0) and is read from resident entries
// [src_start[r], src_start[r] + out_ptr[r + 1] - out_ptr[r]). `width` is the archive's column count.
// Error bits, OR-ed into `*err` (int32) by every offending entry; the caller zeroes it once per batch,
// before the launch, and reads it once after:
//   1: the entry lies outside [0, n_data)    2: its column is >= width (compared as unsigned 64-bit).
// An offending entry is written as value 0, column 0, so the output is fully defined either way.
// NumPy twin: gather() in scdl_gpu/backend/_reference.py.
//
// Launches are 1-D: scdl_gather takes 32 threads per row, scdl_gather_chunks one per output entry;
// n = out_ptr[n_rows] == 0: the caller launches nothing.
// Self-contained like csr_batch.cu and compiled the same three ways (NVRTC without std headers, nvcc,
// g++ through tests/kernels/cuda_cpu_shim.h). It names built-in types only, so it needs no header or
// typedef, and its helpers have their own names, so the two files could even share a translation unit.

// Row of entry i: the last r with out_ptr[r] <= i, so empty rows (whose start repeats the next
// row's) are skipped. Requires 0 <= i < out_ptr[n_rows].
__device__ __forceinline__ long long scdl_gather_row(const long long* __restrict__ out_ptr, long long n_rows,
                                                     long long i)
{
    long long first = 0, count = n_rows + 1;  // upper_bound over out_ptr[0 .. n_rows]
    while (count > 0) {
        const long long half = count / 2;
        if (out_ptr[first + half] <= i) {
            first += half + 1;
            count -= half + 1;
        } else {
            count = half;
        }
    }
    return first - 1;
}

// One warp per row: virtual thread v = 32 * r + lane copies entries lane, lane + 32, ... of row r, so a
// warp's reads and writes are contiguous and no thread searches for its row. A grid-stride loop over v
// covers every launch shape (the CPU shim's single threads too); the caller launches 32 * n_rows threads.
template <typename TV, typename TC>
__global__ void scdl_gather(const TV* __restrict__ data, const TC* __restrict__ cols, long long n_data,
                            const long long* __restrict__ src_start, const long long* __restrict__ out_ptr,
                            long long n_rows, long long width, TV* __restrict__ out_vals, TC* __restrict__ out_cols,
                            int* __restrict__ err)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x; v < 32 * n_rows; v += stride) {
        const long long r = v / 32;
        const long long o = out_ptr[r], len = out_ptr[r + 1] - o;
        // Added as unsigned: a corrupt src_start near 2**63 wraps to a negative k (flagged) instead of
        // overflowing, which would be undefined. The reference's int64 arrays wrap the same way.
        const unsigned long long s = (unsigned long long)src_start[r];
        int bad_any = 0;
        for (long long j = v % 32; j < len; j += 32) {
            const long long i = o + j;
            const long long k = (long long)(s + (unsigned long long)j);
            int bad = (k < 0 || k >= n_data) ? 1 : 0;
            const TC c = bad ? TC(0) : cols[k];
            if (!bad && (unsigned long long)c >= (unsigned long long)width) {
                bad = 2;
            }
            if (bad) {  // an offending entry is written as value 0, column 0
                bad_any |= bad;
                out_vals[i] = TV(0);
                out_cols[i] = TC(0);
                continue;
            }
            out_vals[i] = data[k];
            out_cols[i] = c;
        }
        if (bad_any) {
            atomicOr(err, bad_any);
        }
    }
}

// Row gather from decoded chunks (a compressed archive read on the device): each chunk's values and columns
// are separate device arrays, addressed through the tables chunk_vals/chunk_cols (device pointers) and
// chunk_len (entries). Row r of this launch has row_ptr[r + 1] - row_ptr[r] entries (row_ptr int64,
// n_rows + 1, non-decreasing, row_ptr[0] == 0), read from entries [src_start[r], ...) of chunk slot
// row_chunk[r] (the caller's table index, 0 <= row_chunk[r] < number of slots) and written to
// out[dst_start[r] ...]: the rows of one launch may be any subset of a batch, so a batch spanning more
// chunks than the device holds at once is gathered group by group. Error bits and the zeroed output of an
// offending entry are scdl_gather's; bit 1 here means outside [0, chunk_len[row_chunk[r]]).
// NumPy twin: gather_chunks() in scdl_gpu/backend/_reference.py.
template <typename TV, typename TC>
__global__ void scdl_gather_chunks(const unsigned long long* __restrict__ chunk_vals,
                                   const unsigned long long* __restrict__ chunk_cols,
                                   const long long* __restrict__ chunk_len, const long long* __restrict__ row_chunk,
                                   const long long* __restrict__ src_start, const long long* __restrict__ row_ptr,
                                   const long long* __restrict__ dst_start, long long n_rows, long long width,
                                   TV* __restrict__ out_vals, TC* __restrict__ out_cols, int* __restrict__ err)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= row_ptr[n_rows]) return;
    const long long r = scdl_gather_row(row_ptr, n_rows, i);
    const long long j = i - row_ptr[r];
    const long long slot = row_chunk[r];
    const long long k = (long long)((unsigned long long)src_start[r] + (unsigned long long)j);  // as in scdl_gather
    const long long d = dst_start[r] + j;
    int bad = (k < 0 || k >= chunk_len[slot]) ? 1 : 0;
    const TC c = bad ? TC(0) : ((const TC*)chunk_cols[slot])[k];
    if (!bad && (unsigned long long)c >= (unsigned long long)width) {
        bad = 2;
    }
    if (bad) {
        atomicOr(err, bad);
        out_vals[d] = TV(0);
        out_cols[d] = TC(0);
        return;
    }
    out_vals[d] = ((const TV*)chunk_vals[slot])[k];
    out_cols[d] = c;
}

// Every combination, for nvcc (compile test) and g++ (CPU shim); CuPy instantiates through
// name_expressions instead.
#ifdef SCDL_INSTANTIATE_ALL
#define SCDL_GATHER(TV, TC)                                                                                   \
    template __global__ void scdl_gather<TV, TC>(const TV*, const TC*, long long, const long long*,          \
                                                 const long long*, long long, long long, TV*, TC*, int*);     \
    template __global__ void scdl_gather_chunks<TV, TC>(const unsigned long long*, const unsigned long long*,  \
                                                        const long long*, const long long*, const long long*, \
                                                        const long long*, const long long*, long long, long long, \
                                                        TV*, TC*, int*);
#define SCDL_GATHER_ALL_TV(TC)                                                                                \
    SCDL_GATHER(unsigned char, TC) SCDL_GATHER(unsigned short, TC) SCDL_GATHER(unsigned int, TC)              \
    SCDL_GATHER(unsigned long long, TC) SCDL_GATHER(float, TC) SCDL_GATHER(double, TC)
SCDL_GATHER_ALL_TV(unsigned char)
SCDL_GATHER_ALL_TV(unsigned short)
SCDL_GATHER_ALL_TV(unsigned int)
SCDL_GATHER_ALL_TV(unsigned long long)
#endif
