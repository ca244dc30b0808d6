// Attention of decode steps against the paged KV cache, read in place through block tables,
// and the write of a step's keys and values into their slots.

#include "bf16_vec.h"
#include "ops.h"

#include <tuple>
#include <utility>

namespace {

using namespace kakehashi::cpu;

// In place: s[0..len) becomes exp(s - max(s)); returns that max and the sum of the
// exponentials (the caller normalizes, possibly after merging several chunks).
std::pair<float, float> exp_scores(float* s, int64_t len) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(s + t));
  float max_value = _mm512_reduce_max_ps(top);
  for (; t < len; ++t) max_value = std::max(max_value, s[t]);
  const __m512 shift = _mm512_set1_ps(max_value);
  __m512 total = _mm512_setzero_ps();
  for (t = 0; t < len; t += 16) {
    const __mmask16 mask = tail_mask(len - t);
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + t), shift));
    _mm512_mask_storeu_ps(s + t, mask, e);
    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(mask, e));
  }
  return {max_value, _mm512_reduce_add_ps(total)};
}

constexpr int64_t kMaxHeadVecs = 16;  // head dims up to 256
constexpr int64_t kMinChunkTokens = 256;  // context tokens below which a task is not split
// Context tokens ahead of the scores loop whose key rows are prefetched: 1.4-2x faster at
// batch 32, where every (sequence, kv head) reads a few short strided runs of rows.
constexpr int64_t kKeysAhead = 64;

// Prefetches the head rows of context tokens [t0, t1): row t starts at base + offsets[t].
inline void prefetch_rows(const bf16* base, const int64_t* offsets, int64_t t0, int64_t t1,
                          int64_t row_bytes) {
  for (int64_t t = t0; t < t1; ++t) {
    const char* p = reinterpret_cast<const char*>(base + offsets[t]);
    for (int64_t b = 0; b < row_bytes; b += 64) prefetch_l1(p + b);
  }
}

// What one work item (a sequence's kv head, or a chunk of its context) reads and writes.
struct Item {
  const bf16* query;         // `group` query heads of d values, contiguous
  const bf16* keys;          // the kv head's key row of context token t: keys + offsets[t]
  const bf16* values;        // likewise for values
  const int64_t* offsets;
  int64_t len;               // context tokens
  int64_t group;             // query heads sharing the kv head
  float* scores;             // group x len
};

// scores[g][t] = scale * q_g . k_t for the item's context, 16 tokens at a time. Vecs is the
// head dim / 16 when known at compile time, 0 to take it from `vecs`.
template <int64_t Vecs>
void key_scores(const Item& it, float scale, int64_t vecs) {
  const int64_t d = (Vecs ? Vecs : vecs) * 16;
  const int64_t row_bytes = d * 2;
  prefetch_rows(it.keys, it.offsets, 0, std::min(it.len, kKeysAhead), row_bytes);
  for (int64_t t0 = 0; t0 < it.len; t0 += 16) {
    const int64_t n = std::min<int64_t>(16, it.len - t0);
    prefetch_rows(it.keys, it.offsets, std::min(it.len, t0 + kKeysAhead),
                  std::min(it.len, t0 + kKeysAhead + 16), row_bytes);
    // The values follow the scores: fetched now, they are in cache when weighed.
    prefetch_rows(it.values, it.offsets, t0, t0 + n, row_bytes);
    // Past the item's end, recompute its last key: the result lanes are not stored.
    int64_t rows[16];
    for (int64_t j = 0; j < 16; ++j) rows[j] = it.offsets[t0 + std::min(j, n - 1)];
    const __mmask16 mask = tail_mask(n);
    for (int64_t g = 0; g < it.group; ++g) {
      const bf16* qg = it.query + g * d;
      __m512 part[16];
#pragma GCC unroll 16
      for (int64_t j = 0; j < 16; ++j) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < d; c += kLanes)
          dot = _mm512_dpbf16_ps(dot, load_bf16(it.keys + rows[j] + c, d - c), load_bf16(qg + c, d - c));
        part[j] = dot;
      }
      _mm512_mask_storeu_ps(it.scores + g * it.len + t0, mask,
                            _mm512_mul_ps(reduce_rows16(part, AddLanes{}), _mm512_set1_ps(scale)));
    }
  }
}

