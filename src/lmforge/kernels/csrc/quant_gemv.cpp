// Block-quantized matrix x small-matrix products for decoding: out (M, N) = x (M, K) @ W (N, K)^T, W in
// Q8_0 (int8 + one fp16 scale per 32-block) or int4 (nibbles + an fp16 scale, and an fp16 min for the
// asymmetric format, per group of 32 / 64 / 128), x and out in f32. The formats are formats.py's
// (llama.cpp's Q8_0 / Q4_0 / Q4_1 for groups of 32), and so is the arithmetic: x is quantized once per call
// to int8 blocks of 32 (llama.cpp's quantize_row_q8_0 / q8_1), every block product is an exact integer sum,
// and only the f32 sum of d_w * d_x * isum over the blocks depends on the path.
//
// Decoding reads every weight once per token, so each weight vector is loaded (and its nibbles unpacked)
// once and dotted with all M <= 8 rows of x; NR output rows are in flight side by side (independent
// accumulators and load streams); a larger M runs in tiles of 8 over a block of rows that stays in cache.
// Threads split the output rows (at::parallel_for: torch's OpenMP pool).
//
// Paths, picked at run time (common.h):
//   AVX512-VNNI  vpdpbusd (u8 x s8 -> s32), two 32-blocks per zmm. Q8_0: the activations are stored as
//                q_x + 128 (u8), and dpbusd(q_x + 128, q_w) - 128 * sum(q_w) = sum q_x q_w. int4: the nibbles
//                are u8 already, dpbusd(q_w, q_x); the symmetric format's - 8 * sum(q_x) starts the sum.
//   AVX2         llama.cpp's mul_sum_i8_pairs: maddubs(|w|, sign(x, w)) (int16 pairs <= 2 * 127 * 127, no
//                saturation) then madd to int32, per 32-block.
//   scalar       any x86-64 (or an AVX-512 CPU without VNNI: it runs the AVX2 path).
// Each SIMD path keeps one f32 accumulator vector per (x row, output row): lane sums of whole-integer
// partial products, scaled by d_w * d_x of their block, reduced across lanes at the end.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"

namespace lmforge {
namespace {

constexpr int64_t kBlock = 32;  // elements per block along K (x's and the weights')
constexpr int64_t kTileM = 8;   // rows of x per tile: the decode case is M <= 8
constexpr int kLanes = 8;       // int32 lanes of one 32-block's partial sums (a ymm, half a zmm)

inline float half_to_float(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }
inline float round_to_half(float v) { return static_cast<float>(c10::Half(v)); }

// x quantized once per call, per 32-block (llama.cpp's quantize_row_q8_0 / q8_1 with SIMD rounding):
// d = amax / 127, q = round-half-to-even(x / d), d and s = d * sum(q) rounded to fp16. Alongside, the
// forms the paths load directly, in the byte order of the weight vectors they meet:
//   kNatural  (scalar, AVX2): q in element order; c8 lane j = -8 * (q[4j] + ... + q[4j + 3]);
//   kOffset   (Q8_0 on VNNI): q + 128 as u8 in element order;
//   kPairs    (int4 on VNNI): per pair of blocks (b, b + 1) the 64 bytes b[0:16] b+1[0:16] b[16:32]
//             b+1[16:32] (an odd last block: b[0:16] b[16:32]), matching the weight vector [v | v] & (0x0F |
//             0xF0) of the pair's 32 nibble bytes v; the high nibbles stay in place (16 q_w), so c8 is -128
//             * the lane sums there (and the scales are divided by 16, see q4_tile_vnni).
enum class Layout { kNatural, kOffset, kPairs };

struct QuantizedX {
  int64_t M = 0, K = 0, B = 0, groups = 0;
  std::vector<int8_t> q;      // (M, K) in the layout's order (kOffset: q + 128 as u8)
  std::vector<float> d;       // (M, B)
  std::vector<float> s;       // (M, B)
  std::vector<int32_t> qsum;  // (M, B) sum of q
  std::vector<int32_t> c8;    // (M, B, 8) the symmetric int4 correction per int32 lane, in the layout's order
  std::vector<float> sg;      // (M, groups) the sum of s over each weight group (asymmetric int4)

