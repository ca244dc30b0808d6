// bfloat16 CPU kernels for the decode path, on AVX-512 with the BF16 extension.
//
// Torch's own kernels are built for large matrices; a decode step is made of small ones
// (one to a few dozen token rows against weights of a few MB) and spends its time streaming
// weights and waking threads. These kernels read each weight row once per step, prefetch
// ahead of the stream, accumulate in float32 and round to bfloat16 once, as torch does.
//
// Registered as torch.ops.kakehashi.*; built and loaded by kakehashi.engine.kernels.

#include <ATen/Parallel.h>
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

namespace {

using bf16 = uint16_t;

constexpr int64_t kLanes = 32;      // bfloat16 values in one 512-bit register
constexpr int64_t kRowBlock = 4;    // weight rows that share one pass over an input row
constexpr int64_t kPrefetchRows = 8;  // how far ahead of the weight stream to prefetch
constexpr int64_t kTokenBlock = 4;  // input rows computed together against a weight block

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

// 16 bfloat16 values widened to float32.
inline __m512 load_bf16_as_float(const bf16* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// 16 float32 values rounded to bfloat16 (nearest even, as torch rounds), stored at p.
inline void store_as_bf16(bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}

// Values already representable in bfloat16: round-tripping is what torch's bf16 ops do
// between two steps of one formula.
inline __m512 round_bf16(__m512 v) {
  const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(v);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16));
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
}

// Up to 16 bfloat16 values widened to float32; lanes past `left` are zero.
inline __m512 load_bf16_as_float_masked(const bf16* p, int64_t left) {
  const __m256i raw = _mm256_maskz_loadu_epi16(tail_mask(left), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
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

void check_bf16(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, name, " must be bfloat16");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions");
}

// Dot products of `rows` consecutive weight rows with `tokens` input rows: out[t][r].
template <int64_t Rows, int64_t Tokens>
inline void dot_block(const bf16* w, const bf16* x, int64_t k_size, int64_t x_stride,
                      float out[Tokens][Rows]) {
  __m512 acc[Tokens][Rows];
  for (int64_t t = 0; t < Tokens; ++t)
    for (int64_t r = 0; r < Rows; ++r) acc[t][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_size; k += kLanes) {
    const int64_t left = k_size - k;
    // Prefetching from past the end of the weight is harmless: prefetches never fault.
    const char* ahead = reinterpret_cast<const char*>(w + kPrefetchRows * k_size + k);
    for (int64_t r = 0; r < Rows; ++r) _mm_prefetch(ahead + r * k_size * 2, _MM_HINT_T0);
    __m512bh wv[Rows];
    for (int64_t r = 0; r < Rows; ++r) wv[r] = load_bf16(w + r * k_size + k, left);
    for (int64_t t = 0; t < Tokens; ++t) {
      const __m512bh xv = load_bf16(x + t * x_stride + k, left);
      for (int64_t r = 0; r < Rows; ++r) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], wv[r], xv);
    }
  }
  for (int64_t t = 0; t < Tokens; ++t)
    for (int64_t r = 0; r < Rows; ++r) out[t][r] = _mm512_reduce_add_ps(acc[t][r]);
}

template <int64_t Rows, int64_t Tokens>
inline void linear_block(const bf16* w, const bf16* bias, const bf16* x, bf16* y, int64_t n0,
                         int64_t k_size, int64_t x_stride, int64_t n_size) {
  float sums[Tokens][Rows];
  dot_block<Rows, Tokens>(w + n0 * k_size, x, k_size, x_stride, sums);
  for (int64_t t = 0; t < Tokens; ++t)
    for (int64_t r = 0; r < Rows; ++r) {
      const float b = bias ? to_float(bias[n0 + r]) : 0.0f;
      y[t * n_size + n0 + r] = to_bf16(sums[t][r] + b);
    }
}

template <int64_t Tokens>
void linear_tokens(const bf16* w, const bf16* bias, const bf16* x, bf16* y, int64_t begin,
                   int64_t end, int64_t k_size, int64_t x_stride, int64_t n_size) {
  int64_t n = begin;
  for (; n + kRowBlock <= end; n += kRowBlock)
    linear_block<kRowBlock, Tokens>(w, bias, x, y, n, k_size, x_stride, n_size);
  for (; n < end; ++n) linear_block<1, Tokens>(w, bias, x, y, n, k_size, x_stride, n_size);
}

