// Causal attention of a prompt chunk against its sequence's paged keys and values, on AMX:
// the prefill counterpart of paged_decode_attention (flash-attention style: an online softmax
// over chunks of 128 keys, nothing of size queries x keys ever stored).
//
// Grouped-query attention is folded into the rows: for kv head h, row r is query token r / g
// with query head h * g + r % g (g query heads per kv head), so the keys and values of h are
// packed once into tile layout and every row tile of every query head reads them.
//
// Registered as torch.ops.kakehashi.paged_prefill_attention.

#include "amx.h"
#include "bf16_vec.h"
#include "ops.h"

#include <vector>

namespace {

using namespace kakehashi::cpu;

constexpr int64_t kRows = 16;   // rows of a tile: query rows, or keys of a key tile
constexpr int64_t kChunk = 128;  // keys per online-softmax step: eight 16-key score tiles
constexpr int64_t kDStep = 32;  // head dims one TDPBF16PS consumes (Q.K^T)
constexpr int64_t kKeyStep = 32;  // keys one TDPBF16PS consumes (P.V)
constexpr int64_t kCols = 16;   // output columns of an accumulator tile
// Packed keys and values a thread keeps between calls, at most (16 MiB of values: an 8K-token
// context of 8 kv heads of 128).
constexpr size_t kKeepPackedBytes = size_t{16} << 20;

// Tiles: 0..3 accumulators (scores of four key tiles, or four 16-column slices of P.V),
// 4 the A operand (query rows or probabilities), 5 and 6 alternate as the B operand.
void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 7; ++t) {
    cfg.rows[t] = kRows;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

struct Layout {
  int64_t d, kv_heads, block_size, token_stride;  // token_stride: elements between slots
  int64_t len;         // context length (keys)
  int64_t padded_len;  // rounded up to whole chunks; keys past len are zero
};

inline const bf16* key_row(const bf16* cache, const int32_t* table, const Layout& l, int64_t head,
                           int64_t key) {
  const int64_t slot = static_cast<int64_t>(table[key / l.block_size]) * l.block_size +
                       key % l.block_size;
  return cache + slot * l.token_stride + head * l.d;
}

// Transposes a 16 x 16 block of dwords held one row per register: dwords within 128-bit
// lanes first (32-bit, then 64-bit unpacks), then the 128-bit lanes across registers.
inline void transpose_16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int k = 0; k < 16; k += 2) {
    t[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
  }
  for (int k = 0; k < 16; k += 4) {  // u[k + m], lane L: column 4L + m of rows k..k + 3
    u[k] = _mm512_unpacklo_epi64(t[k], t[k + 2]);
    u[k + 1] = _mm512_unpackhi_epi64(t[k], t[k + 2]);
    u[k + 2] = _mm512_unpacklo_epi64(t[k + 1], t[k + 3]);
    u[k + 3] = _mm512_unpackhi_epi64(t[k + 1], t[k + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x44);
    const __m512i v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x44);
    const __m512i v3 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xEE);
    r[m] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + m] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + m] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + m] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// Keys of one head in the B layout of Q.K^T: for key tile t and head-dim step s, 16 rows of
// dword pairs [d pair p][key j] = (K[16t + j][32s + 2p], K[16t + j][32s + 2p + 1]), i.e. the
// tile's 16 key rows transposed as dwords, one 16 x 16 block per step.
void pack_keys(const bf16* cache, const int32_t* table, const Layout& l, int64_t head,
               int64_t tile_begin, int64_t tile_end, uint32_t* out) {
  const int64_t steps = l.d / kDStep;
  for (int64_t t = tile_begin; t < tile_end; ++t) {
    uint32_t* tile = out + t * steps * kRows * kRows;
    const bf16* rows[kRows];
    for (int64_t j = 0; j < kRows; ++j) {
      const int64_t key = t * kRows + j;
      rows[j] = key < l.len ? key_row(cache, table, l, head, key) : nullptr;  // past the end: 0
    }
    for (int64_t step = 0; step < steps; ++step) {
      __m512i block[kRows];
      for (int64_t j = 0; j < kRows; ++j)
        block[j] = rows[j] ? _mm512_loadu_si512(rows[j] + step * kDStep) : _mm512_setzero_si512();
      transpose_16x16(block);
      for (int64_t p = 0; p < kRows; ++p)
        _mm512_storeu_si512(tile + (step * kRows + p) * kRows, block[p]);
    }
  }
}

