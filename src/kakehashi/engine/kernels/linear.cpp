// Linear layers for one to a few token rows (decode), on AVX-512 BF16: the weight is streamed
// once per call with software prefetch ahead of the stream, four rows at a time meeting up to
// four input rows, accumulated in float32 and rounded to bfloat16 once, as torch does.

#include "bf16_vec.h"
#include "ops.h"

namespace {

using namespace kakehashi::cpu;

constexpr int64_t kRowBlock = 4;    // weight rows that share one pass over an input row
constexpr int64_t kPrefetchRows = 8;  // how far ahead of the weight stream to prefetch
constexpr int64_t kTokenBlock = 4;  // input rows computed together against a weight block

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
    for (int64_t r = 0; r < Rows; ++r) prefetch_l1(ahead + r * k_size * 2);
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

}  // namespace

namespace kakehashi::cpu {

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
  parallel_for(0, n_size / kRowBlock + 1, 16, [&](int64_t begin, int64_t end) {
    const int64_t n_begin = begin * kRowBlock, n_end = std::min(end * kRowBlock, n_size);
    if (n_begin >= n_end) return;
    int64_t m = 0;
    for (; m + kTokenBlock <= m_size; m += kTokenBlock)
      linear_tokens<kTokenBlock>(wp, b, xp + m * x_stride, yp + m * n_size, n_begin, n_end,
                                 k_size, x_stride, n_size);
    // The last one to three rows also in one pass over the weight, not one pass each.
    const bf16* x_rest = xp + m * x_stride;
    bf16* y_rest = yp + m * n_size;
    switch (m_size - m) {
      case 3:
        linear_tokens<3>(wp, b, x_rest, y_rest, n_begin, n_end, k_size, x_stride, n_size);
        break;
      case 2:
        linear_tokens<2>(wp, b, x_rest, y_rest, n_begin, n_end, k_size, x_stride, n_size);
        break;
      case 1:
        linear_tokens<1>(wp, b, x_rest, y_rest, n_begin, n_end, k_size, x_stride, n_size);
        break;
      default:
        break;
    }
  });
  return y;
}

}  // namespace kakehashi::cpu

TORCH_LIBRARY_FRAGMENT(kakehashi, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("linear", &kakehashi::cpu::linear);
}