// dst[g] = sum_t p[g][t] * value_t (float32) for G query heads at once: each value row is
// widened once and its G x Vecs accumulators stay in registers.
template <int64_t Vecs, int64_t G>
void weighted_values_exact(const Item& it, int64_t g0, float* dst) {
  constexpr int64_t d = Vecs * 16;
  __m512 acc[G][Vecs];
  for (int64_t g = 0; g < G; ++g)
    for (int64_t v = 0; v < Vecs; ++v) acc[g][v] = _mm512_setzero_ps();
  const float* p = it.scores + g0 * it.len;
  for (int64_t t = 0; t < it.len; ++t) {
    const bf16* row = it.values + it.offsets[t];
    __m512 widened[Vecs];
    for (int64_t v = 0; v < Vecs; ++v) widened[v] = load_bf16_as_float(row + v * 16);
    for (int64_t g = 0; g < G; ++g) {
      const __m512 weight = _mm512_set1_ps(p[g * it.len + t]);
      for (int64_t v = 0; v < Vecs; ++v) acc[g][v] = _mm512_fmadd_ps(weight, widened[v], acc[g][v]);
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t v = 0; v < Vecs; ++v) _mm512_storeu_ps(dst + (g0 + g) * d + v * 16, acc[g][v]);
}

// All `group` heads, in register blocks of up to kBlock heads.
template <int64_t Vecs>
void weighted_values(const Item& it, float* dst) {
  constexpr int64_t kBlock = Vecs <= 4 ? 4 : 2;
  int64_t g0 = 0;
  for (; g0 + kBlock <= it.group; g0 += kBlock) weighted_values_exact<Vecs, kBlock>(it, g0, dst);
  switch (it.group - g0) {
    case 3: if constexpr (kBlock > 3) weighted_values_exact<Vecs, 3>(it, g0, dst); break;
    case 2: if constexpr (kBlock > 2) weighted_values_exact<Vecs, 2>(it, g0, dst); break;
    case 1: weighted_values_exact<Vecs, 1>(it, g0, dst); break;
    default: break;
  }
}

// Any head dim (a multiple of 16 up to 256), one query head at a time.
void weighted_values_any(const Item& it, int64_t vecs, float* dst) {
  const int64_t d = vecs * 16;
  for (int64_t g = 0; g < it.group; ++g) {
    __m512 acc[kMaxHeadVecs];
    for (int64_t v = 0; v < kMaxHeadVecs; ++v) acc[v] = _mm512_setzero_ps();
    const float* p = it.scores + g * it.len;
    for (int64_t t = 0; t < it.len; ++t) {
      const bf16* row = it.values + it.offsets[t];
      const __m512 weight = _mm512_set1_ps(p[t]);
      for (int64_t v = 0; v < kMaxHeadVecs; ++v)
        if (v < vecs) acc[v] = _mm512_fmadd_ps(weight, load_bf16_as_float(row + v * 16), acc[v]);
    }
    for (int64_t v = 0; v < vecs; ++v) _mm512_storeu_ps(dst + g * d + v * 16, acc[v]);
  }
}

}  // namespace

