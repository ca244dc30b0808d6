// The small steps between a decoder layer's matrix products, fused: RMSNorm (with the
// residual add before it), rotary embedding, SwiGLU's gate, and the greedy argmax.

#include "bf16_vec.h"
#include "ops.h"

#include <cstring>
#include <type_traits>

namespace {

using namespace kakehashi::cpu;

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

}  // namespace

namespace kakehashi::cpu {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_args(x, weight);
  const int64_t h = x.size(1);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const bf16* xp = data(x);
  const bf16* wp = data(weight);
  bf16* yp = mutable_data(y);
  parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
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
  parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
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
  parallel_for(0, tokens, 4, [&](int64_t begin, int64_t end) {
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
  parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
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

// Index of each row's maximum, the first one on ties, as torch.argmax (rows of -inf give 0;
// NaN is never picked). x (N, V) float32 or bfloat16 with contiguous rows.
template <typename T>
void argmax_rows_of(const T* xp, int64_t rows, int64_t width, int64_t stride, int64_t* op) {
  parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    const __m512i lane_ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t r = begin; r < end; ++r) {
      const T* row = xp + r * stride;
      __m512 best = minus_inf;
      __m512i best_index = _mm512_set1_epi32(std::numeric_limits<int32_t>::max());
      for (int64_t i = 0; i < width; i += 16) {
        const __mmask16 valid = tail_mask(width - i);
        __m512 v;
        if constexpr (std::is_same_v<T, float>) {
          v = _mm512_mask_loadu_ps(minus_inf, valid, row + i);
        } else {
          v = _mm512_mask_mov_ps(minus_inf, valid, load_bf16_as_float_masked(row + i, width - i));
        }
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
}

at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "x must be a 2-D float32 or bfloat16 CPU tensor");
  TORCH_CHECK(x.stride(1) == 1 && x.size(1) > 0, "x must have contiguous, non-empty rows");
  const int64_t rows = x.size(0), width = x.size(1), stride = x.stride(0);
  TORCH_CHECK(width < std::numeric_limits<int32_t>::max(), "rows too long");
  at::Tensor out = at::empty({rows}, x.options().dtype(at::kLong));
  int64_t* op = out.mutable_data_ptr<int64_t>();
  if (x.scalar_type() == at::kFloat)
    argmax_rows_of(x.const_data_ptr<float>(), rows, width, stride, op);
  else
    argmax_rows_of(data(x), rows, width, stride, op);
  return out;
}

// The rows of `table` (V, H) bfloat16 named by `ids` (T,) int64: torch's embedding, on our
// pool. torch's own lookup runs an OpenMP region for a prompt chunk, and OpenMP's threads
// then spin for milliseconds on the cores our pool's loops want.
at::Tensor embedding(const at::Tensor& table, const at::Tensor& ids) {
  check_bf16(table, "table", 2);
  TORCH_CHECK(table.stride(1) == 1, "table must have contiguous rows");
  TORCH_CHECK(ids.device().is_cpu() && ids.dim() == 1 && ids.scalar_type() == at::kLong,
              "ids must be a 1-D int64 CPU tensor");
  const int64_t rows = table.size(0), h = table.size(1), n = ids.size(0);
  const at::Tensor idx = ids.contiguous();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t)
    TORCH_CHECK(ip[t] >= 0 && ip[t] < rows, "id ", ip[t], " is out of range for ", rows, " rows");
  at::Tensor out = at::empty({n, h}, table.options());
  const bf16* tp = data(table);
  bf16* op = mutable_data(out);
  parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      std::memcpy(op + t * h, tp + ip[t] * table.stride(0), h * sizeof(bf16));
  });
  return out;
}

}  // namespace kakehashi::cpu

TORCH_LIBRARY_FRAGMENT(kakehashi, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm_(Tensor(a!) x, Tensor delta, Tensor weight, float eps) -> Tensor");
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor signed_sin, int heads) -> ()");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("embedding(Tensor table, Tensor ids) -> Tensor");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("rms_norm", &kakehashi::cpu::rms_norm);
  m.impl("add_rms_norm_", &kakehashi::cpu::add_rms_norm_);
  m.impl("rotary_", &kakehashi::cpu::rotary_);
  m.impl("silu_mul", &kakehashi::cpu::silu_mul);
  m.impl("argmax_rows", &kakehashi::cpu::argmax_rows);
  m.impl("embedding", &kakehashi::cpu::embedding);
}
