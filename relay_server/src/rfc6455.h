/* rfc6455.h — the RFC 6455 rules that libwebsockets 4.1 does not enforce by itself, as pure
 * decisions the transport applies: the opening handshake's version, Origin and subprotocol
 * offer, and the payload of a client's Close frame. (lws 4.1 also runs unmasked client frames
 * and gives no way to see the mask bit: see docs/protocol.md, "Conformance".) */
#ifndef RFC6455_H
#define RFC6455_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* How to refuse an upgrade: an HTTP status with its reason phrase and a text body, and at most
 * one extra response header line (without CRLF), e.g. "Sec-WebSocket-Version: 13". */
struct upgrade_refusal {
    unsigned status;
    const char *reason_phrase;
    const char *body;
    const char *extra_header;
    int reject_reason; /* enum reject_reason for the metrics */
};

/* Checks an upgrade request's headers (NULL when absent): Sec-WebSocket-Version must be 13
 * (absent: 400, another: 426), Origin must be allowed by --allowed-origin (403), and an offered
 * Sec-WebSocket-Protocol list must include `our_protocol`, the only one lws 4.1 can complete a
 * handshake with (400 naming the problem, rather than lws's silent hang-up). True if allowed. */
bool rfc6455_check_upgrade(const struct relay_config *config, const char *version,
                           const char *origin, const char *protocols, const char *our_protocol,
                           struct upgrade_refusal *refusal);

/* Whether a client's Close frame payload is acceptable: empty, or a 2-byte code (with an
 * optional reason). A 1-byte payload cannot hold a code: the answer is close 1002. */
bool rfc6455_close_payload_valid(size_t length);

#endif
