// Float matrix x small-matrix products for decoding: out (M, N) = x (M, K) @ w (N, K)^T, w in f32, bf16
// or int8 (+ a per-row scale), x and out in f32.
//
// Decoding reads every weight once per token, so these kernels are built to stream w at the memory
// bandwidth: each weight vector is loaded once and FMA'd into the accumulators of all M (<= 8) rows of x;
// NR output rows are read side by side (independent accumulators, NR sequential streams); a larger M runs
// in tiles of 8 over a block of rows small enough to stay in L1/L2. Threads split the output rows.
//
// Three paths, picked at run time (common.h): AVX-512 (16 floats a vector, K tails by masked loads),
// AVX2 (8 floats, scalar K tails) and scalar C++. bf16 with exact=false rounds x to bf16 and, where the
// CPU has AVX512-BF16, multiplies with vdpbf16ps (bf16 x bf16 products, f32 sums); elsewhere the same
// arithmetic is emulated: x rounded once, both operands widened, f32 FMA.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "common.h"

namespace lmforge {
namespace {

constexpr int64_t kTileM = 8;  // rows of x per tile: the decode case is M <= 8
constexpr int kPrefetch = 1;   // software-prefetch the weights kPrefetch tiles ahead (0: leave it to the hardware)

// Prefetch the cache lines at the same offset kPrefetch tiles (of NR contiguous rows) ahead, once per 64 bytes
// of a row; STEP is the elements the caller's loop advances by.
template <int NR, int STEP, typename WT>
inline void prefetch_ahead(const WT* w, int64_t K, int64_t k) {
  constexpr int64_t per_line = 64 / sizeof(WT);
  if (kPrefetch > 0 && (STEP >= per_line || k % per_line == 0))
    for (int r = 0; r < NR; ++r) __builtin_prefetch(w + (kPrefetch * NR + r) * K + k, 0, 3);
}

// Output rows per thread task: at least ~64K multiply-adds, so tiny products stay on one thread while
// SmolLM2's smallest matrix (192 x 576) still splits over two.
int64_t row_grain(int64_t M, int64_t K) { return std::max<int64_t>(4, 65536 / (std::min(M, kTileM) * K)); }

// Calls body(m0, mt, n0, n1) for every tile of x rows [m0, m0 + mt) and block of weight rows [n0, n1),
// the blocks split over threads. For M <= 8 a thread's rows are one block (each weight read once); for
// larger M a block is ~16 KB of weights, read from memory once and from cache by the other tiles.
template <typename Body>
void for_tiles(int64_t M, int64_t N, int64_t K, int64_t weight_bytes, const Body& body) {
  at::parallel_for(0, N, row_grain(M, K), [&](int64_t begin, int64_t end) {
    const int64_t block = M <= kTileM ? end - begin
                                      : std::max<int64_t>(4, 16384 / std::max<int64_t>(1, K * weight_bytes) / 4 * 4);
    for (int64_t n0 = begin; n0 < end; n0 += block) {
      const int64_t n1 = std::min(n0 + block, end);
      for (int64_t m0 = 0; m0 < M; m0 += kTileM) body(m0, std::min(kTileM, M - m0), n0, n1);
    }
  });
}

// ------------------------------------------------------------------------------------------ scalar

inline float widen(float v) { return v; }
inline float widen(int8_t v) { return static_cast<float>(v); }
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float widen(c10::BFloat16 v) { return bf16_bits_to_float(v.x); }

// out[m * ldo + r] = scale[r] * sum_k x[m * K + k] * w[r * K + k] for m < MT, r < NR (scale may be null).
template <typename WT, int MT, int NR>
void tile_scalar(const float* x, int64_t K, const WT* w, const float* scale, float* out, int64_t ldo) {
  float acc[MT][NR] = {};
  for (int64_t k = 0; k < K; ++k) {
    for (int r = 0; r < NR; ++r) {
      const float wv = widen(w[r * K + k]);
      for (int m = 0; m < MT; ++m) acc[m][r] += x[m * K + k] * wv;
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m) out[m * ldo + r] = (scale ? scale[r] : 1.0f) * acc[m][r];
}

template <typename WT, int MT>
void rows_scalar(const float* x, int64_t K, const WT* w, const float* scale, int64_t n0, int64_t n1, float* out,
                 int64_t ldo) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) tile_scalar<WT, MT, 4>(x, K, w + n * K, scale ? scale + n : nullptr, out + n, ldo);
  for (; n < n1; ++n) tile_scalar<WT, MT, 1>(x, K, w + n * K, scale ? scale + n : nullptr, out + n, ldo);
}

// ------------------------------------------------------------------------------------------ AVX2

LMFORGE_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight weights at p, widened to f32.
LMFORGE_TARGET_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
LMFORGE_TARGET_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
LMFORGE_TARGET_AVX2 inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

template <typename WT, int MT, int NR>
LMFORGE_TARGET_AVX2 void tile_avx2(const float* x, int64_t K, const WT* w, const float* scale, float* out,
                                   int64_t ldo) {
  __m256 acc[MT][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    prefetch_ahead<NR, 8>(w, K, k);
    __m256 wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = load8(w + r * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  float tail[MT][NR] = {};
  for (; k < K; ++k)
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MT; ++m) tail[m][r] += x[m * K + k] * widen(w[r * K + k]);
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m) out[m * ldo + r] = (scale ? scale[r] : 1.0f) * (hsum256(acc[m][r]) + tail[m][r]);
}

// 16 ymm registers: MT * NR accumulators + NR weight vectors + one x vector must fit.
template <typename WT, int MT>
LMFORGE_TARGET_AVX2 void rows_avx2(const float* x, int64_t K, const WT* w, const float* scale, int64_t n0,
                                   int64_t n1, float* out, int64_t ldo) {
  constexpr int NR = MT <= 2 ? 4 : MT <= 4 ? 2 : 1;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) tile_avx2<WT, MT, NR>(x, K, w + n * K, scale ? scale + n : nullptr, out + n, ldo);
  for (; n < n1; ++n) tile_avx2<WT, MT, 1>(x, K, w + n * K, scale ? scale + n : nullptr, out + n, ldo);
}