// y (M, N) = x (M, K) @ w (N, K)^T + bias: the weight is streamed once; each block of its
// rows meets every input row while it is in L1.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  check_bf16(x, "x", 2);
  check_bf16(w, "weight", 2);
  TORCH_CHECK(x.size(1) == w.size(1), "x has ", x.size(1), " features, weight ", w.size(1));
  TORCH_CHECK(x.stride(1) == 1, "x rows must be contiguous");
  TORCH_CHECK(w.is_contiguous(), "weight must be contiguous");
  const bf16* b = nullptr;
  if (bias.has_value()) {
    check_bf16(*bias, "bias", 1);
    TORCH_CHECK(bias->is_contiguous() && bias->size(0) == w.size(0), "bias must match weight");
    b = data(*bias);
  }
  const int64_t m_size = x.size(0), k_size = x.size(1), n_size = w.size(0);
  at::Tensor y = at::empty({m_size, n_size}, x.options());
  const bf16* wp = data(w);
  const bf16* xp = data(x);
  bf16* yp = mutable_data(y);
  const int64_t x_stride = x.stride(0);
  // Grain: a few weight rows per task keeps both cores streaming on the smallest layers.
  at::parallel_for(0, n_size / kRowBlock + 1, 16, [&](int64_t begin, int64_t end) {
    const int64_t n_begin = begin * kRowBlock, n_end = std::min(end * kRowBlock, n_size);
    if (n_begin >= n_end) return;
    int64_t m = 0;
    for (; m + kTokenBlock <= m_size; m += kTokenBlock)
      linear_tokens<kTokenBlock>(wp, b, xp + m * x_stride, yp + m * n_size, n_begin, n_end,
                                 k_size, x_stride, n_size);
    for (; m < m_size; ++m)
      linear_tokens<1>(wp, b, xp + m * x_stride, yp + m * n_size, n_begin, n_end, k_size,
                       x_stride, n_size);
  });
  return y;
}

// One row of Hugging Face's RMSNorm: weight * bf16(x * rsqrt(mean(x^2) + eps)).
void rms_norm_row(const bf16* x, const bf16* weight, bf16* out, int64_t h, float eps) {
  __m512 squares = _mm512_setzero_ps();
  for (int64_t i = 0; i < h; i += 16) {
    const __m512 v = load_bf16_as_float_masked(x + i, h - i);
    squares = _mm512_fmadd_ps(v, v, squares);
  }
  const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(h);
  const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
  for (int64_t i = 0; i < h; i += 16) {
    const __m512 normed = round_bf16(_mm512_mul_ps(load_bf16_as_float_masked(x + i, h - i), inv));
    store_as_bf16_masked(out + i, _mm512_mul_ps(load_bf16_as_float_masked(weight + i, h - i), normed),
                         h - i);
  }
}

void check_norm_args(const at::Tensor& x, const at::Tensor& weight) {
  check_bf16(x, "x", 2);
  check_bf16(weight, "weight", 1);
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  TORCH_CHECK(x.size(1) == weight.size(0), "weight must match x's last dimension");
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(x, weight);
  const int64_t h = x.size(1);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const bf16* xp = data(x);
  const bf16* wp = data(weight);
  bf16* yp = mutable_data(y);
  at::parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      rms_norm_row(xp + r * h, wp, yp + r * h, h, static_cast<float>(eps));
  });
  return y;
}

// The residual step of a pre-norm block: x += delta (rounded, as torch's add_), then
// returns rms_norm(x).
at::Tensor add_rms_norm_(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                         double eps) {
  check_norm_args(x, weight);
  check_bf16(delta, "delta", 2);
  TORCH_CHECK(delta.is_contiguous() && delta.sizes() == x.sizes(), "delta must match x");
  const int64_t h = x.size(1);
  at::Tensor y = at::empty(x.sizes(), x.options());
  bf16* xp = mutable_data(x);
  const bf16* dp = data(delta);
  const bf16* wp = data(weight);
  bf16* yp = mutable_data(y);
  at::parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = 0; i < h; i += 16) {
        const __m512 sum = _mm512_add_ps(load_bf16_as_float_masked(xp + r * h + i, h - i),
                                         load_bf16_as_float_masked(dp + r * h + i, h - i));
        store_as_bf16_masked(xp + r * h + i, sum, h - i);
      }
      rms_norm_row(xp + r * h, wp, yp + r * h, h, static_cast<float>(eps));
    }
  });
  return y;
}