  const int8_t* q_at(int64_t m, int64_t b) const { return q.data() + m * K + b * kBlock; }
  const int32_t* c8_at(int64_t m, int64_t b) const { return c8.data() + (m * B + b) * kLanes; }
  const float* d_at(int64_t m, int64_t b) const { return d.data() + m * B + b; }
  const float* sg_at(int64_t m, int64_t g) const { return sg.data() + m * groups + g; }
};

QuantizedX quantize_x(const float* x, int64_t M, int64_t K, Layout layout, int64_t group_size) {
  QuantizedX qx;
  qx.M = M, qx.K = K, qx.B = K / kBlock, qx.groups = K / group_size;
  const int64_t B = qx.B, per_group = group_size / kBlock;
  qx.q.resize(M * K), qx.d.resize(M * B), qx.s.resize(M * B), qx.qsum.resize(M * B);
  qx.c8.resize(M * B * kLanes), qx.sg.assign(M * qx.groups, 0.0f);
  at::parallel_for(0, M, 8, [&](int64_t m_begin, int64_t m_end) {
    int8_t qb[kBlock];
    for (int64_t m = m_begin; m < m_end; ++m) {
      for (int64_t b = 0; b < B; ++b) {
        const int64_t i = m * B + b;
        const float* xb = x + i * kBlock;
        float amax = 0.0f;
        for (int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0, lane[kLanes];
        for (int64_t j = 0; j < kBlock; ++j) {
          qb[j] = static_cast<int8_t>(std::nearbyint(xb[j] * id));  // the default rounding: ties to even
          sum += qb[j];
        }
        for (int j = 0; j < kLanes; ++j) lane[j] = qb[4 * j] + qb[4 * j + 1] + qb[4 * j + 2] + qb[4 * j + 3];
        qx.d[i] = round_to_half(d), qx.s[i] = round_to_half(d * static_cast<float>(sum)), qx.qsum[i] = sum;
        qx.sg[m * qx.groups + b / per_group] += qx.s[i];
        int8_t* dst = qx.q.data() + i * kBlock;
        int32_t* c8 = qx.c8.data() + i * kLanes;
        if (layout == Layout::kOffset) {
          for (int64_t j = 0; j < kBlock; ++j) reinterpret_cast<uint8_t*>(dst)[j] = static_cast<uint8_t>(qb[j] + 128);
        } else if (layout == Layout::kNatural || (b % 2 == 0 && b + 1 == B)) {  // natural, or an odd last block
          std::memcpy(dst, qb, kBlock);
          for (int j = 0; j < kLanes; ++j) c8[j] = (layout == Layout::kPairs && j >= 4 ? -128 : -8) * lane[j];
        } else {  // kPairs: block b's halves go to bytes 0-15 / 32-47 of its pair, b + 1's to 16-31 / 48-63
          const int64_t odd = b % 2;
          int8_t* pair = dst - odd * kBlock;
          int32_t* pair_c8 = c8 - odd * kLanes;
          std::memcpy(pair + 16 * odd, qb, 16);
          std::memcpy(pair + 32 + 16 * odd, qb + 16, 16);
          for (int j = 0; j < 4; ++j) pair_c8[4 * odd + j] = -8 * lane[j], pair_c8[8 + 4 * odd + j] = -128 * lane[4 + j];
        }
      }
    }
  });
  return qx;
}

// What one call's kernels read: the quantized x, the weights (row-major, `w_stride` bytes a row), the fp16
// scales [and mins] (`g_stride` a row; block b's group is b >> gshift), and where the output goes.
struct Problem {
  const QuantizedX* qx;
  const uint8_t* w;
  int64_t w_stride;
  const uint16_t* scale;
  const uint16_t* min;  // null: symmetric int4 (or Q8_0)
  int64_t g_stride;
  int gshift;
  float* out;  // (M, N)
  int64_t N;
};

// ------------------------------------------------------------------------------------------ scalar

// out rows [n0, n1) for x rows [m0, m0 + mt): exact int32 block sums, f32 sums of their scaled values.
void q8_0_rows_scalar(const Problem& p, int64_t m0, int64_t mt, int64_t n0, int64_t n1) {
  const QuantizedX& qx = *p.qx;
  for (int64_t n = n0; n < n1; ++n) {
    const auto* w = reinterpret_cast<const int8_t*>(p.w + n * p.w_stride);
    for (int64_t m = m0; m < m0 + mt; ++m) {
      float acc = 0.0f;
      for (int64_t b = 0; b < qx.B; ++b) {
        const int8_t* xq = qx.q_at(m, b);
        const int8_t* wq = w + b * kBlock;
        int32_t isum = 0;
        for (int64_t j = 0; j < kBlock; ++j) isum += static_cast<int32_t>(wq[j]) * xq[j];
        acc += half_to_float(p.scale[n * p.g_stride + b]) * *qx.d_at(m, b) * static_cast<float>(isum);
      }
      p.out[m * p.N + n] = acc;
    }
  }
}

void q4_rows_scalar(const Problem& p, int64_t m0, int64_t mt, int64_t n0, int64_t n1) {
  const QuantizedX& qx = *p.qx;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.w + n * p.w_stride;
    for (int64_t m = m0; m < m0 + mt; ++m) {
      float acc = 0.0f;
      for (int64_t b = 0; b < qx.B; ++b) {
        const int8_t* xq = qx.q_at(m, b);
        const uint8_t* wq = w + b * (kBlock / 2);
        int32_t isum = 0;
        for (int64_t j = 0; j < kBlock / 2; ++j)
          isum += static_cast<int32_t>(wq[j] & 0x0F) * xq[j] + static_cast<int32_t>(wq[j] >> 4) * xq[j + 16];
        const int64_t g = n * p.g_stride + (b >> p.gshift), i = m * qx.B + b;
        if (p.min == nullptr) isum -= 8 * qx.qsum[i];
        acc += half_to_float(p.scale[g]) * qx.d[i] * static_cast<float>(isum);
        if (p.min != nullptr) acc += half_to_float(p.min[g]) * qx.s[i];
      }
      p.out[m * p.N + n] = acc;
    }
  }
}

// The asymmetric format's sum_g m_w[g] * (sum of s_x over group g), for x row m and weight row n.
LMFORGE_TARGET_AVX2 float min_term_avx2(const Problem& p, int64_t m, int64_t n) {
  const QuantizedX& qx = *p.qx;
  const uint16_t* mins = p.min + n * p.g_stride;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= qx.groups; g += 8)
    acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mins + g))),
                          _mm256_loadu_ps(qx.sg_at(m, g)), acc);
  float tail = 0.0f;
  for (; g < qx.groups; ++g) tail += _cvtsh_ss(mins[g]) * *qx.sg_at(m, g);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s) + tail;
}