// Values of one head in the B layout of P.V: for key step u (32 keys) and column slice c,
// 16 rows [key pair p][column i][2] = (V[32u + 2p][16c + i], V[32u + 2p + 1][16c + i]).
void pack_values(const bf16* cache, const int32_t* table, const Layout& l, int64_t head,
                 int64_t step_begin, int64_t step_end, bf16* out) {
  const int64_t slices = l.d / kCols;
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t u = step_begin; u < step_end; ++u) {
    bf16* step = out + u * slices * kRows * kCols * 2;
    for (int64_t p = 0; p < kRows; ++p) {
      const int64_t key = u * kKeyStep + 2 * p;
      const bf16* even = key < l.len ? key_row(cache, table, l, head, key) : nullptr;
      const bf16* odd = key + 1 < l.len ? key_row(cache, table, l, head, key + 1) : nullptr;
      for (int64_t c = 0; c < slices; ++c) {
        // one dword per column: the even key's value in the low half, the odd key's above
        const __m256i lo = even ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(even + c * kCols)) : zero;
        const __m256i hi = odd ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd + c * kCols)) : zero;
        const __m512i pairs = _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                              _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
        _mm512_storeu_si512(step + (c * kRows + p) * kCols * 2, pairs);
      }
    }
  }
}

// The running state of one row tile: max and sum of exponentials per row, and the unnormalized
// output (16 x d float32).
struct RowState {
  float max[kRows];
  float sum[kRows];
  std::vector<float> out;
};

// Scores of 16 rows against the kChunk keys of chunk `c`, into s (16 x kChunk float32), four
// 16-key tiles at a time.
void chunk_scores(const bf16* q_rows, int64_t d, const uint32_t* keys, int64_t c, float* s) {
  const int64_t steps = d / kDStep;
  const int64_t tile_elems = kRows * kRows;  // dwords per packed key tile and step
  constexpr int kStride = kChunk * sizeof(float);
  for (int64_t part = 0; part < kChunk / 64; ++part) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const uint32_t* base = keys + (c * kChunk / kRows + part * 4) * steps * tile_elems;
    for (int64_t st = 0; st < steps; ++st) {
      _tile_loadd(4, q_rows + st * kDStep, d * sizeof(bf16));
      _tile_loadd(5, base + (0 * steps + st) * tile_elems, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, base + (1 * steps + st) * tile_elems, 64);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(5, base + (2 * steps + st) * tile_elems, 64);
      _tile_dpbf16ps(2, 4, 5);
      _tile_loadd(6, base + (3 * steps + st) * tile_elems, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
    float* out = s + part * 64;
    _tile_stored(0, out, kStride);
    _tile_stored(1, out + 16, kStride);
    _tile_stored(2, out + 32, kStride);
    _tile_stored(3, out + 48, kStride);
  }
}

// exp(x) for x <= 0, accurate to about 1e-4 (relative): enough for probabilities that are
// rounded to bfloat16 (8 significant bits) next. 2^n * e^r, |r| <= ln2/2, degree-4 Taylor.
inline __m512 exp_for_bf16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147181f), x);
  __m512 p = _mm512_set1_ps(1.0f / 24);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Online softmax step over the raw scores of chunk `c` (row r may see keys up to limit[r]):
