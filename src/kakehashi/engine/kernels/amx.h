// What every AMX kernel needs: the tile state from Linux, and the tile configuration record.

#pragma once

#include <c10/util/Exception.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace kakehashi::cpu {

// A process must ask Linux for the AMX tile state once before its first tile instruction.
inline void require_amx() {
  static const bool granted = [] {
    constexpr int kReqXcompPerm = 0x1023;
    constexpr int kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  TORCH_CHECK(granted, "amx: arch_prctl(ARCH_REQ_XCOMP_PERM) refused; AMX is unavailable");
}

// The 64-byte operand of LDTILECFG (palette 1): rows and bytes per row of each tile.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

}  // namespace kakehashi::cpu