// ------------------------------------------------------------------------------------------ AVX2

LMFORGE_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The weight scales of blocks [b0, b0 + 8) (fewer at the end: the rest 0) as 8 floats.
LMFORGE_TARGET_AVX2 inline __m256 chunk_scales8(const uint16_t* s, int64_t b0, int64_t count, int gshift) {
  alignas(16) uint16_t h[8] = {};
  for (int64_t j = 0; j < count; ++j) h[j] = s[(b0 + j) >> gshift];
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
}

LMFORGE_TARGET_AVX2 inline __m256 chunk_x_scales8(const float* d, int64_t count) {
  alignas(32) float v[8] = {};
  std::memcpy(v, d, count * sizeof(float));
  return _mm256_load_ps(v);
}

// Q8_0 (ASYM unused) or int4, MT rows of x by NR rows of w (at row n); blocks in chunks of 8 whose
// d_w * d_x are multiplied once, then picked per block with one permute.
template <int MT, int NR, bool Q8, bool ASYM>
LMFORGE_TARGET_AVX2 void tile_avx2(const Problem& p, int64_t m0, int64_t n) {
  const QuantizedX& qx = *p.qx;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i shift_high = _mm256_set_epi64x(4, 4, 0, 0);
  __m256 acc[MT][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm256_setzero_ps();
  for (int64_t b0 = 0; b0 < qx.B; b0 += 8) {
    const int64_t count = std::min<int64_t>(8, qx.B - b0);
    __m256 scale[MT][NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m256 dw = chunk_scales8(p.scale + (n + r) * p.g_stride, b0, count, Q8 ? 0 : p.gshift);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) scale[m][r] = _mm256_mul_ps(dw, chunk_x_scales8(qx.d_at(m0 + m, b0), count));
    }
    for (int64_t j = 0; j < count; ++j) {
      const int64_t b = b0 + j;
      const __m256i pick = _mm256_set1_epi32(static_cast<int>(j));
      __m256i wv[NR], aw[NR];
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const uint8_t* wp = p.w + (n + r) * p.w_stride;
        if (Q8) {
          wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + b * kBlock));
          aw[r] = _mm256_sign_epi8(wv[r], wv[r]);  // |w|
        } else {  // 16 bytes -> [v | v] -> low nibbles | high nibbles: 32 u8 in element order
          const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp + b * 16)));
          wv[r] = _mm256_and_si256(_mm256_srlv_epi64(v, shift_high), low4);
        }
      }
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx.q_at(m0 + m, b)));
        const __m256i init = Q8 || ASYM ? _mm256_setzero_si256()
                                        : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx.c8_at(m0 + m, b)));
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
          // int16 pairs: |w| |x| <= 127 * 127 (Q8_0), q_w |x| <= 15 * 127: maddubs does not saturate
          const __m256i pairs = Q8 ? _mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(xv, wv[r]))
                                   : _mm256_maddubs_epi16(wv[r], xv);
          __m256i dot = _mm256_madd_epi16(pairs, ones);
          if (!Q8 && !ASYM) dot = _mm256_add_epi32(dot, init);
          acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_permutevar8x32_ps(scale[m][r], pick),
                                      acc[m][r]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
      p.out[(m0 + m) * p.N + n + r] = hsum256(acc[m][r]) + (ASYM ? min_term_avx2(p, m0 + m, n + r) : 0.0f);
}

