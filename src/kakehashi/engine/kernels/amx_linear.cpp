// bfloat16 linear layer on Intel AMX (TDPBF16PS) for decode batches of a few dozen rows.
//
// A decode step streams every weight once, so the kernel is bound by memory bandwidth, not by
// the tile units: it keeps the weight stream contiguous per thread, prefetches ahead of it,
// and reads each weight block from memory once however many 16-row passes the input needs.
//
// One pass multiplies 16 input rows by one block. Passes of 32 rows (four accumulators, the
// usual AMX blocking) were 1.3x slower here on decode batches of 32 and 64 rows: tile loads
// and tile products do not overlap well, so a pass that streams a block from memory should do
// as little tile work as it can, and later passes find the block in cache.
//
// Packed weight layout (amx_pack): columns in blocks of 32 (two 16-column B tiles), each
// block holding K in steps of 32 as [step][tile 0..1][16 k-pairs][16 columns][2] (VNNI pairs),
// so one block is one contiguous run of memory. N and K are padded with zeros to multiples
// of 32.
//
// Registered as torch.ops.kakehashi.amx_pack / amx_linear.

#include "amx.h"
#include "bf16_vec.h"
#include "ops.h"

#include <optional>

#ifndef KH_AMX_PREFETCH_BYTES
#define KH_AMX_PREFETCH_BYTES 16384
#endif

namespace {

using namespace kakehashi::cpu;

constexpr int64_t kTile = 16;                       // rows of a tile; columns of a B tile
constexpr int64_t kStep = 32;                       // K consumed by one TDPBF16PS
constexpr int64_t kBlockCols = 2 * kTile;           // output columns per packed block
constexpr int64_t kStepBytes = kBlockCols * kStep * 2;  // one K step of a block: two B tiles
constexpr int64_t kPrefetchBytes = KH_AMX_PREFETCH_BYTES;
constexpr int kLine = 64;

// Tile numbers (gcc's tile intrinsics need literals): accumulators are tiles 0 and 1 (one per
// 16 output columns), the input rows tile 4, the two weight tiles 6 and 7.

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// Tile work costs time per row, so each pass configures exactly the input rows it has (the
// accumulators and the input tile; weight tiles are always 16 rows). Tile state is per
// thread; reconfiguring zeroes all tiles.
class TileRows {
 public:
  void set(int64_t rows) {
    if (rows == rows_) return;
    TileConfig cfg;
    for (int t : {0, 1, 4, 6, 7}) {
      cfg.rows[t] = static_cast<uint8_t>(t >= 6 ? kTile : rows);
      cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
    rows_ = rows;
  }

 private:
  int64_t rows_ = -1;
};

// ---------------------------------------------------------------------------------------
// Packing

// Offset of weight element (n, k) in the packed layout.
inline int64_t packed_offset(int64_t n, int64_t k, int64_t steps) {
  int64_t block = n / kBlockCols, tile = (n % kBlockCols) / kTile, col = n % kTile;
  int64_t step = k / kStep, pair = (k % kStep) / 2, half = k % 2;
  return ((((block * steps + step) * 2 + tile) * kTile + pair) * kTile + col) * 2 + half;
}

// ---------------------------------------------------------------------------------------
// Linear

// Where the kernel reads 16 input rows from: x itself, or a zero-padded copy.
struct InputTile {
  const bf16* data;
  int64_t stride_bytes;
};

// The packed weight range one thread streams, for prefetching within it.
struct Stream {
  const char* end;
  bool prefetch;
};

inline void prefetch_step(const char* b, const Stream& s) {
  const char* p = b + kPrefetchBytes;
  if (!s.prefetch || p + kStepBytes > s.end) return;
  // Into L2, not L1: 8-11% faster than prefetching into L1 at 8 to 48 rows on weights streamed
  // from memory (same-run A/B on this 2-core machine); the tile loads find the lines in L2.
  for (int off = 0; off < kStepBytes; off += kLine) prefetch_l2(p + off);
}

// out (16 x 32 floats, row stride 32) = up to 16 input rows . one packed block.
void block_product(const InputTile& a, const bf16* block, int64_t steps, const Stream& s,
                   float* out) {
  _tile_zero(0);
  _tile_zero(1);
  const char* b = reinterpret_cast<const char*>(block);
  const char* rows = reinterpret_cast<const char*>(a.data);
  for (int64_t step = 0; step < steps; ++step, b += kStepBytes) {
    prefetch_step(b, s);
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b + kStepBytes / 2, 64);
    _tile_loadd(4, rows + step * kStep * 2, a.stride_bytes);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
  }
  constexpr int kStride = kBlockCols * sizeof(float);
  _tile_stored(0, out, kStride);
  _tile_stored(1, out + kTile, kStride);
}

// Adds bias, rounds to bfloat16 (nearest even) and writes `rows` x `cols` (cols <= 32).
void write_block(const float* acc, int64_t rows, int64_t cols, const bf16* bias, bf16* y,
                 int64_t y_stride) {
  int64_t valid[2];
  __m512 bias_f[2];
  for (int g = 0; g < 2; ++g) {
    valid[g] = std::clamp<int64_t>(cols - g * kTile, 0, kTile);
    bias_f[g] = bias ? load_bf16_as_float_masked(bias + g * kTile, valid[g]) : _mm512_setzero_ps();
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int g = 0; g < 2; ++g) {
      if (!valid[g]) continue;
      const __m512 v = _mm512_add_ps(_mm512_loadu_ps(acc + r * kBlockCols + g * kTile), bias_f[g]);
      store_as_bf16_masked(y + r * y_stride + g * kTile, v, valid[g]);
    }
  }
}

