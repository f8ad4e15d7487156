// y [M, N] float32 = x [M, K] float32 @ w [K, N] bfloat16 / float16, as an XLA:CPU FFI custom call.
//
// Why: XLA:CPU (jax 0.10.2) widens a whole bfloat16 / float16 weight to float32 in a fresh buffer before
// every product, so a decode step with 16-bit weights reads and writes more bytes than with float32 ones
// (docs/speed.md, "bfloat16 weights on this CPU"). Here the weights are widened in registers or block by
// block into a float32 scratch that stays in cache, so they are read from memory once, at 2 bytes each.
//
// Work: the caller and up to (threads - 1) tasks on XLA's intra-op thread pool claim units of work from
// atomic counters until none is left (Parallel). The caller waits only for units that a running task has
// claimed, so the call cannot deadlock when the pool is busy (a task that starts late finds nothing to
// claim and returns). Two ways to cut the product into units:
// - at most kTileRows rows of x (decoding, SplitRows): a unit is a block of w's rows, so every worker
//   streams whole contiguous rows of w (what a memory-bound product needs), into its own float32 partial
//   [M, N]; the caller sums the partials at the end;
// - more rows (a batch of decodes, prompts, SplitColumns): a unit is a panel of x's rows times a chunk of
//   w's columns over all of K, a small GEMM that widens its chunk block by block and owns its part of y.
// Register tiles of up to kTileRows x kTileCols sum the products in both (Tile).
//
// Built on first use with the host's compiler and -march=native (rwkv_jax/native/build.py), so the
// vector width follows the CPU: 16 floats with AVX-512, else 8.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;  // floats per vector register
constexpr int kTileRows = 6;    // rows of x per register tile (6 x 4 accumulators of 32 registers)
constexpr int kTileVecs = 4;
#else
constexpr int64_t kLanes = 8;
constexpr int kTileRows = 6;  // 6 x 2 accumulators of 16 registers
constexpr int kTileVecs = 2;
#endif
constexpr int64_t kTileCols = kLanes * kTileVecs;
constexpr int64_t kChunkCols = 256;  // columns widened at a time: a multiple of kTileCols
static_assert(kChunkCols % kTileCols == 0, "a chunk is whole register tiles");

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

typedef uint16_t Bits16 __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t Bits32 __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef _Float16 Half __attribute__((vector_size(kLanes * sizeof(_Float16))));

// The 16-bit formats, widened to float32 one value (Widen) or kLanes values (WidenVec) at a time.
struct Bfloat16 {
  static float Widen(uint16_t bits) {
    uint32_t word = uint32_t(bits) << 16;  // bfloat16 is the top half of a float32
    float value;
    std::memcpy(&value, &word, sizeof(value));
    return value;
  }
  static Vec WidenVec(const uint16_t* p) {
    Bits16 bits;
    std::memcpy(&bits, p, sizeof(bits));
    const Bits32 words = __builtin_convertvector(bits, Bits32) << 16;
    Vec value;
    std::memcpy(&value, &words, sizeof(value));
    return value;
  }
};

struct Float16 {
  static float Widen(uint16_t bits) {
    _Float16 half;
    std::memcpy(&half, &bits, sizeof(half));
    return static_cast<float>(half);
  }
  static Vec WidenVec(const uint16_t* p) {
    Half half;
    std::memcpy(&half, p, sizeof(half));
    return __builtin_convertvector(half, Vec);
  }
};

// Where a register tile reads its weights: the float32 scratch, or w itself, widened in registers.
struct Widened {
  using Type = float;
  static Vec Read(const float* p) { return Load(p); }
};

template <typename Format>
struct Raw {
  using Type = uint16_t;
  static Vec Read(const uint16_t* p) { return Format::WidenVec(p); }
};

struct Problem {
  const float* x;     // [M, K]
  const uint16_t* w;  // [K, N]
  int64_t m, k, n;
};

// acc[r, :kTileCols] += x[r, 0:rows] @ w[0:rows, :kTileCols] for R rows of x (x's rows ldx apart, w's ldw,
// acc's ldy).
template <int R, typename Source>
inline void Tile(const float* x, int64_t ldx, const typename Source::Type* w, int64_t ldw, int64_t rows,
                 float* acc, int64_t ldy) {
  Vec sum[R][kTileVecs];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kTileVecs; ++v) sum[r][v] = Load(acc + r * ldy + v * kLanes);
  for (int64_t i = 0; i < rows; ++i) {
    Vec wv[kTileVecs];
    for (int v = 0; v < kTileVecs; ++v) wv[v] = Source::Read(w + i * ldw + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const float s = x[r * ldx + i];
      for (int v = 0; v < kTileVecs; ++v) sum[r][v] += s * wv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kTileVecs; ++v) Store(acc + r * ldy + v * kLanes, sum[r][v]);
}