// ------------------------------------------------------------------------------------------ AVX512-VNNI

// Permute indices, per pair q of a 16-block chunk: Q8_0 lanes [2q x8, 2q+1 x8]; the int4 pair layout's
// [2q x4, 2q+1 x4, 16+2q x4, 17+2q x4] (16 + i: the scale divided by 16, for the high nibbles).
struct alignas(64) PermTables {
  int32_t q8[8][16];
  int32_t q4[8][16];
  PermTables() {
    for (int q = 0; q < 8; ++q)
      for (int lane = 0; lane < 16; ++lane) {
        q8[q][lane] = 2 * q + lane / 8;
        q4[q][lane] = 2 * q + (lane / 4) % 2 + 16 * (lane / 8);
      }
  }
};
const PermTables kPerm;

// The weight scales of blocks [b0, b0 + count) as 16 floats (count <= 16; the rest 0); groups of 64 / 128
// (gshift 1 / 2) repeat each of their scales over their 2 / 4 blocks.
LMFORGE_TARGET_AVX512_VNNI inline __m512 chunk_scales16(const uint16_t* s, int64_t b0, int64_t count, int gshift) {
  const int64_t g0 = b0 >> gshift, groups = ((b0 + count - 1) >> gshift) - g0 + 1;
  const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << groups) - 1), s + g0));
  if (gshift == 0) return v;
  const __m512i idx = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), gshift);
  return _mm512_maskz_permutexvar_ps(static_cast<__mmask16>((1u << count) - 1), idx, v);
}

LMFORGE_TARGET_AVX512_VNNI inline __m512 widen_to_512(__m256 v) { return _mm512_zextps256_ps512(v); }

template <int MT, int NR>
LMFORGE_TARGET_AVX512_VNNI void q8_0_tile_vnni(const Problem& p, int64_t m0, int64_t n) {
  const QuantizedX& qx = *p.qx;
  const __m512i k128 = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[MT][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < qx.B; b0 += 16) {
    const int64_t count = std::min<int64_t>(16, qx.B - b0);
    const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1);
    __m512 scale[MT][NR];  // d_w * d_x of the chunk's blocks
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512 dw = chunk_scales16(p.scale + (n + r) * p.g_stride, b0, count, 0);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) scale[m][r] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(mask, qx.d_at(m0 + m, b0)));
    }
    for (int64_t q = 0; q < count / 2; ++q) {
      const int64_t b = b0 + 2 * q;
      const __m512i pick = _mm512_load_si512(kPerm.q8[q]);
      __m512i wv[NR], base[NR];
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(p.w + (n + r + NR) * p.w_stride + b * kBlock), _MM_HINT_T0);
        wv[r] = _mm512_loadu_si512(p.w + (n + r) * p.w_stride + b * kBlock);
        base[r] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), k128, wv[r]));
      }
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m512i xu = _mm512_loadu_si512(qx.q_at(m0 + m, b));
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
          const __m512i dot = _mm512_dpbusd_epi32(base[r], xu, wv[r]);  // sum (q_x + 128) q_w - 128 sum q_w
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pick, scale[m][r]), acc[m][r]);
        }
      }
    }
    if (count % 2) {  // an odd last block: the same on ymm
      const int64_t b = b0 + count - 1;
      const __m512i pick = _mm512_set1_epi32(static_cast<int>(count - 1));
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const __m256i wv =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + (n + r) * p.w_stride + b * kBlock));
        const __m256i base = _mm256_sub_epi32(
            _mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm512_castsi512_si256(k128), wv));