namespace kakehashi::cpu {

// One decode query per sequence against its paged keys and values.
//   q (B, Hq, D), possibly a strided view; caches (num_blocks, block_size, Hkv, D);
//   block_tables (B, max_blocks) int32; context_lens (B,) int32. Returns (B, Hq, D).
// Each (sequence, kv head) pair is one task: its Hq / Hkv query heads share every key and
// value read, which is widened to float32 once. Scores and softmax are float32.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                  const at::Tensor& v_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, double scale) {
  check_bf16(q, "q", 3);
  check_paged_caches(k_cache, v_cache);
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
  // Few (sequence, kv head) tasks over long contexts (batch-1 decode of a long chat) would
  // leave threads idle: their contexts are then cut into chunks whose softmax partials
  // (max, sum, unnormalized output) are merged at the end.
  const int64_t tasks = batch * kv_heads;
  int64_t longest = 0;
  for (int64_t b = 0; b < batch; ++b) longest = std::max<int64_t>(longest, lens[b]);
  const int64_t wanted = 4 * parallel_threads();
  const int64_t most_chunks = std::max<int64_t>(1, longest / kMinChunkTokens);
  const int64_t chunks =
      tasks >= wanted ? 1 : std::min(most_chunks, (wanted + tasks - 1) / tasks);
  const int64_t items = tasks * chunks;
  std::vector<float> part_max(items * group), part_sum(items * group), part_out(items * group * d);
  parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<bf16> packed_query(group * d);
    std::vector<int64_t> offsets;  // element offset of each context token's head row
    for (int64_t item = begin; item < end; ++item) {
      const int64_t task = item / chunks, chunk = item % chunks;
      const int64_t b = task / kv_heads, h = task % kv_heads;
      const int64_t lo = lens[b] * chunk / chunks, hi = lens[b] * (chunk + 1) / chunks;
      const int64_t len = hi - lo;
      float* out_max = &part_max[item * group];
      float* out_sum = &part_sum[item * group];
      float* out_acc = &part_out[item * group * d];
      if (len == 0) {
        std::fill(out_max, out_max + group, -std::numeric_limits<float>::infinity());
        std::fill(out_sum, out_sum + group, 0.0f);
        std::fill(out_acc, out_acc + group * d, 0.0f);
        continue;
      }
      const int32_t* table = tables + b * max_blocks;
      offsets.resize(len);
      for (int64_t t = 0, pos = lo; t < len;) {
        const int64_t base = static_cast<int64_t>(table[pos / block_size]) * block_size;
        for (int64_t i = pos % block_size; i < block_size && t < len; ++i, ++t, ++pos)
          offsets[t] = (base + i) * token_stride;
      }
      // The group's query heads, contiguous (q may be a strided view).
      const bf16* query = qp + b * q_stride0 + h * group * q_stride1;
      if (q_stride1 != d) {
        for (int64_t g = 0; g < group; ++g)
          std::memcpy(&packed_query[g * d], query + g * q_stride1, d * sizeof(bf16));
        query = packed_query.data();
      }
      scores.resize(group * len);
      const Item it{query, kp + h * d, vp + h * d, offsets.data(), len, group, scores.data()};
      const float fscale = static_cast<float>(scale);
      switch (vecs) {
        case 4: key_scores<4>(it, fscale, vecs); break;
        case 8: key_scores<8>(it, fscale, vecs); break;
        default: key_scores<0>(it, fscale, vecs);
      }
      for (int64_t g = 0; g < group; ++g)
        std::tie(out_max[g], out_sum[g]) = exp_scores(&scores[g * len], len);
      switch (vecs) {
        case 4: weighted_values<4>(it, out_acc); break;
        case 8: weighted_values<8>(it, out_acc); break;
        default: weighted_values_any(it, vecs, out_acc);
      }
      if (chunks == 1) {  // the whole context: normalize and write the output right here
        for (int64_t g = 0; g < group; ++g) {
          const __m512 norm = _mm512_set1_ps(1.0f / out_sum[g]);
          bf16* dst = op + (b * q_heads + h * group + g) * d;
          for (int64_t v = 0; v < vecs; ++v)
            store_as_bf16(dst + v * 16, _mm512_mul_ps(_mm512_loadu_ps(out_acc + g * d + v * 16), norm));
        }
      }
    }
  });
  if (chunks == 1) return out;
  // Merge each task's chunks: rescale every partial to the task's overall max, then divide
  // by the total weight.
  std::vector<float> merged(d);
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t b = task / kv_heads, h = task % kv_heads;
    for (int64_t g = 0; g < group; ++g) {
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) top = std::max(top, part_max[(task * chunks + c) * group + g]);
      float total = 0.0f;
      std::fill(merged.begin(), merged.end(), 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t item = task * chunks + c;
        const float m = part_max[item * group + g];
        if (m == -std::numeric_limits<float>::infinity()) continue;
        const float weight = std::exp(m - top);
        total += weight * part_sum[item * group + g];
        const float* acc = &part_out[(item * group + g) * d];
        for (int64_t i = 0; i < d; ++i) merged[i] += weight * acc[i];
      }
      bf16* dst = op + (b * q_heads + h * group + g) * d;
      const float norm = 1.0f / total;
      for (int64_t i = 0; i < d; ++i) dst[i] = to_bf16(merged[i] * norm);
    }
  }
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
  // The slots are scattered over the pool: fetch every destination line first, so that the
  // copies do not wait for one cache miss after another (1.5x for 30 layers of a batch-32
  // step; PREFETCHW measured the same).
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t byte = 0; byte < row * 2; byte += 64) {
      prefetch_l1(reinterpret_cast<const char*>(kc + sp[t] * row) + byte);
      prefetch_l1(reinterpret_cast<const char*>(vc + sp[t] * row) + byte);
    }
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(kc + sp[t] * row, kp + t * k.stride(0), row * sizeof(bf16));
    std::memcpy(vc + sp[t] * row, vp + t * v.stride(0), row * sizeof(bf16));
  }
}

}  // namespace kakehashi::cpu

TORCH_LIBRARY_FRAGMENT(kakehashi, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor context_lens, float scale) -> Tensor");
  m.def("store_kv_(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor k, Tensor v) -> ()");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("paged_decode_attention", &kakehashi::cpu::paged_decode_attention);
  m.impl("store_kv_", &kakehashi::cpu::store_kv_);
}