// Rotary embedding in place on the first `heads` heads of x (T, >= heads, D), "rotate half"
// layout, with cos and sign-folded sin (T, 1, D) as the model computes them:
//   x * cos + cat(x2, x1) * cat(-sin, sin), with x * cos rounded first as torch does.
void rotary_(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin, int64_t heads) {
  check_bf16(x, "x", 3);
  check_bf16(cos, "cos", 3);
  check_bf16(signed_sin, "signed_sin", 3);
  const int64_t tokens = x.size(0), d = x.size(2);
  TORCH_CHECK(x.stride(2) == 1 && x.stride(1) == d, "x's heads must be contiguous rows");
  TORCH_CHECK(heads >= 0 && heads <= x.size(1), "more heads to rotate than x has");
  TORCH_CHECK(cos.is_contiguous() && signed_sin.is_contiguous() && cos.size(0) == tokens &&
                  cos.size(2) == d && signed_sin.sizes() == cos.sizes(),
              "cos and sin must be contiguous (T, 1, D)");
  TORCH_CHECK(d % 2 == 0, "head dim must be even");
  const int64_t half = d / 2, x_stride = x.stride(0);
  bf16* xp = mutable_data(x);
  const bf16* cp = data(cos);
  const bf16* sp = data(signed_sin);
  at::parallel_for(0, tokens, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const bf16* c = cp + t * d;
      const bf16* s = sp + t * d;
      for (int64_t head = 0; head < heads; ++head) {
        bf16* row = xp + t * x_stride + head * d;
        for (int64_t i = 0; i < half; i += 16) {
          const int64_t left = half - i;
          const __m512 x1 = load_bf16_as_float_masked(row + i, left);
          const __m512 x2 = load_bf16_as_float_masked(row + half + i, left);
          const __m512 c1 = load_bf16_as_float_masked(c + i, left);
          const __m512 c2 = load_bf16_as_float_masked(c + half + i, left);
          const __m512 s1 = load_bf16_as_float_masked(s + i, left);
          const __m512 s2 = load_bf16_as_float_masked(s + half + i, left);
          const __m512 out1 = _mm512_fmadd_ps(x2, s1, round_bf16(_mm512_mul_ps(x1, c1)));
          const __m512 out2 = _mm512_fmadd_ps(x1, s2, round_bf16(_mm512_mul_ps(x2, c2)));
          store_as_bf16_masked(row + i, out1, left);
          store_as_bf16_masked(row + half + i, out2, left);
        }
      }
    }
  });
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

// SwiGLU's gate: gate_up (T, 2I) -> bf16(silu(gate)) * up, (T, I), rounding as torch's
// silu-then-multiply does.
at::Tensor silu_mul(const at::Tensor& gate_up) {
  check_bf16(gate_up, "gate_up", 2);
  TORCH_CHECK(gate_up.stride(1) == 1 && gate_up.size(1) % 2 == 0,
              "gate_up must have contiguous rows of even width");
  const int64_t tokens = gate_up.size(0), width = gate_up.size(1) / 2, stride = gate_up.stride(0);
  at::Tensor out = at::empty({tokens, width}, gate_up.options());
  const bf16* gp = data(gate_up);
  bf16* op = mutable_data(out);
  at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t t = begin; t < end; ++t) {
      const bf16* gate = gp + t * stride;
      const bf16* up = gate + width;
      for (int64_t i = 0; i < width; i += 16) {
        const __m512 g = load_bf16_as_float_masked(gate + i, width - i);
        // sigmoid(g) from e = exp(-|g|) <= 1, which cannot overflow
        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
        const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
        const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
        const __m512 sigmoid = _mm512_mask_mul_ps(inv, negative, e, inv);
        const __m512 silu = round_bf16(_mm512_mul_ps(g, sigmoid));
        store_as_bf16_masked(op + t * width + i,
                             _mm512_mul_ps(silu, load_bf16_as_float_masked(up + i, width - i)),
                             width - i);
      }
    }
  });
  return out;
}