// updates each row's max and sum, rescales its output, and writes the probabilities
// softmax(scale * s) as bfloat16 (16 x kChunk, the A operand of P.V). Masked = false is for
// a chunk every row sees whole. A row's arithmetic is the same either way, so a token gets
// the same bits whichever rows share its tile (prefix reuse must not change greedy output);
// each row's maximum and sum come out of one 16-row reduction.
template <bool Masked>
void chunk_softmax(const float* s, int64_t c, const int64_t* limit, float scale, int64_t d,
                   RowState& st, bf16* p) {
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  constexpr int kGroups = kChunk / 16;
  __mmask16 visible[kRows][kGroups];
  __m512 part[kRows];
  for (int64_t r = 0; r < kRows; ++r) {  // the largest visible score of each row
    const float* row = s + r * kChunk;
    if constexpr (Masked) {
      const __m512i lim = _mm512_set1_epi32(static_cast<int32_t>(
          std::clamp<int64_t>(limit[r] - c * kChunk, -1, kChunk)));
      const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
      for (int g = 0; g < kGroups; ++g)
        visible[r][g] = _mm512_cmple_epi32_mask(_mm512_add_epi32(lanes, _mm512_set1_epi32(g * 16)), lim);
    }
    __m512 top = _mm512_set1_ps(kMinusInf);
    for (int g = 0; g < kGroups; ++g)
      top = Masked ? _mm512_mask_max_ps(top, visible[r][g], top, _mm512_loadu_ps(row + g * 16))
                   : _mm512_max_ps(top, _mm512_loadu_ps(row + g * 16));
    part[r] = top;
  }
  // All rows at once: the new maxima and the factor each row's earlier terms shrink by
  // (1 where the chunk adds nothing new; 0 where there were no earlier terms). scale > 0
  // keeps the maximum.
  const __m512 scale_v = _mm512_set1_ps(scale);
  const __m512 chunk_max = _mm512_mul_ps(reduce_rows16(part, MaxLanes{}), scale_v);
  const __m512 old_max = _mm512_loadu_ps(st.max);
  const __m512 new_max = _mm512_max_ps(old_max, chunk_max);
  const __mmask16 had_terms = _mm512_cmp_ps_mask(old_max, _mm512_set1_ps(kMinusInf), _CMP_NEQ_OQ);
  const __m512 rescale =
      _mm512_maskz_mov_ps(had_terms, exp_nonpositive(_mm512_sub_ps(old_max, new_max)));
  const __mmask16 seen = _mm512_cmp_ps_mask(chunk_max, _mm512_set1_ps(kMinusInf), _CMP_NEQ_OQ);
  _mm512_storeu_ps(st.max, new_max);
  for (int64_t r = 0; r < kRows; ++r) {
    bf16* p_row = p + r * kChunk;
    part[r] = _mm512_setzero_ps();
    if (Masked && !((seen >> r) & 1)) {  // no visible key here
      std::memset(p_row, 0, kChunk * sizeof(bf16));
      continue;
    }
    const float* row = s + r * kChunk;
    const __m512 shift = _mm512_set1_ps(st.max[r]);
    __m512 total = _mm512_setzero_ps();
    for (int g = 0; g < kGroups; ++g) {
      const __m512 x = _mm512_fmsub_ps(_mm512_loadu_ps(row + g * 16), scale_v, shift);
      __m512 e = exp_for_bf16(x);
      if constexpr (Masked) e = _mm512_maskz_mov_ps(visible[r][g], e);
      // The sum takes the probabilities as P.V will see them, rounded to bfloat16.
      const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p_row + g * 16), rounded);
      total = _mm512_add_ps(total, widen_bf16(rounded));
    }
    part[r] = total;
  }
  const __m512 sums = reduce_rows16(part, AddLanes{});
  _mm512_storeu_ps(st.sum, _mm512_fmadd_ps(_mm512_loadu_ps(st.sum), rescale, sums));
  alignas(64) float factor[kRows];
  _mm512_store_ps(factor, rescale);
  for (__mmask16 shrink = _mm512_cmp_ps_mask(rescale, _mm512_set1_ps(1.0f), _CMP_NEQ_OQ); shrink;
       shrink &= shrink - 1) {
    const int r = __builtin_ctz(shrink);
    float* o = st.out.data() + r * d;
    const __m512 f = _mm512_set1_ps(factor[r]);
    for (int64_t i = 0; i < d; i += 16) _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(o + i), f));
  }
}