// ------------------------------------------------------------------------------------------ AVX-512

// Sixteen weights at p (the first `count` of them when masked; the rest read as 0), widened to f32.
LMFORGE_TARGET_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
LMFORGE_TARGET_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
LMFORGE_TARGET_AVX512 inline __m512 widen16(__m256i bf16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
}
LMFORGE_TARGET_AVX512 inline __m512 load16(const c10::BFloat16* p) {
  return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
LMFORGE_TARGET_AVX512 inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  return widen16(_mm256_maskz_loadu_epi16(m, p));
}
LMFORGE_TARGET_AVX512 inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
LMFORGE_TARGET_AVX512 inline __m512 load16(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

template <typename WT, int MT, int NR>
LMFORGE_TARGET_AVX512 void tile_avx512(const float* x, int64_t K, const WT* w, const float* scale, float* out,
                                       int64_t ldo) {
  __m512 acc[MT][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    prefetch_ahead<NR, 16>(w, K, k);
    __m512 wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = load16(w + r * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (k < K) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = load16(w + r * K + k, mask);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m) out[m * ldo + r] = (scale ? scale[r] : 1.0f) * _mm512_reduce_add_ps(acc[m][r]);
}

// 32 zmm registers: MT * NR accumulators + NR weight vectors + one x vector.
template <typename WT, int MT>
LMFORGE_TARGET_AVX512 void rows_avx512(const float* x, int64_t K, const WT* w, const float* scale, int64_t n0,
                                       int64_t n1, float* out, int64_t ldo) {
  constexpr int NR = MT <= 4 ? 4 : 2;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) tile_avx512<WT, MT, NR>(x, K, w + n * K, scale ? scale + n : nullptr, out + n, ldo);
  for (; n < n1; ++n) tile_avx512<WT, MT, 1>(x, K, w + n * K, scale ? scale + n : nullptr, out + n, ldo);
}

// AVX512-BF16: xb is x rounded to bf16, each row padded with zeros to ldx (a multiple of 32) elements;
// vdpbf16ps adds the products of element pairs (2i, 2i+1) into f32 lane i.
template <int MT, int NR>
LMFORGE_TARGET_AVX512_BF16 void tile_dpbf16(const uint16_t* xb, int64_t ldx, const uint16_t* w, int64_t K,
                                            float* out, int64_t ldo) {
  __m512 acc[MT][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    prefetch_ahead<NR, 32>(w, K, k);
    __m512i wv[NR];
    if (k + 32 <= K) {
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) wv[r] = _mm512_loadu_si512(w + r * K + k);
    } else {
      const __mmask32 mask = static_cast<__mmask32>((1ull << (K - k)) - 1);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + r * K + k);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m512i xv = _mm512_loadu_si512(xb + m * ldx + k);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)xv, (__m512bh)wv[r]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m) out[m * ldo + r] = _mm512_reduce_add_ps(acc[m][r]);
}

