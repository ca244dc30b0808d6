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

inline const bf16* data(const at::Tensor& t) {
  return reinterpret_cast<const bf16*>(t.const_data_ptr<c10::BFloat16>());
}

inline bf16* mutable_data(at::Tensor& t) {
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

// weight * bf16(x * rsqrt(mean(x^2) + eps)), the float32 math Hugging Face's RMSNorm does.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_bf16(x, "x", 2);
  check_bf16(weight, "weight", 1);
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "x and weight must be contiguous");
  TORCH_CHECK(x.size(1) == weight.size(0), "weight must match x's last dimension");
  const int64_t rows = x.size(0), h = x.size(1);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const bf16* xp = data(x);
  const bf16* wp = data(weight);
  bf16* yp = mutable_data(y);
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const bf16* row = xp + r * h;
      float sum = 0.0f;
      for (int64_t i = 0; i < h; ++i) {
        const float v = to_float(row[i]);
        sum += v * v;
      }
      const float inv = 1.0f / std::sqrt(sum / static_cast<float>(h) + static_cast<float>(eps));
      bf16* out = yp + r * h;
      for (int64_t i = 0; i < h; ++i)
        out[i] = to_bf16(to_float(wp[i]) * to_float(to_bf16(to_float(row[i]) * inv)));
    }
  });
  return y;
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
    std::vector<float> query(group * d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, h = task % kv_heads;
      const int64_t len = lens[b];
      const int32_t* table = tables + b * max_blocks;
      auto slot_of = [&](int64_t t) {
        return static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
      };
      for (int64_t g = 0; g < group; ++g) {
        const bf16* src = qp + b * q_stride0 + (h * group + g) * q_stride1;
        for (int64_t i = 0; i < d; ++i)
          query[g * d + i] = to_float(src[i]) * static_cast<float>(scale);
      }
      scores.resize(group * len);
      for (int64_t t0 = 0; t0 < len; t0 += 16) {
        const int64_t n = std::min<int64_t>(16, len - t0);
        const bf16* keys[16];
        for (int64_t j = 0; j < n; ++j) keys[j] = kp + slot_of(t0 + j) * token_stride + h * d;
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = &query[g * d];
          __m512 part[16];
          for (int64_t j = 0; j < 16; ++j) part[j] = _mm512_setzero_ps();
          for (int64_t j = 0; j < n; ++j)
            for (int64_t v = 0; v < vecs; ++v)
              part[j] = _mm512_fmadd_ps(_mm512_loadu_ps(qg + v * 16),
                                        load_bf16_as_float(keys[j] + v * 16), part[j]);
          const __mmask16 mask = n == 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
          _mm512_mask_storeu_ps(&scores[g * len + t0], mask, sum16(part));
        }
      }
      for (int64_t g = 0; g < group; ++g) softmax(&scores[g * len], len);
      for (int64_t g = 0; g < group; ++g) {
        __m512 acc[kMaxHeadVecs];
        for (int64_t v = 0; v < vecs; ++v) acc[v] = _mm512_setzero_ps();
        const float* p = &scores[g * len];
        for (int64_t t = 0; t < len; ++t) {
          const bf16* value = vp + slot_of(t) * token_stride + h * d;
          const __m512 weight = _mm512_set1_ps(p[t]);
          for (int64_t v = 0; v < vecs; ++v)
            acc[v] = _mm512_fmadd_ps(weight, load_bf16_as_float(value + v * 16), acc[v]);
        }
        bf16* dst = op + (b * q_heads + h * group + g) * d;
        for (int64_t v = 0; v < vecs; ++v) {
          alignas(64) float lanes[16];
          _mm512_store_ps(lanes, acc[v]);
          for (int64_t i = 0; i < 16; ++i) dst[v * 16 + i] = to_bf16(lanes[i]);
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(kakehashi, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor context_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("linear", &linear);
  m.impl("rms_norm", &rms_norm);
  m.impl("paged_decode_attention", &paged_decode_attention);
}