template <typename Source>
using TileFn =
    void (*)(const float*, int64_t, const typename Source::Type*, int64_t, int64_t, float*, int64_t);

// Tile<1, Source> .. Tile<kTileRows, Source>, indexed by R - 1.
template <typename Source, int... R>
constexpr std::array<TileFn<Source>, sizeof...(R)> Tiles(std::integer_sequence<int, R...>) {
  return {&Tile<R + 1, Source>...};
}

template <typename Source>
constexpr auto kTiles = Tiles<Source>(std::make_integer_sequence<int, kTileRows>());

// The packed scratch block of the register tile at column t (a multiple of kTileCols) of a widened chunk.
inline float* Packed(float* scratch, int64_t rows, int64_t t) { return scratch + t * rows; }

// Widens w[i * ldw + j] for rows i < rows and columns j < cols into the scratch, packed as one contiguous
// [rows, kTileCols] block per register tile (Packed), zero-padded to whole tiles; returns the padded width.
// Packing keeps a tile's reads in consecutive lines: rows kChunkCols floats apart fell into few L1 sets,
// which halved the many-row product's speed.
template <typename Format>
int64_t Widen(const uint16_t* w, int64_t ldw, int64_t rows, int64_t cols, float* scratch) {
  const int64_t padded = (cols + kTileCols - 1) / kTileCols * kTileCols;
  for (int64_t t = 0; t < padded; t += kTileCols) {
    const int64_t width = std::min(kTileCols, cols - t);
    for (int64_t i = 0; i < rows; ++i) {
      const uint16_t* src = w + i * ldw + t;
      float* dst = Packed(scratch, rows, t) + i * kTileCols;
      for (int64_t j = 0; j < width; ++j) dst[j] = Format::Widen(src[j]);
      std::fill(dst + width, dst + kTileCols, 0.0f);
    }
  }
  return padded;
}

// Runs body(unit, worker) for every unit in [0, units), on the caller (worker 0) and `helpers` pool tasks
// (workers 1..helpers). Each worker owns a contiguous range of the units and claims them in order (its
// reads of w stay one sequential stream: 9-36 % faster than units dealt out in turn), then claims from the
// other ranges once its own is used up, so the caller alone finishes everything when no task starts.
class Claims {
 public:
  Claims(int64_t units, int64_t workers)
      : units_(units), workers_(workers), next_(new std::atomic<int64_t>[workers]) {
    for (int64_t w = 0; w < workers; ++w) next_[w].store(Begin(w));
  }

  // The next unit of range `home`, else of the ranges after it; -1 when none is left.
  int64_t Claim(int64_t home) {
    for (int64_t i = 0; i < workers_; ++i) {
      const int64_t range = (home + i) % workers_;
      const int64_t unit = next_[range].fetch_add(1);
      if (unit < Begin(range + 1)) return unit;
    }
    return -1;
  }

  void Done() { done_.fetch_add(1, std::memory_order_release); }
  bool AllDone() const { return done_.load(std::memory_order_acquire) == units_; }
  int64_t NewWorker() { return next_worker_.fetch_add(1); }

 private:
  int64_t Begin(int64_t range) const { return units_ * range / workers_; }

  const int64_t units_, workers_;
  std::unique_ptr<std::atomic<int64_t>[]> next_;
  std::atomic<int64_t> done_{0};
  std::atomic<int64_t> next_worker_{1};
};

template <typename Body>
void Parallel(ffi::ThreadPool& pool, int64_t units, int64_t helpers, const Body& body) {
  // What a task touches after the call may have returned: only the claims (kept alive by the task). The
  // body is used only for a unit the task claimed, which the caller waits for.
  auto claims = std::make_shared<Claims>(units, helpers + 1);
  auto work = [claims, &body](int64_t worker) {
    for (int64_t unit = claims->Claim(worker); unit >= 0; unit = claims->Claim(worker)) {
      body(unit, worker);
      claims->Done();
    }
  };
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([claims, work] {
      if (!claims->AllDone()) work(claims->NewWorker());
    });
  }
  work(0);
  while (!claims->AllDone()) std::this_thread::yield();
}

