/* libFuzzer harness for the sans-I/O WebSocket client: any server bytes, cut into reads at
 * places the input chooses, must be consumed without a crash, every event must point inside the
 * read it came from, and data never follows a Close or a protocol error. Build: make -C csrc/fuzz.
 */
#include <stdlib.h>
#include <string.h>

#include "ws_client.h"

#define CHECK(condition)                                                                           \
    do {                                                                                           \
        if (!(condition))                                                                          \
            __builtin_trap();                                                                      \
    } while (0)

static const char ACCEPTED[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* The first byte: bit 0 starts past an accepted handshake, the rest sets the read size. */
    int skip_handshake = data[0] & 1;
    size_t read_size = (size_t)(data[0] >> 1) + 1;
    data++, size--;

    struct ws_client client;
    char request[512];
    CHECK(ws_client_begin(&client, (const unsigned char *)"the sample nonce", "/", "h", NULL, 0,
                          request, sizeof request) > 0);
    struct ws_event event;
    if (skip_handshake) {
        size_t used = ws_client_receive(&client, (const unsigned char *)ACCEPTED,
                                        sizeof ACCEPTED - 1, &event);
        CHECK(used == sizeof ACCEPTED - 1 && event.type == WS_EVENT_OPEN);
    }
    int ended = 0;
    while (size) {
        size_t piece = size < read_size ? size : read_size;
        /* A copy per read, so that ASan sees any use of bytes outside it. */
        unsigned char *read = malloc(piece);
        CHECK(read);
        memcpy(read, data, piece);
        size_t at = 0;
        while (at < piece) {
            size_t used = ws_client_receive(&client, read + at, piece - at, &event);
            CHECK(used <= piece - at);
            if (event.type == WS_EVENT_DATA) {
                CHECK(!ended);
                CHECK(event.data >= read + at && event.data + event.size <= read + at + used);
            }
            if (event.type == WS_EVENT_PING || event.type == WS_EVENT_CLOSE)
                CHECK(event.size <= WS_CONTROL_PAYLOAD_MAX);
            if (event.type == WS_EVENT_CLOSE || event.type == WS_EVENT_PROTOCOL_ERROR ||
                event.type == WS_EVENT_HANDSHAKE_FAILED)
                ended = 1;
            CHECK(used > 0 || event.type != WS_EVENT_NONE);
            at += used;
        }
        free(read);
        data += piece;
        size -= piece;
    }
    ws_client_free(&client);
    return 0;
}