template <int MT>
LMFORGE_TARGET_AVX512_BF16 void rows_dpbf16(const uint16_t* xb, int64_t ldx, const uint16_t* w, int64_t K,
                                            int64_t n0, int64_t n1, float* out, int64_t ldo) {
  constexpr int NR = MT <= 4 ? 4 : 2;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) tile_dpbf16<MT, NR>(xb, ldx, w + n * K, K, out + n, ldo);
  for (; n < n1; ++n) tile_dpbf16<MT, 1>(xb, ldx, w + n * K, K, out + n, ldo);
}

// ------------------------------------------------------------------------------------------ dispatch

template <typename WT>
using RowsFn = void (*)(const float*, int64_t, const WT*, const float*, int64_t, int64_t, float*, int64_t);

// The row kernel for a tile of mt (1..8) rows of x at ISA level isa.
template <typename WT>
RowsFn<WT> pick_rows(int64_t isa, int64_t mt) {
  static constexpr RowsFn<WT> scalar[kTileM] = {rows_scalar<WT, 1>, rows_scalar<WT, 2>, rows_scalar<WT, 3>,
                                                rows_scalar<WT, 4>, rows_scalar<WT, 5>, rows_scalar<WT, 6>,
                                                rows_scalar<WT, 7>, rows_scalar<WT, 8>};
  static constexpr RowsFn<WT> avx2[kTileM] = {rows_avx2<WT, 1>, rows_avx2<WT, 2>, rows_avx2<WT, 3>,
                                              rows_avx2<WT, 4>, rows_avx2<WT, 5>, rows_avx2<WT, 6>,
                                              rows_avx2<WT, 7>, rows_avx2<WT, 8>};
  static constexpr RowsFn<WT> avx512[kTileM] = {rows_avx512<WT, 1>, rows_avx512<WT, 2>, rows_avx512<WT, 3>,
                                                rows_avx512<WT, 4>, rows_avx512<WT, 5>, rows_avx512<WT, 6>,
                                                rows_avx512<WT, 7>, rows_avx512<WT, 8>};
  const RowsFn<WT>* table = isa >= ISA_AVX512 ? avx512 : isa >= ISA_AVX2 ? avx2 : scalar;
  return table[mt - 1];
}

using DpRowsFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, int64_t, float*, int64_t);
constexpr DpRowsFn kDpRows[kTileM] = {rows_dpbf16<1>, rows_dpbf16<2>, rows_dpbf16<3>, rows_dpbf16<4>,
                                      rows_dpbf16<5>, rows_dpbf16<6>, rows_dpbf16<7>, rows_dpbf16<8>};

// out (M, N) = scale * (x (M, K) @ w (N, K)^T); scale (N,) or null.
template <typename WT>
void run_gemv(const float* x, int64_t M, int64_t K, const WT* w, const float* scale, int64_t N, float* out) {
  const int64_t isa = active_isa();
  for_tiles(M, N, K, sizeof(WT), [&](int64_t m0, int64_t mt, int64_t n0, int64_t n1) {
    pick_rows<WT>(isa, mt)(x + m0 * K, K, w, scale, n0, n1, out + m0 * N, N);
  });
}

// f32 -> bf16, round to nearest even (NaN stays NaN), as torch's Tensor.to(torch.bfloat16).
inline uint16_t round_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// ------------------------------------------------------------------------------------------ ops

// torch's names for the dtypes (float32, not Float), so the errors read like the Python side's.
const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    default: return c10::toString(t);
  }
}

void check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, op, ": x must be a 2-D (M, K) float32 tensor, got ",
              dtype_name(x.scalar_type()), " of shape ", x.sizes());
  TORCH_CHECK(x.size(1) >= 1, op, ": x must have K >= 1 columns, got shape ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous, got strides ", x.strides());
}