// Products below this many weights run on the calling thread alone (a task's start costs more).
constexpr int64_t kMinParallelWeights = 1 << 16;

int64_t Helpers(ffi::ThreadPool& pool, const Problem& p, int64_t units) {
  if (p.k * p.n < kMinParallelWeights) return 0;
  return std::max<int64_t>(std::min<int64_t>(pool.num_threads(), units) - 1, 0);
}

// Weight rows per unit of SplitRows: each row of w is one stream for the memory prefetcher, and few streams
// read fastest (8 rows a block read the 768 x 65536 head 1.6x faster than 16).
constexpr int64_t kBlockRows = 8;

// Rows of w shorter than this many bytes share a memory page. One row of x reads such rows one at a time,
// in memory order: a register tile's rows interleaved within a page defeat the prefetcher (768 x 768
// products 1.5x faster in order). With more rows of x, the partial's loads and stores per weight cost more
// than that, so the register tile spans the block's rows as for long rows of w.
constexpr int64_t kShortRowBytes = 4096;

// How far ahead (in 16-bit weights: 8 KiB) the in-order read of short rows asks for the weights it reads
// next. The hardware prefetcher restarts at every 4 KiB page; with this a 768 x 768 product in XLA ran 9-12 %
// faster (distances of 1 to 32 KiB: 2 to 8 KiB best).
constexpr int64_t kPrefetchAhead = 4096;

// partial [M, N] += x[:, k0:k0 + rows] @ w[k0:k0 + rows, :] for M <= kTileRows: whole tiles of columns read
// w directly, widened in registers; the last N % kTileCols columns are widened into the scratch first,
// zero-padded to a whole tile, and summed apart. Short rows of w with one row of x are read row by row in
// one loop over vectors (a call per register tile and row cost 3-4 us of a 768 x 768 product); else one
// register tile covers every row of x and the block's rows.
template <typename Format>
void RowBlock(const Problem& p, int64_t k0, int64_t rows, float* scratch, float* partial) {
  const float* x = p.x + k0;
  const uint16_t* w = p.w + k0 * p.n;
  const int64_t direct = p.n / kTileCols * kTileCols;
  const int r = static_cast<int>(p.m);
  if (p.m == 1 && p.n * static_cast<int64_t>(sizeof(uint16_t)) < kShortRowBytes) {
    for (int64_t i = 0; i < rows; ++i) {
      const uint16_t* row = w + i * p.n;
      for (int64_t t = 0; t < direct; t += kLanes) {
        __builtin_prefetch(row + t + kPrefetchAhead);  // past the end of w it is a no-op
        Store(partial + t, Load(partial + t) + x[i] * Format::WidenVec(row + t));
      }
    }
  } else {
    for (int64_t t = 0; t < direct; t += kTileCols)
      kTiles<Raw<Format>>[r - 1](x, p.k, w + t, p.n, rows, partial + t, p.n);
  }
  if (direct < p.n) {
    float tail[kTileRows * kTileCols] = {};
    Widen<Format>(w + direct, p.n, rows, p.n - direct, scratch);
    kTiles<Widened>[r - 1](x, p.k, scratch, kTileCols, rows, tail, kTileCols);
    for (int i = 0; i < r; ++i)
      for (int64_t j = direct; j < p.n; ++j) partial[i * p.n + j] += tail[i * kTileCols + j - direct];
  }
}

template <typename Format>
void SplitRows(ffi::ThreadPool& pool, const Problem& p, float* y) {
  const int64_t rows = kBlockRows;
  const int64_t blocks = (p.k + rows - 1) / rows;
  const int64_t helpers = Helpers(pool, p, blocks);
  const int64_t size = p.m * p.n;
  std::vector<float> partials((helpers + 1) * size, 0.0f);
  Parallel(pool, blocks, helpers, [&](int64_t b, int64_t worker) {
    thread_local std::vector<float> scratch(kBlockRows * kTileCols);
    float* partial = partials.data() + worker * size;
    RowBlock<Format>(p, b * rows, std::min(rows, p.k - b * rows), scratch.data(), partial);
  });
  std::memcpy(y, partials.data(), p.m * p.n * sizeof(float));
  for (int64_t h = 1; h <= helpers; ++h) {
    const float* partial = partials.data() + h * size;
    for (int64_t i = 0; i < p.m * p.n; ++i) y[i] += partial[i];
  }
}