// In place: s[0..len) becomes softmax(s).
void softmax(float* s, int64_t len) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(s + t));
  float max_value = _mm512_reduce_max_ps(top);
  for (; t < len; ++t) max_value = std::max(max_value, s[t]);
  const __m512 shift = _mm512_set1_ps(max_value);
  __m512 total = _mm512_setzero_ps();
  for (t = 0; t < len; t += 16) {
    const __mmask16 mask = len - t >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (len - t)) - 1);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + t), shift));
    _mm512_mask_storeu_ps(s + t, mask, e);
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(mask, e));
  }
  const __m512 norm = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
  for (t = 0; t < len; t += 16) {
    const __mmask16 mask = len - t >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (len - t)) - 1);
    _mm512_mask_storeu_ps(s + t, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, s + t), norm));
  }
}

constexpr int64_t kMaxHeadVecs = 16;  // head dims up to 256

// dst[g] = sum_t p[g][t] * value_t for the `group` query heads of one kv head: each value row
// is widened once and used by up to Groups heads at a time, whose accumulators (Groups x Vecs
// vectors) stay in registers. `vecs` (<= Vecs) is the head dim / 16 when Vecs is only a bound.
template <int64_t Vecs, int64_t Groups>
void weighted_values(const float* p, int64_t len, int64_t group, const bf16* values,
                     const int64_t* offsets, bf16* dst, int64_t vecs = Vecs) {
  const int64_t d = vecs * 16;
  for (int64_t g0 = 0; g0 < group; g0 += Groups) {
    const int64_t count = std::min(Groups, group - g0);
    __m512 acc[Groups][Vecs];
    for (int64_t g = 0; g < Groups; ++g)
      for (int64_t v = 0; v < Vecs; ++v) acc[g][v] = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; ++t) {
      const bf16* row = values + offsets[t];
      __m512 widened[Vecs];
      for (int64_t v = 0; v < Vecs; ++v)
        if (v < vecs) widened[v] = load_bf16_as_float(row + v * 16);
      for (int64_t g = 0; g < Groups; ++g) {
        if (g >= count) break;
        const __m512 weight = _mm512_set1_ps(p[(g0 + g) * len + t]);
        for (int64_t v = 0; v < Vecs; ++v)
          if (v < vecs) acc[g][v] = _mm512_fmadd_ps(weight, widened[v], acc[g][v]);
      }
    }
    for (int64_t g = 0; g < count; ++g)
      for (int64_t v = 0; v < vecs; ++v) store_as_bf16(dst + (g0 + g) * d + v * 16, acc[g][v]);
  }
}

