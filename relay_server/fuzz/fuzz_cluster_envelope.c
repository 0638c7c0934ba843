/* fuzz_cluster_envelope.c — libFuzzer harness for the backplane envelope parser (cluster.c),
 * which reads what other nodes publish. Beyond memory safety it checks that every accepted
 * envelope is written back byte for byte and that its payload lies inside the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cluster_envelope envelope;
    const char *why = NULL;
    if (!cluster_envelope_decode(data, size, &envelope, &why)) {
        if (!why || !*why)
            __builtin_trap(); /* a refusal always says why */
        return 0;
    }
    if (envelope.payload < data || envelope.payload + envelope.payload_length != data + size)
        __builtin_trap();
    unsigned char again[CLUSTER_ENVELOPE_MAX_HEADER];
    size_t header = cluster_envelope_encode(&envelope, again, sizeof again);
    if (header == 0 || header != (size_t)(envelope.payload - data) || memcmp(again, data, header))
        __builtin_trap();
    return 0;
}
