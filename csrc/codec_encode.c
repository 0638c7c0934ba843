/* Encoder: lays out a whole weights message with msgpack-c's packer in two identical passes,
 * one that only counts bytes (so the output is allocated once, at its final size) and one
 * that writes. Tensor data is written afterwards by codec_encode_data, without Python. */
#include "codec_core.h"

#include <msgpack.h>
#include <string.h>

/* msgpack-c's packer writes through a callback; with no buffer it just counts. */
typedef struct {
    uint8_t *out;
    size_t position;
    bool overflowed;
} layout_writer;

static int layout_write(void *data, const char *bytes, size_t length)
{
    layout_writer *writer = data;
    if (writer->out)
        memcpy(writer->out + writer->position, bytes, length);
    if (length > SIZE_MAX - writer->position)
        writer->overflowed = true;
    else
        writer->position += length;
    return 0;
}

static void pack_text(msgpack_packer *packer, const char *text, size_t length)
{
    msgpack_pack_str(packer, length);
    msgpack_pack_str_body(packer, text, length);
}

static void pack_key(msgpack_packer *packer, const char *key)
{
    pack_text(packer, key, strlen(key));
}

/* Size of the bin header msgpack-c chooses for a body of `length` bytes. */
static size_t bin_header_size(uint64_t length)
{
    return length < 256 ? 2 : length < 65536 ? 3 : 5;
}

static void pack_tensor(msgpack_packer *packer, layout_writer *writer,
                        const codec_tensor_source *tensor, uint8_t **data_destination)
{
    pack_text(packer, tensor->name, tensor->name_length);
    msgpack_pack_map(packer, 5);
    pack_key(packer, "dtype");
    pack_key(packer, codec_dtype_name(tensor->dtype));
    pack_key(packer, "wire");
    pack_key(packer, codec_dtype_name(tensor->wire));
    pack_key(packer, "shape");
    msgpack_pack_array(packer, tensor->ndim);
    for (uint32_t i = 0; i < tensor->ndim; i++)
        msgpack_pack_uint64(packer, tensor->shape[i]);

    /* A "pad" bin before "data" moves the data to the next aligned offset, so a receiver
     * that keeps the message aligned can view every tensor in place. */
    uint64_t data_length = tensor->element_count * codec_dtype_size(tensor->wire);
    size_t after_pad_header = writer->position + 4 /* "pad" */ + 2 /* bin8 header */;
    size_t data_start_unpadded = after_pad_header + 5 /* "data" */ + bin_header_size(data_length);
    size_t padding =
        (CODEC_DATA_ALIGNMENT - data_start_unpadded % CODEC_DATA_ALIGNMENT) % CODEC_DATA_ALIGNMENT;
    static const char zeros[CODEC_DATA_ALIGNMENT] = {0};
    pack_key(packer, "pad");
    msgpack_pack_bin(packer, padding);
    msgpack_pack_bin_body(packer, zeros, padding);
    pack_key(packer, "data");
    msgpack_pack_bin(packer, (size_t)data_length);

    *data_destination = writer->out ? writer->out + writer->position : NULL;
    if (data_length > SIZE_MAX - writer->position)
        writer->overflowed = true;
    else
        writer->position += (size_t)data_length;
}

static void pack_message(const codec_encode_input *input, layout_writer *writer,
                         uint8_t **data_destinations)
{
    msgpack_packer packer;
    msgpack_packer_init(&packer, writer, layout_write);
    msgpack_pack_map(&packer, 5);
    /* format and version come first so that any future version is recognised as such */
    pack_key(&packer, "format");
    pack_key(&packer, CODEC_FORMAT_NAME);
    pack_key(&packer, "version");
    msgpack_pack_uint32(&packer, CODEC_FORMAT_VERSION);
    pack_key(&packer, "kind");
    pack_key(&packer, input->kind == CODEC_KIND_TORCH ? "torch" : "numpy");
    pack_key(&packer, "metadata");
    layout_write(writer, (const char *)input->metadata, input->metadata_length);
    pack_key(&packer, "tensors");
    msgpack_pack_map(&packer, input->tensor_count);
    for (size_t i = 0; i < input->tensor_count; i++) {
        uint8_t *unused;
        pack_tensor(&packer, writer, &input->tensors[i],
                    data_destinations ? &data_destinations[i] : &unused);
    }
}

size_t codec_encoded_size(const codec_encode_input *input)
{
    layout_writer counter = {NULL, 0, false};
    pack_message(input, &counter, NULL);
    return counter.overflowed ? 0 : counter.position;
}

void codec_encode_layout(const codec_encode_input *input, uint8_t *out, uint8_t **data_destinations)
{
    layout_writer writer = {out, 0, false};
    pack_message(input, &writer, data_destinations);
}

void codec_encode_data(const codec_encode_input *input, uint8_t *const *data_destinations)
{
    for (size_t i = 0; i < input->tensor_count; i++) {
        const codec_tensor_source *tensor = &input->tensors[i];
        codec_convert(tensor->wire, data_destinations[i], tensor->dtype, tensor->source,
                      tensor->element_count);
    }
}