// Input tiles (16 rows each, the last may be short) for all rows of x: direct views when K
// is a multiple of 32, otherwise copies padded with zero columns in `scratch`.
std::vector<InputTile> input_tiles(const bf16* x, int64_t m, int64_t k, int64_t x_stride,
                                   int64_t kp, std::vector<bf16>& scratch) {
  const int64_t tiles = (m + kTile - 1) / kTile;
  std::vector<InputTile> out(tiles);
  const bool copy = (k != kp);
  scratch.assign(copy ? tiles * kTile * kp : 0, 0);
  bf16* next = scratch.data();
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r0 = t * kTile, rows = std::min(kTile, m - r0);
    if (!copy) {
      out[t] = {x + r0 * x_stride, x_stride * 2};
      continue;
    }
    for (int64_t r = 0; r < rows; ++r) std::memcpy(next + r * kp, x + (r0 + r) * x_stride, k * 2);
    out[t] = {next, kp * 2};
    next += kTile * kp;
  }
  return out;
}

// All rows of x against packed blocks [b0, b1), in passes of 16 rows per block. Only the
// first pass prefetches: later passes find the block in cache.
void linear_blocks(const std::vector<InputTile>& a, int64_t m, const bf16* packed,
                   int64_t steps, int64_t b0, int64_t b1, int64_t n, const bf16* bias, bf16* y) {
  TileRows tile_rows;
  alignas(64) float acc[kTile * kBlockCols];
  const int64_t block_elems = steps * kStepBytes / 2;
  const char* end = reinterpret_cast<const char*>(packed + b1 * block_elems);
  const int64_t tiles = static_cast<int64_t>(a.size());
  for (int64_t blk = b0; blk < b1; ++blk) {
    const bf16* block = packed + blk * block_elems;
    const int64_t n0 = blk * kBlockCols, cols = std::min(kBlockCols, n - n0);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * kTile, rows = std::min(kTile, m - r0);
      tile_rows.set(rows);
      block_product(a[t], block, steps, Stream{end, t == 0}, acc);
      write_block(acc, rows, cols, bias ? bias + n0 : nullptr, y + r0 * n + n0, n);
    }
  }
  _tile_release();
}

}  // namespace

namespace kakehashi::cpu {

// Packs a (N, K) weight for amx_linear (layout above).
at::Tensor amx_pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16,
              "amx_pack: weight must be a 2-D bfloat16 tensor");
  at::Tensor w = weight.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const int64_t np = round_up(std::max<int64_t>(n, 1), kBlockCols);
  const int64_t kp = round_up(std::max<int64_t>(k, 1), kStep);
  const int64_t steps = kp / kStep;
  at::Tensor packed = at::empty({np * kp}, w.options());
  auto* dst = reinterpret_cast<bf16*>(packed.data_ptr());
  const auto* src = reinterpret_cast<const bf16*>(w.data_ptr());
  parallel_for(0, np, kBlockCols, [&](int64_t n0, int64_t n1) {
    for (int64_t row = n0; row < n1; ++row) {
      for (int64_t col = 0; col < kp; ++col) {
        bf16 v = (row < n && col < k) ? src[row * k + col] : 0;
        dst[packed_offset(row, col, steps)] = v;
      }
    }
  });
  return packed;
}

at::Tensor amx_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t k,
                      const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.size(1) == k,
              "amx_linear: x must be bfloat16 of shape (M, k)");
  TORCH_CHECK(x.stride(1) == 1 || x.size(1) <= 1, "amx_linear: x rows must be contiguous");
  TORCH_CHECK(n > 0 && k > 0, "amx_linear: n and k must be positive");
  const int64_t np = round_up(n, kBlockCols), kp = round_up(k, kStep), steps = kp / kStep;
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() &&
                  packed.numel() == np * kp,
              "amx_linear: packed weight does not match (n, k); use amx_pack");
  const bf16* bias_ptr = nullptr;
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->numel() == n,
                "amx_linear: bias must be bfloat16 of length n");
    bias_c = bias->contiguous();
    bias_ptr = reinterpret_cast<const bf16*>(bias_c.data_ptr());
  }
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, n}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (m == 0) return y;
  require_amx();

  thread_local std::vector<bf16> scratch;
  const auto* xp = reinterpret_cast<const bf16*>(x.data_ptr());
  std::vector<InputTile> a = input_tiles(xp, m, k, x.stride(0), kp, scratch);
  const auto* w = reinterpret_cast<const bf16*>(packed.data_ptr());
  auto* yp = reinterpret_cast<bf16*>(y.data_ptr());
  parallel_for(0, np / kBlockCols, 1, [&](int64_t b0, int64_t b1) {
    linear_blocks(a, m, w, steps, b0, b1, n, bias_ptr, yp);
  });
  return y;
}

}  // namespace kakehashi::cpu

TORCH_LIBRARY_FRAGMENT(kakehashi, m) {
  m.def("amx_pack(Tensor weight) -> Tensor");
  m.def("amx_linear(Tensor x, Tensor packed, int n, int k, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(kakehashi, CPU, m) {
  m.impl("amx_pack", &kakehashi::cpu::amx_pack);
  m.impl("amx_linear", &kakehashi::cpu::amx_linear);
}