#pragma GCC unroll 8
        for (int m = 0; m < MT; ++m) {
          const __m256i xu = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx.q_at(m0 + m, b)));
          const __m256 sc = _mm512_castps512_ps256(_mm512_permutexvar_ps(pick, scale[m][r]));
          const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(base, xu, wv)), sc);
          acc[m][r] = _mm512_add_ps(acc[m][r], widen_to_512(v));
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) p.out[(m0 + m) * p.N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

// int4 on VNNI: a pair of blocks' 32 nibble bytes v, broadcast to [v | v] and masked with 0x0F (low half) /
// 0xF0 (high half), meets x in the kPairs layout: one AND unpacks 64 weights, the high ones as 16 q_w,
// which the permute's second table (d_w d_x / 16, exact) scales back.
template <int MT, int NR, bool ASYM>
LMFORGE_TARGET_AVX512_VNNI void q4_tile_vnni(const Problem& p, int64_t m0, int64_t n) {
  const QuantizedX& qx = *p.qx;
  const __m512i nibbles = _mm512_inserti64x4(_mm512_set1_epi8(0x0F), _mm256_set1_epi8(static_cast<char>(0xF0)), 1);
  const __m512 sixteenth = _mm512_set1_ps(0.0625f);
  __m512 acc[MT][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t b0 = 0; b0 < qx.B; b0 += 16) {
    const int64_t count = std::min<int64_t>(16, qx.B - b0);
    const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1);
    __m512 scale[MT][NR], scale16[MT][NR];  // d_w * d_x of the chunk's blocks, and / 16
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512 dw = chunk_scales16(p.scale + (n + r) * p.g_stride, b0, count, p.gshift);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        scale[m][r] = _mm512_mul_ps(dw, _mm512_maskz_loadu_ps(mask, qx.d_at(m0 + m, b0)));
        scale16[m][r] = _mm512_mul_ps(scale[m][r], sixteenth);
      }
    }
    for (int64_t q = 0; q < count / 2; ++q) {
      const int64_t b = b0 + 2 * q;
      const __m512i pick = _mm512_load_si512(kPerm.q4[q]);
      __m512i wv[NR];
      if (q % 2 == 0)
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) _mm_prefetch(reinterpret_cast<const char*>(p.w + (n + r + NR) * p.w_stride + b * 16), _MM_HINT_T0);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r)
        wv[r] = _mm512_and_si512(
            _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + (n + r) * p.w_stride + b * 16))),
            nibbles);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m512i xv = _mm512_loadu_si512(qx.q_at(m0 + m, b));
        const __m512i init = ASYM ? _mm512_setzero_si512() : _mm512_loadu_si512(qx.c8_at(m0 + m, b));
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
          const __m512i dot = _mm512_dpbusd_epi32(init, wv[r], xv);  // sum q_w q_x [- 8 sum q_x], x16 high
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutex2var_ps(scale[m][r], pick, scale16[m][r]),
                                      acc[m][r]);
        }
      }
    }
    if (count % 2) {  // an odd last block (so G = 32): the same on ymm, x as b[0:16] b[16:32]
      const int64_t b = b0 + count - 1;
      const __m512i pick = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(count - 1)),
                                            _mm512_set_epi32(16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0));
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const __m256i wv = _mm256_and_si256(
            _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.w + (n + r) * p.w_stride + b * 16))),
            _mm512_castsi512_si256(_mm512_shuffle_i64x2(nibbles, nibbles, 0x08)));
