// Shared helpers of kakehashi's bfloat16 CPU kernels: AVX-512 loads, stores and rounding of
// bfloat16 values, a vectorized exp, and argument checks.

#pragma once

#include "parallel.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace kakehashi::cpu {

using bf16 = uint16_t;

constexpr int64_t kLanes = 32;  // bfloat16 values in one 512-bit register

inline float to_float(bf16 v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, as torch's float -> bfloat16 conversion does (NaN stays NaN).
inline bf16 to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<bf16>(bits >> 16);
}

// Up to 32 bfloat16 values from p; lanes past `count` read as zero.
inline __m512bh load_bf16(const bf16* p, int64_t count) {
  if (count >= kLanes) return (__m512bh)_mm512_loadu_si512(p);
  __mmask32 mask = (count <= 0) ? 0 : static_cast<__mmask32>((1ull << count) - 1);
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

// 16 bfloat16 values (held in a 256-bit register) widened to float32, exactly.
inline __m512 widen_bf16(__m256i raw) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// 16 bfloat16 values widened to float32.
inline __m512 load_bf16_as_float(const bf16* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 16 float32 values rounded to bfloat16 (nearest even, as torch rounds), stored at p.
inline void store_as_bf16(bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}

// Values already representable in bfloat16: round-tripping is what torch's bf16 ops do
// between two steps of one formula.
inline __m512 round_bf16(__m512 v) {
  return widen_bf16((__m256i)_mm512_cvtneps_pbh(v));
}

// Software prefetches the compiler must keep: GCC 12 deleted every _mm_prefetch loop from some
// builds of amx_linear.cpp (objdump showed none, and those builds ran 0.7x), depending on
// unrelated code in the same file. An asm volatile statement is never removed.
inline void prefetch_l1(const void* p) {
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
}
inline void prefetch_l2(const void* p) {
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
}

// Up to 16 bfloat16 values widened to float32; lanes past `left` are zero.
inline __m512 load_bf16_as_float_masked(const bf16* p, int64_t left) {
  return widen_bf16(_mm256_maskz_loadu_epi16(tail_mask(left), p));
}

inline void store_as_bf16_masked(bf16* p, __m512 v, int64_t left) {
  _mm256_mask_storeu_epi16(p, tail_mask(left), (__m256i)_mm512_cvtneps_pbh(v));
}

inline const bf16* data(const at::Tensor& t) {
  return reinterpret_cast<const bf16*>(t.const_data_ptr<c10::BFloat16>());
}

inline bf16* mutable_data(const at::Tensor& t) {
  return reinterpret_cast<bf16*>(t.mutable_data_ptr<c10::BFloat16>());
}

inline void check_bf16(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, name, " must be bfloat16");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions");
}

// The paged KV cache of one layer: (num_blocks, block_size, Hkv, D) bfloat16, contiguous,
// keys and values alike.
inline void check_paged_caches(const at::Tensor& k_cache, const at::Tensor& v_cache) {
  check_bf16(k_cache, "k_cache", 4);
  check_bf16(v_cache, "v_cache", 4);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "key and value caches differ in shape");
}

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n * e^r with r in
// [-ln2/2, ln2/2] and a degree-6 Taylor polynomial for e^r (relative error ~1e-7).
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));  // below this e^x is not a normal float
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln 2, high part
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);       // ln 2, low part
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Lane-wise operations for reduce_rows16.
struct AddLanes {
  __m512 operator()(__m512 a, __m512 b) const { return _mm512_add_ps(a, b); }
};
struct MaxLanes {
  __m512 operator()(__m512 a, __m512 b) const { return _mm512_max_ps(a, b); }
};

// Lane r of the result = op over the 16 lanes of v[r] (AddLanes: sums, MaxLanes: maxima): a
// transpose-and-combine tree, about two instructions per row instead of a reduction each.
template <typename Op>
inline __m512 reduce_rows16(const __m512 v[16], Op op) {
  __m512 pairs[8], quads[4], octs[2];
  for (int i = 0; i < 8; ++i)
    pairs[i] = op(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(pairs[2 * i]), y = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = op(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)
    octs[i] = op(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                 _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xDD));
  return op(_mm512_shuffle_f32x4(octs[0], octs[1], 0x88), _mm512_shuffle_f32x4(octs[0], octs[1], 0xDD));
}

}  // namespace kakehashi::cpu