// out += P (16 x kChunk) . V (the chunk's keys x d), four column slices at a time.
void chunk_values(const bf16* p, const bf16* values, int64_t c, int64_t d, float* scratch,
                  float* out) {
  const int64_t slices = d / kCols;
  const int64_t step_elems = slices * kRows * kCols * 2;  // one packed key step
  const int64_t tile_elems = kRows * kCols * 2;
  for (int64_t c0 = 0; c0 < slices; c0 += 4) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t u = 0; u < kChunk / kKeyStep; ++u) {
      const bf16* step = values + (c * (kChunk / kKeyStep) + u) * step_elems + c0 * tile_elems;
      _tile_loadd(4, p + u * kKeyStep, kChunk * sizeof(bf16));
      _tile_loadd(5, step, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, step + tile_elems, 64);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(5, step + 2 * tile_elems, 64);
      _tile_dpbf16ps(2, 4, 5);
      _tile_loadd(6, step + 3 * tile_elems, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
    constexpr int kStride = 4 * kCols * sizeof(float);
    _tile_stored(0, scratch, kStride);
    _tile_stored(1, scratch + 16, kStride);
    _tile_stored(2, scratch + 32, kStride);
    _tile_stored(3, scratch + 48, kStride);
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t i = 0; i < 4; ++i) {
        float* o = out + r * d + (c0 + i) * kCols;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_loadu_ps(scratch + r * 64 + i * 16)));
      }
  }
}

}  // namespace