#pragma GCC unroll 8
        for (int m = 0; m < MT; ++m) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx.q_at(m0 + m, b)));
          const __m256i init = ASYM ? _mm256_setzero_si256()
                                    : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx.c8_at(m0 + m, b)));
          const __m256 sc = _mm512_castps512_ps256(_mm512_permutex2var_ps(scale[m][r], pick, scale16[m][r]));
          const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(init, wv, xv)), sc);
          acc[m][r] = _mm512_add_ps(acc[m][r], widen_to_512(v));
        }
      }
    }
  }
  if (ASYM) {  // + sum_g m_w[g] * (sum of s_x over group g), on the same accumulators
    for (int64_t g0 = 0; g0 < qx.groups; g0 += 16) {
      const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, qx.groups - g0)) - 1);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const __m512 mw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.min + (n + r) * p.g_stride + g0));
#pragma GCC unroll 8
        for (int m = 0; m < MT; ++m) acc[m][r] = _mm512_fmadd_ps(mw, _mm512_maskz_loadu_ps(mask, qx.sg_at(m0 + m, g0)), acc[m][r]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) p.out[(m0 + m) * p.N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

// ------------------------------------------------------------------------------------------ dispatch

enum class Kind { kQ8_0, kQ4Sym, kQ4Asym };

// Output rows [n0, n1) for x rows [m0, m0 + MT), NR rows at a time: 4 for one x row (four streams in
// flight), fewer beyond so the MT * NR accumulators (and scale vectors) fit the 16 ymm / 32 zmm registers.
template <int MT>
void rows_simd(const Problem& p, Kind kind, bool vnni, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int NR = MT == 1 ? 4 : MT <= 3 ? 2 : 1;
  using Tile = void (*)(const Problem&, int64_t, int64_t);
  Tile wide, single;
  if (vnni) {
    wide = kind == Kind::kQ8_0 ? q8_0_tile_vnni<MT, NR> : kind == Kind::kQ4Sym ? q4_tile_vnni<MT, NR, false>
                                                                               : q4_tile_vnni<MT, NR, true>;
    single = kind == Kind::kQ8_0 ? q8_0_tile_vnni<MT, 1> : kind == Kind::kQ4Sym ? q4_tile_vnni<MT, 1, false>
                                                                                : q4_tile_vnni<MT, 1, true>;
  } else {
    wide = kind == Kind::kQ8_0 ? tile_avx2<MT, NR, true, false> : kind == Kind::kQ4Sym ? tile_avx2<MT, NR, false, false>
                                                                                       : tile_avx2<MT, NR, false, true>;
    single = kind == Kind::kQ8_0 ? tile_avx2<MT, 1, true, false> : kind == Kind::kQ4Sym ? tile_avx2<MT, 1, false, false>
                                                                                        : tile_avx2<MT, 1, false, true>;
  }
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) wide(p, m0, n);
  for (; n < n1; ++n) single(p, m0, n);
}

using RowsFn = void (*)(const Problem&, Kind, bool, int64_t, int64_t, int64_t);
constexpr RowsFn kRowsSimd[kTileM] = {rows_simd<1>, rows_simd<2>, rows_simd<3>, rows_simd<4>,
                                      rows_simd<5>, rows_simd<6>, rows_simd<7>, rows_simd<8>};

// Output rows per thread task: at least ~32K weight bytes x rows of x, so tiny products stay on one
// thread while SmolLM2's smallest matrix (192 x 576) still splits over two.
int64_t row_grain(int64_t M, int64_t row_bytes) {
  return std::max<int64_t>(4, 32768 / (std::min(M, kTileM) * std::max<int64_t>(1, row_bytes)));
}