void check_w(const char* op, const at::Tensor& w, at::ScalarType dtype, int64_t K) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == dtype, op, ": w must be a 2-D (N, K) ", dtype_name(dtype),
              " tensor, got ", dtype_name(w.scalar_type()), " of shape ", w.sizes());
  TORCH_CHECK(w.size(1) == K, op, ": w must have K=", K, " columns like x, got shape ", w.sizes());
  TORCH_CHECK(w.size(0) >= 1, op, ": w must have N >= 1 rows, got shape ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), op, ": w must be contiguous, got strides ", w.strides());
}

at::Tensor gemv_f32(const at::Tensor& x, const at::Tensor& w) {
  check_x("gemv_f32", x);
  check_w("gemv_f32", w, at::kFloat, x.size(1));
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  run_gemv(x.data_ptr<float>(), M, K, w.data_ptr<float>(), nullptr, N, out.data_ptr<float>());
  return out;
}

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w, bool exact) {
  check_x("gemv_bf16", x);
  check_w("gemv_bf16", w, at::kBFloat16, x.size(1));
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const c10::BFloat16* wp = w.data_ptr<c10::BFloat16>();
  float* op = out.data_ptr<float>();
  if (exact) {
    run_gemv(xp, M, K, wp, nullptr, N, op);
  } else if (use_bf16()) {
    const int64_t ldx = (K + 31) / 32 * 32;  // (M, ldx) bf16, zero padded
    at::Tensor xb = at::zeros({M, ldx}, x.options().dtype(at::kBFloat16));
    auto* xbp = reinterpret_cast<uint16_t*>(xb.data_ptr<c10::BFloat16>());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) xbp[m * ldx + k] = round_to_bf16(xp[m * K + k]);
    const auto* wb = reinterpret_cast<const uint16_t*>(wp);
    for_tiles(M, N, K, 2, [&](int64_t m0, int64_t mt, int64_t n0, int64_t n1) {
      kDpRows[mt - 1](xbp + m0 * ldx, ldx, wb, K, n0, n1, op + m0 * N, N);
    });
  } else {
    at::Tensor xr = at::empty({M, K}, x.options());  // x rounded to bf16, held in f32
    float* xrp = xr.data_ptr<float>();
    for (int64_t i = 0; i < M * K; ++i) xrp[i] = bf16_bits_to_float(round_to_bf16(xp[i]));
    run_gemv(static_cast<const float*>(xrp), M, K, wp, nullptr, N, op);
  }
  return out;
}

at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  check_x("gemv_int8", x);
  check_w("gemv_int8", w, at::kChar, x.size(1));
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == N && scale.scalar_type() == at::kFloat,
              "gemv_int8: scale must have N=", N, " float32 entries, got ", dtype_name(scale.scalar_type()), " of shape ",
              scale.sizes());
  TORCH_CHECK(scale.is_contiguous(), "gemv_int8: scale must be contiguous");
  at::Tensor out = at::empty({M, N}, x.options());
  run_gemv(x.data_ptr<float>(), M, K, w.data_ptr<int8_t>(), scale.data_ptr<float>(), N, out.data_ptr<float>());
  return out;
}

void set_isa(int64_t level) {
  TORCH_CHECK(level >= -1 && level <= ISA_AVX512, "set_isa: level must be -1 (auto), 0 (scalar), 1 (avx2) or ",
              "2 (avx512), got ", level);
  requested_isa().store(level, std::memory_order_relaxed);
}

int64_t get_isa() { return active_isa(); }
bool uses_bf16() { return use_bf16(); }
bool uses_vnni() { return use_vnni(); }

}  // namespace
}  // namespace lmforge

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("gemv_f32(Tensor x, Tensor w) -> Tensor");
  m.def("gemv_bf16(Tensor x, Tensor w, bool exact) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor w, Tensor scale) -> Tensor");
  m.def("set_isa(int level) -> ()", &lmforge::set_isa);
  m.def("get_isa() -> int", &lmforge::get_isa);
  m.def("uses_bf16() -> bool", &lmforge::uses_bf16);
  m.def("uses_vnni() -> bool", &lmforge::uses_vnni);
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("gemv_f32", &lmforge::gemv_f32);
  m.impl("gemv_bf16", &lmforge::gemv_bf16);
  m.impl("gemv_int8", &lmforge::gemv_int8);
}