// The 16 horizontal sums of p[0..16), as one vector (lane j = sum of p[j]): a transpose-and-add
// tree, about three instructions per sum instead of a full reduction each.
inline __m512 sum16(const __m512 p[16]) {
  __m512 pairs[8], quads[4], octs[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(p[2 * i], p[2 * i + 1]),
                             _mm512_unpackhi_ps(p[2 * i], p[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: [a, b, c, d] partial sums
    const __m512d x = _mm512_castps_pd(pairs[2 * i]), y = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)  // lanes: [abcd from lanes 0+1, abcd 2+3, efgh 0+1, efgh 2+3]
    octs[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                            _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(octs[0], octs[1], 0x88),
                       _mm512_shuffle_f32x4(octs[0], octs[1], 0xDD));
}

// One decode query per sequence against its paged keys and values.
//   q (B, Hq, D), possibly a strided view; caches (num_blocks, block_size, Hkv, D);
//   block_tables (B, max_blocks) int32; context_lens (B,) int32. Returns (B, Hq, D).
// Each (sequence, kv head) pair is one task: its Hq / Hkv query heads share every key and
// value read, which is widened to float32 once. Scores and softmax are float32.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale) {
  check_bf16(q, "q", 3);
  check_bf16(k_cache, "k_cache", 4);
  check_bf16(v_cache, "v_cache", 4);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "key and value caches differ in shape");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.is_contiguous() &&
                  block_tables.dim() == 2,
              "block_tables must be a contiguous (B, max_blocks) int32 tensor");
  TORCH_CHECK(context_lens.scalar_type() == at::kInt && context_lens.is_contiguous(),
              "context_lens must be contiguous int32");
  const int64_t batch = q.size(0), q_heads = q.size(1), d = q.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1);
  const int64_t kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == d, "head dims differ");
  TORCH_CHECK(q.stride(2) == 1, "q's head dim must be contiguous");
  TORCH_CHECK(d % 16 == 0 && d / 16 <= kMaxHeadVecs, "head dim must be a multiple of 16, <= 256");
  TORCH_CHECK(q_heads % kv_heads == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(block_tables.size(0) == batch && context_lens.size(0) == batch,
              "one block table and context length per sequence");
  const int64_t group = q_heads / kv_heads;
  const int64_t max_blocks = block_tables.size(1);
  const int32_t* tables = block_tables.const_data_ptr<int32_t>();
  const int32_t* lens = context_lens.const_data_ptr<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= max_blocks * block_size,
                "context length ", lens[b], " does not fit its block table");
    for (int64_t i = 0; i < (lens[b] + block_size - 1) / block_size; ++i)
      TORCH_CHECK(tables[b * max_blocks + i] >= 0 && tables[b * max_blocks + i] < num_blocks,
                  "block id out of range");
  }
  at::Tensor out = at::empty({batch, q_heads, d}, q.options());
  const bf16* qp = data(q);
  const bf16* kp = data(k_cache);
  const bf16* vp = data(v_cache);
  bf16* op = mutable_data(out);
  const int64_t q_stride0 = q.stride(0), q_stride1 = q.stride(1);
  const int64_t token_stride = kv_heads * d;  // between consecutive slots of one head
  const int64_t vecs = d / 16;
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<bf16> packed_query(group * d);
    std::vector<int64_t> offsets;  // element offset of each context token's head row
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, h = task % kv_heads;
      const int64_t len = lens[b];
      const int32_t* table = tables + b * max_blocks;
      offsets.resize(len);
      for (int64_t block = 0, t = 0; t < len; ++block) {
        const int64_t base = static_cast<int64_t>(table[block]) * block_size * token_stride;
        for (int64_t i = 0; i < block_size && t < len; ++i, ++t) offsets[t] = base + i * token_stride;
      }
      // The group's query heads, contiguous (q may be a strided view).
      const bf16* query = qp + b * q_stride0 + h * group * q_stride1;
      if (q_stride1 != d) {
        for (int64_t g = 0; g < group; ++g)
          std::memcpy(&packed_query[g * d], query + g * q_stride1, d * sizeof(bf16));
        query = packed_query.data();
      }
      scores.resize(group * len);
      for (int64_t t0 = 0; t0 < len; t0 += 16) {
        const int64_t n = std::min<int64_t>(16, len - t0);
        const bf16* keys[16];
        // Past the context's end, recompute its last key: the result lanes are not stored.
        for (int64_t j = 0; j < 16; ++j) keys[j] = kp + offsets[t0 + std::min(j, n - 1)] + h * d;
        const __mmask16 mask = n == 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
        for (int64_t g = 0; g < group; ++g) {
          const bf16* qg = query + g * d;
          __m512 part[16];
#pragma GCC unroll 16
          for (int64_t j = 0; j < 16; ++j) {
            __m512 dot = _mm512_setzero_ps();
            for (int64_t c = 0; c < d; c += kLanes)
              dot = _mm512_dpbf16_ps(dot, load_bf16(keys[j] + c, d - c), load_bf16(qg + c, d - c));
            part[j] = dot;
          }
          _mm512_mask_storeu_ps(&scores[g * len + t0], mask,
                                _mm512_mul_ps(sum16(part), _mm512_set1_ps(static_cast<float>(scale))));
        }
      }
      for (int64_t g = 0; g < group; ++g) softmax(&scores[g * len], len);
      bf16* dst = op + (b * q_heads + h * group) * d;
      switch (vecs) {
        case 1: weighted_values<1, 4>(scores.data(), len, group, vp + h * d, offsets.data(), dst); break;
        case 2: weighted_values<2, 4>(scores.data(), len, group, vp + h * d, offsets.data(), dst); break;
        case 4: weighted_values<4, 4>(scores.data(), len, group, vp + h * d, offsets.data(), dst); break;
        case 8: weighted_values<8, 2>(scores.data(), len, group, vp + h * d, offsets.data(), dst); break;
        default:
          weighted_values<kMaxHeadVecs, 1>(scores.data(), len, group, vp + h * d, offsets.data(), dst, vecs);
      }
    }
  });
  return out;
}