namespace kakehashi::cpu {

// q (n, Hq, D), possibly a strided view, holds the queries of a sequence's last n tokens;
// their keys and values are already in the caches (num_blocks, block_size, Hkv, D), with the
// sequence's earlier ones. block_table (blocks,) int32 covers its context_len tokens.
// Query i (position context_len - n + i) attends to keys 0..that position. Returns
// (n, Hq, D). D must be 64, 128 or 256; the CPU must have AMX.
at::Tensor paged_prefill_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                   const at::Tensor& v_cache, const at::Tensor& block_table,
                                   int64_t context_len, double scale) {
  check_bf16(q, "q", 3);
  check_paged_caches(k_cache, v_cache);
  TORCH_CHECK(block_table.scalar_type() == at::kInt && block_table.is_contiguous() &&
                  block_table.dim() == 1,
              "block_table must be a contiguous 1-D int32 tensor");
  const int64_t n = q.size(0), q_heads = q.size(1), d = q.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1);
  const int64_t kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == d, "head dims differ");
  TORCH_CHECK(d == 64 || d == 128 || d == 256, "head dim must be 64, 128 or 256");
  TORCH_CHECK(q.stride(2) == 1, "q's head dim must be contiguous");
  TORCH_CHECK(q_heads % kv_heads == 0, "query heads must be a multiple of kv heads");
  TORCH_CHECK(n >= 1 && context_len >= n, "context_len must cover the n query tokens");
  TORCH_CHECK(block_table.size(0) * block_size >= context_len,
              "context length ", context_len, " does not fit its block table");
  const int32_t* table = block_table.const_data_ptr<int32_t>();
  for (int64_t i = 0; i < (context_len + block_size - 1) / block_size; ++i)
    TORCH_CHECK(table[i] >= 0 && table[i] < num_blocks, "block id out of range");
  require_amx();

  const int64_t group = q_heads / kv_heads;
  const Layout layout{d, kv_heads, block_size, kv_heads * d, context_len,
                      (context_len + kChunk - 1) / kChunk * kChunk};
  // Packed keys and values of every kv head, built once and read by every row tile.
  const int64_t head_elems = layout.padded_len * d;
  // The packers write every element (zeros past the context), so the buffers need no
  // clearing. Kept by the calling thread, they cost no fresh pages per call (1.05-1.3x per
  // call); very long contexts give theirs back at the end.
  thread_local std::vector<uint32_t> keys;
  thread_local std::vector<bf16> values;
  if (values.size() < static_cast<size_t>(kv_heads * head_elems)) {
    keys.resize(kv_heads * head_elems / 2);
    values.resize(kv_heads * head_elems);
  }
  // Raw pointers for the worker threads: a thread_local named inside them would be theirs.
  uint32_t* const packed_keys = keys.data();
  bf16* const packed_values = values.data();
  const bf16* kp = data(k_cache);
  const bf16* vp = data(v_cache);
  const int64_t key_tiles = layout.padded_len / kRows, key_steps = layout.padded_len / kKeyStep;
  parallel_for(0, kv_heads * key_tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end;) {
      const int64_t head = task / key_tiles, t0 = task % key_tiles;
      const int64_t t1 = std::min(key_tiles, t0 + (end - task));
      pack_keys(kp, table, layout, head, t0, t1, packed_keys + head * head_elems / 2);
      // value steps are two key tiles: the task covering an even tile packs the step
      pack_values(vp, table, layout, head, (t0 + 1) / 2, (t1 + 1) / 2,
                  packed_values + head * head_elems);
      task += t1 - t0;
    }
  });

  at::Tensor out = at::empty({n, q_heads, d}, q.options());
  const bf16* qp = data(q);
  bf16* op = mutable_data(out);
  const int64_t rows = n * group, row_tiles = (rows + kRows - 1) / kRows;
  const int64_t first_pos = context_len - n;
  parallel_for(0, kv_heads * row_tiles, 1, [&](int64_t begin, int64_t end) {
    configure_tiles();
    std::vector<bf16> q_rows(kRows * d);
    alignas(64) float s[kRows * kChunk];
    alignas(64) float scratch[kRows * 4 * kCols];
    alignas(64) bf16 p[kRows * kChunk];
    RowState st;
    st.out.resize(kRows * d);
    int64_t limit[kRows];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t head = task / row_tiles, r0 = (task % row_tiles) * kRows;
      const int64_t valid = std::min(kRows, rows - r0);
      int64_t last_pos = 0;
      // Keys every row of the tile sees (padding rows see the same; their output is dropped).
      int64_t first_visible_all = std::numeric_limits<int64_t>::max();
      for (int64_t r = 0; r < kRows; ++r) {
        bf16* dst = q_rows.data() + r * d;
        if (r >= valid) {
          std::memset(dst, 0, d * sizeof(bf16));
          limit[r] = -1;  // padding row: sees nothing
          continue;
        }
        const int64_t token = (r0 + r) / group, qh = head * group + (r0 + r) % group;
        std::memcpy(dst, qp + token * q.stride(0) + qh * q.stride(1), d * sizeof(bf16));
        limit[r] = first_pos + token;
        last_pos = std::max(last_pos, limit[r]);
        first_visible_all = std::min(first_visible_all, limit[r]);
      }
      std::fill(st.max, st.max + kRows, -std::numeric_limits<float>::infinity());
      std::fill(st.sum, st.sum + kRows, 0.0f);
      std::fill(st.out.begin(), st.out.end(), 0.0f);
      const uint32_t* head_keys = packed_keys + head * head_elems / 2;
      const bf16* head_values = packed_values + head * head_elems;
      for (int64_t c = 0; c * kChunk <= last_pos; ++c) {
        chunk_scores(q_rows.data(), d, head_keys, c, s);
        if (c * kChunk + kChunk - 1 <= first_visible_all)
          chunk_softmax<false>(s, c, limit, static_cast<float>(scale), d, st, p);
        else
          chunk_softmax<true>(s, c, limit, static_cast<float>(scale), d, st, p);
        chunk_values(p, head_values, c, d, scratch, st.out.data());
      }
      for (int64_t r = 0; r < valid; ++r) {
        const int64_t token = (r0 + r) / group, qh = head * group + (r0 + r) % group;
        const __m512 inv = _mm512_set1_ps(1.0f / st.sum[r]);
        const float* o = st.out.data() + r * d;
        bf16* dst = op + (token * q_heads + qh) * d;
        for (int64_t i = 0; i < d; i += 16)
          store_as_bf16(dst + i, _mm512_mul_ps(_mm512_loadu_ps(o + i), inv));
      }
    }
    _tile_release();
  });
  if (values.size() * sizeof(bf16) > kKeepPackedBytes) {
    keys = {};
    values = {};
  }
  return out;
}

}  // namespace kakehashi::cpu

TORCH_LIBRARY_FRAGMENT(kakehashi, m) {
  m.def(
      "paged_prefill_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, "
      "int context_len, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("paged_prefill_attention", &kakehashi::cpu::paged_prefill_attention);
}
