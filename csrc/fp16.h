/* Conversions between float32/float64 and the 16-bit float formats used on the wire
 * (IEEE binary16 "float16" and bfloat16), chosen at run time for the CPU: F16C/AVX2 on
 * x86-64, NEON on AArch64, portable scalar code everywhere else. */
#ifndef SEGSUITE_FP16_H
#define SEGSUITE_FP16_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Every function takes byte pointers with no alignment requirement, because decoded tensors
 * may view a network buffer at any offset. All results are bit-exact with numpy's astype
 * (float16) or with the bfloat16 rules in docs/weights-format.md, whichever path runs. */
void fp16_from_float32(void *dst_half, const void *src_float, size_t count);
void fp16_to_float32(void *dst_float, const void *src_half, size_t count);
void bf16_from_float32(void *dst_bf16, const void *src_float, size_t count);
void bf16_to_float32(void *dst_float, const void *src_bf16, size_t count);
void fp16_from_float64(void *dst_half, const void *src_double, size_t count);
void fp16_to_float64(void *dst_double, const void *src_half, size_t count);
void bf16_from_float64(void *dst_bf16, const void *src_double, size_t count);
void bf16_to_float64(void *dst_double, const void *src_bf16, size_t count);

/* Single values, the reference the vector paths are checked against. */
uint16_t fp16_from_float32_bits(uint32_t float_bits);
uint32_t fp16_to_float32_bits(uint16_t half_bits);
uint16_t bf16_from_float32_bits(uint32_t float_bits);

/* Tests force the scalar path to check it against numpy on machines that have SIMD. */
void fp16_set_simd_enabled(bool enabled);
/* The same switch, read by the other SIMD kernels of the codec (quantize.c, refhash.c). */
bool fp16_simd_enabled(void);
/* "f16c+avx2", "neon" or "scalar": the path the bulk conversions take now. */
const char *fp16_active_path(void);

#endif
