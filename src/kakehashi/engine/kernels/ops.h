// The kernels' entry points, callable from C++ without torch's dispatcher (decoder_layer.cpp
// chains them). Each is also registered as torch.ops.kakehashi.<name>; shapes and checks are
// documented where it is defined.

#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace kakehashi::cpu {

// linear.cpp
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias);

// amx_linear.cpp
at::Tensor amx_pack(const at::Tensor& weight);
at::Tensor amx_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t k,
                      const std::optional<at::Tensor>& bias);

// attention.cpp
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale);
void store_kv_(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& slots,
               const at::Tensor& k, const at::Tensor& v);

// prefill_attention.cpp
at::Tensor paged_prefill_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                   const at::Tensor& v_cache, const at::Tensor& block_table,
                                   int64_t context_len, double scale);

// pointwise.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor add_rms_norm_(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                         double eps);
void rotary_(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin,
             int64_t heads);
at::Tensor silu_mul(const at::Tensor& gate_up);
at::Tensor argmax_rows(const at::Tensor& x);

}  // namespace kakehashi::cpu
