/* fuzz_frame_header.c — libFuzzer harness for the binary frame header parser, which reads bytes
 * straight off the network. Beyond memory safety it checks that every accepted header is
 * written back byte for byte, and that a prefix of an accepted header is never "malformed". */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame_header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct frame_header header;
    size_t needed = 0;
    const char *error = NULL;
    enum frame_parse_result result = frame_header_parse(data, size, &header, &needed, &error);
    if (result == FRAME_MALFORMED && (!error || !*error))
        __builtin_trap(); /* the relay reports why */
    if (result == FRAME_NEED_MORE && (needed <= size || needed > FRAME_HEADER_MAX_SIZE))
        __builtin_trap();
    if (result != FRAME_OK)
        return 0;
    if (header.header_size > size || header.header_size < FRAME_HEADER_FIXED_SIZE)
        __builtin_trap();

    struct frame_id recipients[FRAME_MAX_RECIPIENTS];
    size_t count = 0, cursor = 0;
    struct frame_id id;
    while (frame_header_next_recipient(&header, &cursor, &id)) {
        if (count == FRAME_MAX_RECIPIENTS || id.length == 0 || id.length > FRAME_ID_MAX_LENGTH ||
            (const uint8_t *)id.bytes + id.length > data + header.header_size)
            __builtin_trap();
        recipients[count++] = id;
    }
    if (count != header.recipient_count)
        __builtin_trap();

    unsigned char out[FRAME_HEADER_MAX_SIZE];
    size_t written =
        frame_header_write(out, sizeof out, header.kind, header.transfer_id, header.chunk_index,
                           header.chunk_count, header.total_size, header.sender, recipients, count);
    if (written != header.header_size || memcmp(out, data, written) != 0)
        __builtin_trap(); /* parse and write disagree */

    /* Every shorter prefix only lacks bytes: it must ask for more, never be refused. */
    size_t cut = size > 1 ? data[size - 1] % header.header_size : 0;
    if (frame_header_parse(data, cut, &header, &needed, &error) != FRAME_NEED_MORE)
        __builtin_trap();
    return 0;
}