// Writes this step's keys and values into their cache slots: k_cache[slot[t]] = k[t], the
// same for v. Caches (num_blocks, block_size, Hkv, D); k and v (T, Hkv, D) with contiguous
// heads (they may be views into the fused q/k/v projection); slots (T,) int64.
void store_kv_(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& slots,
               const at::Tensor& k, const at::Tensor& v) {
  check_bf16(k_cache, "k_cache", 4);
  check_bf16(v_cache, "v_cache", 4);
  check_bf16(k, "k", 3);
  check_bf16(v, "v", 3);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "key and value caches differ in shape");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.is_contiguous(),
              "slots must be a contiguous 1-D int64 tensor");
  const int64_t tokens = slots.size(0), heads = k_cache.size(2), d = k_cache.size(3);
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->size(0) == tokens && t->size(1) == heads && t->size(2) == d,
                "k and v must be (T, Hkv, D) matching the cache and slots");
    TORCH_CHECK(t->stride(2) == 1 && t->stride(1) == d, "k and v heads must be contiguous");
  }
  const int64_t* sp = slots.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < num_slots, "slot ", sp[t], " out of range");
  const int64_t row = heads * d;
  bf16* kc = mutable_data(k_cache);
  bf16* vc = mutable_data(v_cache);
  const bf16* kp = data(k);
  const bf16* vp = data(v);
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(kc + sp[t] * row, kp + t * k.stride(0), row * sizeof(bf16));
    std::memcpy(vc + sp[t] * row, vp + t * v.stride(0), row * sizeof(bf16));
  }
}

// Index of each row's maximum, the first one on ties, as torch.argmax (rows of -inf give 0;
// NaN is never picked). x (N, V) float32 with contiguous rows.
at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2,
              "x must be a 2-D float32 CPU tensor");
  TORCH_CHECK(x.stride(1) == 1 && x.size(1) > 0, "x must have contiguous, non-empty rows");
  const int64_t rows = x.size(0), width = x.size(1), stride = x.stride(0);
  TORCH_CHECK(width < std::numeric_limits<int32_t>::max(), "rows too long");
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  const float* xp = x.const_data_ptr<float>();
  int64_t* op = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    const __m512i lane_ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * stride;
      __m512 best = minus_inf;
      __m512i best_index = _mm512_set1_epi32(std::numeric_limits<int32_t>::max());
      for (int64_t i = 0; i < width; i += 16) {
        const __m512 v = _mm512_mask_loadu_ps(minus_inf, tail_mask(width - i), row + i);
        // Strictly greater: each lane keeps its first maximum.
        const __mmask16 better = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
        best = _mm512_mask_mov_ps(best, better, v);
        best_index = _mm512_mask_mov_epi32(
            best_index, better, _mm512_add_epi32(lane_ids, _mm512_set1_epi32(static_cast<int32_t>(i))));
      }
      const float top = _mm512_reduce_max_ps(best);
      if (top == -std::numeric_limits<float>::infinity()) {
        op[r] = 0;
        continue;
      }
      const __mmask16 at_top = _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
      op[r] = _mm512_mask_reduce_min_epi32(at_top, best_index);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(kakehashi, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm_(Tensor(a!) x, Tensor delta, Tensor weight, float eps) -> Tensor");
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor signed_sin, int heads) -> ()");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("store_kv_(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor k, Tensor v) -> ()");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor context_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("linear", &linear);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm_", &add_rms_norm_);
  m.impl("rotary_", &rotary_);
  m.impl("silu_mul", &silu_mul);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("store_kv_", &store_kv_);
  m.impl("paged_decode_attention", &paged_decode_attention);
}
