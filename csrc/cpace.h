/* cpace.h — CPace, the CFRG balanced PAKE (draft-irtf-cfrg-cpace-21), cipher suite
 * CPACE-RISTR255-SHA512 on libsodium's ristretto255, initiator-responder transcript, plus the
 * explicit key confirmation of the draft's section 10.4. No I/O and no allocation. */
#ifndef SEGSUITE_CPACE_H
#define SEGSUITE_CPACE_H

#include <stddef.h>
#include <stdint.h>

#define CPACE_POINT_BYTES 32  /* encoded ristretto255 element (a public share, K, g) */
#define CPACE_SCALAR_BYTES 32 /* little-endian scalar */
#define CPACE_ISK_BYTES 64    /* SHA-512 output */
#define CPACE_TAG_BYTES 64    /* HMAC-SHA-512 confirmation tag */
#define CPACE_KEY_BYTES 32    /* a key derived from ISK */

/* Must be called (and return 0) before anything else: it initialises libsodium. */
int cpace_init(void);

/* The draft's generator_string(DSI, PRS, CI, sid, 128) hashed with SHA-512 (section 8.3): the
 * 64-byte input of element_derivation. Exposed for the draft's B.3.1 test vector. */
void cpace_generator_hash(uint8_t hash[64], const uint8_t *prs, size_t prs_len, const uint8_t *ci,
                          size_t ci_len, const uint8_t *sid, size_t sid_len);

/* g = element_derivation(generator hash), encoded. */
void cpace_calculate_generator(uint8_t g[CPACE_POINT_BYTES], const uint8_t *prs, size_t prs_len,
                               const uint8_t *ci, size_t ci_len, const uint8_t *sid,
                               size_t sid_len);

/* A fresh secret scalar, uniform in 1..order-1 (the draft's alternative sampling). */
void cpace_sample_scalar(uint8_t y[CPACE_SCALAR_BYTES]);

/* Y = encode(y * g). Returns 0, or -1 if g does not decode or the product is the identity. */
int cpace_public_share(uint8_t share[CPACE_POINT_BYTES], const uint8_t y[CPACE_SCALAR_BYTES],
                       const uint8_t g[CPACE_POINT_BYTES]);

/* scalar_mult_vfy: K = encode(y * decode(peer)). Returns 0, or -1 when the peer's share does
 * not decode or K is the identity element: the draft's abort conditions. */
int cpace_shared_point(uint8_t k[CPACE_POINT_BYTES], const uint8_t y[CPACE_SCALAR_BYTES],
                       const uint8_t peer[CPACE_POINT_BYTES]);

/* ISK = SHA-512(lv_cat(DSI_ISK, sid, K) || lv_cat(Ya, ADa) || lv_cat(Yb, ADb)) — section 7.2
 * with transcript_ir: A (the initiator) is always first, whoever computes it. */
void cpace_isk(uint8_t isk[CPACE_ISK_BYTES], const uint8_t *sid, size_t sid_len,
               const uint8_t k[CPACE_POINT_BYTES], const uint8_t ya[CPACE_POINT_BYTES],
               const uint8_t *ada, size_t ada_len, const uint8_t yb[CPACE_POINT_BYTES],
               const uint8_t *adb, size_t adb_len);

/* Section 10.4: mac_key = SHA-512("CPaceMac" || sid || ISK); the tag of a party is
 * HMAC-SHA-512(mac_key, lv_cat(Y, AD)) over the share and AD it sent itself. */
void cpace_confirmation_tag(uint8_t tag[CPACE_TAG_BYTES], const uint8_t *sid, size_t sid_len,
                            const uint8_t isk[CPACE_ISK_BYTES],
                            const uint8_t share[CPACE_POINT_BYTES], const uint8_t *ad,
                            size_t ad_len);

/* A key for one purpose: HMAC-SHA-512(ISK, "SegSuite key\0" || label)[0:32]. The draft asks
 * for ISK to go through a KDF before use (section 10.3); one label per purpose keeps the
 * group-key wrapping key apart from the short verification string. */
void cpace_derive_key(uint8_t key[CPACE_KEY_BYTES], const uint8_t isk[CPACE_ISK_BYTES],
                      const char *label);

/* LEB128 prepend_len of the draft (appendix A.1); returns the bytes written to out (<= 10). */
size_t cpace_leb128(uint8_t out[10], uint64_t value);

#endif
