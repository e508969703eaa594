// 16-bit floats <-> float by bit manipulation (IEEE 754 half and bfloat16), for the scalar kernel set and for packing.
// Internal linkage (anonymous namespace): each translation unit, whatever its -m flags, keeps its own copy, so no
// ISA-specific instantiation can be merged into the portable path.
#pragma once
#include <cstdint>
#include <cstring>

namespace pyattn {
namespace {

inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);  // normal: rebias 15 -> 127
    } else if (man == 0) {
        bits = sign;  // +-0
    } else {
        int e = -1;  // subnormal half: normalise (every one is a normal float)
        do {
            man <<= 1;
            ++e;
        } while (!(man & 0x400u));
        bits = sign | ((112u - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest even; overflow gives inf, NaN stays NaN.
inline uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
    if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
    if (ax < 0x38800000u) {                        // below the smallest normal half: subnormal or zero
        if (ax < 0x33000000u) return sign;         // < half of the smallest subnormal
        const uint32_t man = (ax & 0x7fffffu) | 0x800000u;
        const int shift = 126 - static_cast<int>(ax >> 23);  // 14..24
        const uint32_t q = man >> shift, rem = man & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
        return sign | static_cast<uint16_t>(q + (rem > halfway || (rem == halfway && (q & 1u))));
    }
    const uint32_t r = ax - 0x38000000u;  // rebias 127 -> 15
    const uint32_t q = r >> 13, rem = r & 0x1fffu;
    return sign | static_cast<uint16_t>(q + (rem > 0x1000u || (rem == 0x1000u && (q & 1u))));
}

// bfloat16: the upper half of a float32.
inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// Round to nearest even (overflow gives inf); a NaN stays a (quiet) NaN of the same sign.
inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace
}  // namespace pyattn