void run(const Problem& p, Kind kind, int64_t M, int64_t row_bytes, int64_t level, bool vnni) {
  at::parallel_for(0, p.N, row_grain(M, row_bytes), [&](int64_t begin, int64_t end) {
    // M <= 8: one block (each weight read once); else ~16 KB of weight rows, reused from cache by each tile.
    const int64_t block = M <= kTileM ? end - begin : std::max<int64_t>(4, 16384 / std::max<int64_t>(1, row_bytes));
    for (int64_t n0 = begin; n0 < end; n0 += block) {
      const int64_t n1 = std::min(n0 + block, end);
      for (int64_t m0 = 0; m0 < M; m0 += kTileM) {
        const int64_t mt = std::min(kTileM, M - m0);
        if (level >= ISA_AVX2) {
          kRowsSimd[mt - 1](p, kind, vnni, m0, n0, n1);
        } else if (kind == Kind::kQ8_0) {
          q8_0_rows_scalar(p, m0, mt, n0, n1);
        } else {
          q4_rows_scalar(p, m0, mt, n0, n1);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------ ops

void check_x(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, op, ": x must be a 2-D (M, K) float32 tensor, got ",
              x.scalar_type(), " of shape ", x.sizes());
  TORCH_CHECK(x.size(1) % kBlock == 0, op, ": x's width K must be a multiple of 32 (the block size), got shape ",
              x.sizes());
}

void check_half(const char* op, const char* name, const at::Tensor& t, int64_t n, int64_t groups, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kHalf && t.size(0) == n && t.size(1) == groups, op, ": ", name,
              " must be float16 of shape (N, ", what, ") = (", n, ", ", groups, "), got ", t.scalar_type(),
              " of shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

at::Tensor gemv_q8_0(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& scale) {
  check_x("gemv_q8_0", x_in);
  const int64_t M = x_in.size(0), K = x_in.size(1);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.size(1) == K,
              "gemv_q8_0: w must be int8 of shape (N, K) with K = ", K, " (x's width), got ", w.scalar_type(),
              " of shape ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), "gemv_q8_0: w must be contiguous, got strides ", w.strides());
  const int64_t N = w.size(0);
  check_half("gemv_q8_0", "scale", scale, N, K / kBlock, "K/32");
  at::Tensor out = at::empty({M, N}, x_in.options());
  if (M == 0 || N == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const int64_t level = active_isa();
  const bool vnni = use_vnni();
  const QuantizedX qx = quantize_x(x.data_ptr<float>(), M, K, vnni ? Layout::kOffset : Layout::kNatural, kBlock);
  const Problem p{&qx, reinterpret_cast<const uint8_t*>(w.data_ptr<int8_t>()), K,
                  reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()), nullptr, K / kBlock, 0,
                  out.data_ptr<float>(), N};
  run(p, Kind::kQ8_0, M, K + 2 * (K / kBlock), level, vnni);
  return out;
}

at::Tensor gemv_q4(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& scale,
                   const std::optional<at::Tensor>& min, int64_t group_size) {
  TORCH_CHECK(group_size % kBlock == 0, "gemv_q4: group_size ", group_size, " must be a multiple of 32");
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128, "gemv_q4: group_size must be 32, 64 or ",
              "128, got ", group_size);
  check_x("gemv_q4", x_in);
  const int64_t M = x_in.size(0), K = x_in.size(1);
  TORCH_CHECK(K % group_size == 0, "gemv_q4: group_size ", group_size, " does not divide x's width K = ", K);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.size(1) == K / 2,
              "gemv_q4: w must be uint8 of shape (N, K/2) with K = ", K, " (x's width), got ", w.scalar_type(),
              " of shape ", w.sizes());
  TORCH_CHECK(w.is_contiguous(), "gemv_q4: w must be contiguous, got strides ", w.strides());
  const int64_t N = w.size(0), groups = K / group_size;
  check_half("gemv_q4", "scale", scale, N, groups, "K/group_size");
  const bool asym = min.has_value();
  if (asym) check_half("gemv_q4", "min", *min, N, groups, "K/group_size");
  at::Tensor out = at::empty({M, N}, x_in.options());
  if (M == 0 || N == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const int64_t level = active_isa();
  const bool vnni = use_vnni();
  const QuantizedX qx = quantize_x(x.data_ptr<float>(), M, K, vnni ? Layout::kPairs : Layout::kNatural, group_size);
  const int gshift = group_size == 32 ? 0 : group_size == 64 ? 1 : 2;
  const Problem p{&qx, w.data_ptr<uint8_t>(), K / 2, reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>()),
                  asym ? reinterpret_cast<const uint16_t*>(min->data_ptr<at::Half>()) : nullptr, groups, gshift,
                  out.data_ptr<float>(), N};
  run(p, asym ? Kind::kQ4Asym : Kind::kQ4Sym, M, K / 2 + (asym ? 4 : 2) * groups, level, vnni);
  return out;
}

}  // namespace
}  // namespace lmforge

TORCH_LIBRARY_FRAGMENT(lmforge, m) {
  m.def("gemv_q8_0(Tensor x, Tensor w, Tensor scale) -> Tensor");
  m.def("gemv_q4(Tensor x, Tensor w, Tensor scale, Tensor? min, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmforge, CPU, m) {
  m.impl("gemv_q8_0", &lmforge::gemv_q8_0);
  m.impl("gemv_q4", &lmforge::gemv_q4);
}