// Rows of x per unit of SplitColumns: its float32 sums (kPanelRows x kChunkCols) stay in L2. Weight rows
// widened at a time: a tile's packed block (kPanelDepth x kTileCols) and the panel's x (kPanelRows x
// kPanelDepth) stay in L1.
constexpr int64_t kPanelRows = 96;
constexpr int64_t kPanelDepth = 256;

// y[r0:r0 + rows, c0:c0 + cols] = x[r0:r0 + rows, :] @ w[:, c0:c0 + cols], cols <= kChunkCols.
template <typename Format>
void Panel(const Problem& p, float* y, int64_t r0, int64_t rows, int64_t c0, float* scratch, float* sums) {
  const int64_t cols = std::min(kChunkCols, p.n - c0);
  std::fill(sums, sums + rows * kChunkCols, 0.0f);
  for (int64_t k0 = 0; k0 < p.k; k0 += kPanelDepth) {
    const int64_t depth = std::min(kPanelDepth, p.k - k0);
    const int64_t padded = Widen<Format>(p.w + k0 * p.n + c0, p.n, depth, cols, scratch);
    for (int64_t t = 0; t < padded; t += kTileCols) {  // one packed block in L1 for the whole panel
      for (int64_t i = 0; i < rows; i += kTileRows) {
        const int r = static_cast<int>(std::min<int64_t>(kTileRows, rows - i));
        kTiles<Widened>[r - 1](p.x + (r0 + i) * p.k + k0, p.k, Packed(scratch, depth, t), kTileCols, depth,
                               sums + i * kChunkCols + t, kChunkCols);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(y + (r0 + i) * p.n + c0, sums + i * kChunkCols, cols * sizeof(float));
}

template <typename Format>
void SplitColumns(ffi::ThreadPool& pool, const Problem& p, float* y) {
  const int64_t panels = (p.m + kPanelRows - 1) / kPanelRows;
  const int64_t chunks = (p.n + kChunkCols - 1) / kChunkCols;
  // Consecutive units share a chunk of w (still in cache for the next panel).
  Parallel(pool, panels * chunks, Helpers(pool, p, panels * chunks), [&](int64_t u, int64_t) {
    thread_local std::vector<float> scratch(kPanelDepth * kChunkCols);
    thread_local std::vector<float> sums(kPanelRows * kChunkCols);
    const int64_t r0 = u % panels * kPanelRows;
    const int64_t c0 = u / panels * kChunkCols;
    Panel<Format>(p, y, r0, std::min(kPanelRows, p.m - r0), c0, scratch.data(), sums.data());
  });
}

// SplitRows where one register tile covers every row of x (with 16 rows SplitColumns was faster).
template <typename Format>
void Matmul(ffi::ThreadPool& pool, const Problem& p, float* y) {
  if (p.m <= kTileRows) {
    SplitRows<Format>(pool, p, y);
  } else {
    SplitColumns<Format>(pool, p, y);
  }
}

ffi::Error LowpMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                          ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("lowp_matmul needs x [M, K] and w [K, N]");
  }
  const Problem p{x.typed_data(), static_cast<const uint16_t*>(w.untyped_data()), xd[0], xd[1], wd[1]};
  if (p.m == 0 || p.n == 0) return ffi::Error::Success();
  switch (w.element_type()) {
    case ffi::DataType::BF16:
      Matmul<Bfloat16>(pool, p, y->typed_data());
      return ffi::Error::Success();
    case ffi::DataType::F16:
      Matmul<Float16>(pool, p, y->typed_data());
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("lowp_matmul needs a bfloat16 or float16 w");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LowpMatmul, LowpMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Which formats this build multiplies faster than XLA's float32 product reads its weights: bit 0 bfloat16,
// bit 1 float16. Without FMA vectors (a plain x86-64 build) the tiles run several times slower than XLA.
extern "C" int LowpMatmulFastFormats() {
#if (defined(__AVX2__) && defined(__FMA__)) || defined(__AVX512F__) || defined(__ARM_NEON)
#if defined(__F16C__) || defined(__ARM_NEON)
  return 3;
#else
  return 1;
#endif
#else
  return 0;
#endif
}
