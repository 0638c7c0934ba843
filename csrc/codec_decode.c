/* Decoder: validates an untrusted weights message completely (structure, dtypes, shapes
 * against data lengths, names, metadata) before anyone allocates tensor memory, and reports
 * the first problem with the field, tensor name and byte offset where it was found. */
#include "codec_core.h"
#include "codec_reader.h"
#include "quantize.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int
fail(codec_error *err, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(err->message, sizeof err->message, format, args);
    va_end(args);
    return -1;
}

/* Tensor names in messages are cut short: the full name may be long or hostile. */
#define NAME_SHOWN 80
#define SHOW_NAME(tensor)                                                                          \
    (int)((tensor)->name_length < NAME_SHOWN ? (tensor)->name_length : NAME_SHOWN),                \
        (const char *)(tensor)->name

static int read_expecting(mp_reader *reader, mp_item *item, mp_type type, const char *what,
                          codec_error *err)
{
    if (mp_read(reader, item, err) != 0)
        return -1;
    if (item->type != type)
        return fail(err, "%s at offset %zu must be a %s, not a %s", what, item->offset,
                    mp_type_name(type), mp_type_name(item->type));
    return 0;
}

static int read_dtype(mp_reader *reader, const codec_tensor_view *tensor, const char *field,
                      codec_dtype *dtype, codec_error *err)
{
    mp_item item;
    if (mp_read(reader, &item, err) != 0)
        return -1;
    if (item.type != MP_STR)
        return fail(err, "tensor '%.*s': '%s' at offset %zu must be a str, not a %s",
                    SHOW_NAME(tensor), field, item.offset, mp_type_name(item.type));
    if (!codec_dtype_from_name((const char *)item.as.body.bytes, item.as.body.length, dtype))
        return fail(err, "tensor '%.*s': unknown %s '%.*s' at offset %zu", SHOW_NAME(tensor), field,
                    (int)(item.as.body.length < 32 ? item.as.body.length : 32),
                    (const char *)item.as.body.bytes, item.offset);
    return 0;
}

/* Appends to a growable array, growing with what was actually parsed, never with what a
 * header claims, so memory stays proportional to the input. */
static int reserve(void **array, size_t *capacity, size_t needed, size_t element_size,
                   codec_error *err)
{
    if (needed <= *capacity)
        return 0;
    size_t new_capacity = *capacity ? *capacity : 16;
    while (new_capacity < needed)
        new_capacity *= 2;
    void *grown = realloc(*array, new_capacity * element_size);
    if (grown == NULL)
        return fail(err, "out of memory (%zu entries)", needed);
    *array = grown;
    *capacity = new_capacity;
    return 0;
}

typedef struct {
    mp_reader reader;
    codec_message *message;
    size_t tensor_capacity;
    size_t dimension_capacity;
} decoder;

static int read_shape(decoder *state, codec_tensor_view *tensor, codec_error *err)
{
    mp_reader *reader = &state->reader;
    codec_message *message = state->message;
    mp_item item;
    if (mp_read(reader, &item, err) != 0)
        return -1;
    if (item.type != MP_ARRAY)
        return fail(err, "tensor '%.*s': 'shape' at offset %zu must be an array, not a %s",
                    SHOW_NAME(tensor), item.offset, mp_type_name(item.type));
    if (item.as.count > CODEC_MAX_NDIM)
        return fail(err, "tensor '%.*s': shape at offset %zu has %u dimensions (at most %d)",
                    SHOW_NAME(tensor), item.offset, item.as.count, CODEC_MAX_NDIM);
    tensor->ndim = item.as.count;
    tensor->shape_start = message->dimension_count;
    if (reserve((void **)&message->dimensions, &state->dimension_capacity,
                message->dimension_count + tensor->ndim, sizeof *message->dimensions, err) != 0)
        return -1;
    /* The product of the non-zero dimensions is bounded too, so that a shape like
     * [0, 2**60, 2**60] cannot overflow whoever computes sizes from it later. */
    uint64_t nonzero_product = 1;
    bool has_zero = false;
    for (uint32_t i = 0; i < tensor->ndim; i++) {
        mp_item dimension;
        if (mp_read(reader, &dimension, err) != 0)
            return -1;
        if (dimension.type != MP_UINT)
            return fail(err,
                        "tensor '%.*s': dimension %u at offset %zu must be a non-negative "
                        "integer, not a %s",
                        SHOW_NAME(tensor), i, dimension.offset, mp_type_name(dimension.type));
        uint64_t value = dimension.as.uint_value;
        if (value > CODEC_MAX_ELEMENTS || (value && nonzero_product > CODEC_MAX_ELEMENTS / value))
            return fail(err, "tensor '%.*s': shape at offset %zu has more than 2**56 elements",
                        SHOW_NAME(tensor), item.offset);
        message->dimensions[message->dimension_count++] = value;
        if (value)
            nonzero_product *= value;
        else
            has_zero = true;
    }
    tensor->element_count = has_zero ? 0 : nonzero_product;
    return 0;
}

enum tensor_field {
    FIELD_DTYPE = 1,
    FIELD_WIRE = 2,
    FIELD_SHAPE = 4,
    FIELD_PAD = 8,
    FIELD_DATA = 16,
    FIELD_BLOCKS = 32, /* q8 */
    FIELD_KEPT = 64    /* topk */
};

/* 'wire': a dtype, or in a version-2 message the name of a delta encoding. */
static int read_wire(decoder *state, codec_tensor_view *tensor, codec_error *err)
{
    mp_reader *reader = &state->reader;
    size_t start = reader->position;
    mp_item item;
    if (mp_read(reader, &item, err) != 0)
        return -1;
    bool q8 = mp_str_equals(&item, CODEC_WIRE_Q8), topk = mp_str_equals(&item, CODEC_WIRE_TOPK);
    if (!q8 && !topk) {
        reader->position = start;
        tensor->encoding = CODEC_ENCODING_PLAIN;
        return read_dtype(reader, tensor, "wire", &tensor->wire, err);
    }
    if (state->message->version < CODEC_DELTA_FORMAT_VERSION)
        return fail(err, "tensor '%.*s': wire '%s' at offset %zu needs format version %d",
                    SHOW_NAME(tensor), q8 ? CODEC_WIRE_Q8 : CODEC_WIRE_TOPK, item.offset,
                    CODEC_DELTA_FORMAT_VERSION);
    tensor->encoding = q8 ? CODEC_ENCODING_Q8 : CODEC_ENCODING_TOPK;
    return 0;
}

static int read_count_field(mp_reader *reader, const codec_tensor_view *tensor, const char *field,
                            uint64_t *value, codec_error *err)
{
    mp_item item;
    if (mp_read(reader, &item, err) != 0)
        return -1;
    if (item.type != MP_UINT)
        return fail(err,
                    "tensor '%.*s': '%s' at offset %zu must be a non-negative integer, not a %s",
                    SHOW_NAME(tensor), field, item.offset, mp_type_name(item.type));
    *value = item.as.uint_value;
    return 0;
}

/* q8 scales are float16 and must be finite and non-negative: a NaN or infinite scale would
 * turn a whole block of the rebuilt tensor into NaN or infinity. */
static int check_q8_scales(const uint8_t *base, const codec_tensor_view *tensor, codec_error *err)
{
    const uint8_t *scales = base + tensor->data_offset;
    for (uint64_t b = 0; b < tensor->q8_blocks; b++) {
        uint16_t bits = (uint16_t)(scales[2 * b] | scales[2 * b + 1] << 8);
        if ((bits & 0x7c00u) == 0x7c00u || (bits & 0x8000u))
            return fail(err,
                        "tensor '%.*s': q8 scale of block %llu (offset %zu) is %s; scales must "
                        "be finite and non-negative",
                        SHOW_NAME(tensor), (unsigned long long)b,
                        tensor->data_offset + 2 * (size_t)b,
                        (bits & 0x7fffu) > 0x7c00u    ? "NaN"
                        : (bits & 0x7c00u) == 0x7c00u ? "infinite"
                                                      : "negative");
    }
    return 0;
}

/* The data length and content rules of each encoding, once every field is known. */
static int check_tensor_data(const uint8_t *base, codec_tensor_view *tensor, unsigned seen,
                             size_t entry_offset, codec_error *err)
{
    bool plain = tensor->encoding == CODEC_ENCODING_PLAIN;
    if (!plain && tensor->dtype != CODEC_FLOAT32 && tensor->dtype != CODEC_FLOAT64)
        return fail(err,
                    "tensor '%.*s': a %s tensor cannot travel as a delta (entry at offset %zu)",
                    SHOW_NAME(tensor), codec_dtype_name(tensor->dtype), entry_offset);
    unsigned wanted = tensor->encoding == CODEC_ENCODING_Q8     ? FIELD_BLOCKS
                      : tensor->encoding == CODEC_ENCODING_TOPK ? FIELD_KEPT
                                                                : 0;
    unsigned extra = seen & (FIELD_BLOCKS | FIELD_KEPT) & ~wanted;
    if (extra)
        return fail(err,
                    "tensor '%.*s': field '%s' does not belong to its wire (entry at offset %zu)",
                    SHOW_NAME(tensor), extra & FIELD_BLOCKS ? "blocks" : "kept", entry_offset);
    if (wanted && !(seen & wanted))
        return fail(err, "tensor '%.*s': entry at offset %zu has no '%s'", SHOW_NAME(tensor),
                    entry_offset, wanted == FIELD_BLOCKS ? "blocks" : "kept");
    if (tensor->encoding == CODEC_ENCODING_Q8) {
        uint64_t needed = q8_block_count(tensor->element_count);
        if (tensor->q8_blocks != needed)
            return fail(err,
                        "tensor '%.*s': declares %llu q8 blocks but its %llu elements make %llu "
                        "blocks of %d",
                        SHOW_NAME(tensor), (unsigned long long)tensor->q8_blocks,
                        (unsigned long long)tensor->element_count, (unsigned long long)needed,
                        Q8_BLOCK_SIZE);
        uint64_t expected = 2 * needed + tensor->element_count;
        if (expected != tensor->data_length)
            return fail(err,
                        "tensor '%.*s': q8 data of %llu elements needs %llu bytes, but 'data' at "
                        "offset %zu has %zu bytes",
                        SHOW_NAME(tensor), (unsigned long long)tensor->element_count,
                        (unsigned long long)expected, tensor->data_offset, tensor->data_length);
        return check_q8_scales(base, tensor, err);
    }
    if (tensor->encoding == CODEC_ENCODING_TOPK) {
        const char *fault = topk_validate(base + tensor->data_offset, tensor->data_length,
                                          tensor->element_count, tensor->topk_keep);
        if (fault != NULL)
            return fail(err, "tensor '%.*s': topk data at offset %zu %s", SHOW_NAME(tensor),
                        tensor->data_offset, fault);
        return 0;
    }
    if (!codec_wire_allowed(tensor->dtype, tensor->wire))
        return fail(err, "tensor '%.*s': a %s tensor cannot travel as %s (entry at offset %zu)",
                    SHOW_NAME(tensor), codec_dtype_name(tensor->dtype),
                    codec_dtype_name(tensor->wire), entry_offset);
    /* element_count <= 2**56 and sizes <= 8, so the product cannot overflow */
    uint64_t expected = tensor->element_count * codec_dtype_size(tensor->wire);
    if (expected != tensor->data_length)
        return fail(err,
                    "tensor '%.*s': shape has %llu elements, which need %llu bytes of %s, but "
                    "'data' at offset %zu has %zu bytes",
                    SHOW_NAME(tensor), (unsigned long long)tensor->element_count,
                    (unsigned long long)expected, codec_dtype_name(tensor->wire),
                    tensor->data_offset, tensor->data_length);
    return 0;
}

static int parse_tensor(decoder *state, codec_tensor_view *tensor, codec_error *err)
{
    mp_reader *reader = &state->reader;
    mp_item name;
    if (read_expecting(reader, &name, MP_STR, "tensor name", err) != 0)
        return -1;
    if (name.as.body.length == 0 || name.as.body.length > CODEC_MAX_NAME_LENGTH)
        return fail(err, "tensor name at offset %zu is %u bytes long (1 to %d allowed)",
                    name.offset, name.as.body.length, CODEC_MAX_NAME_LENGTH);
    if (!mp_utf8_valid(name.as.body.bytes, name.as.body.length))
        return fail(err, "tensor name at offset %zu is not valid UTF-8", name.offset);
    memset(tensor, 0, sizeof *tensor);
    tensor->name = name.as.body.bytes;
    tensor->name_length = name.as.body.length;

    mp_item entry;
    if (mp_read(reader, &entry, err) != 0)
        return -1;
    if (entry.type != MP_MAP)
        return fail(err, "tensor '%.*s': entry at offset %zu must be a map, not a %s",
                    SHOW_NAME(tensor), entry.offset, mp_type_name(entry.type));
    unsigned seen = 0;
    for (uint32_t i = 0; i < entry.as.count; i++) {
        mp_item key;
        if (mp_read(reader, &key, err) != 0)
            return -1;
        unsigned field = mp_str_equals(&key, "dtype")    ? FIELD_DTYPE
                         : mp_str_equals(&key, "wire")   ? FIELD_WIRE
                         : mp_str_equals(&key, "shape")  ? FIELD_SHAPE
                         : mp_str_equals(&key, "pad")    ? FIELD_PAD
                         : mp_str_equals(&key, "data")   ? FIELD_DATA
                         : mp_str_equals(&key, "blocks") ? FIELD_BLOCKS
                         : mp_str_equals(&key, "kept")   ? FIELD_KEPT
                                                         : 0;
        if (field == 0)
            return fail(err, "tensor '%.*s': unknown field at offset %zu", SHOW_NAME(tensor),
                        key.offset);
        if (seen & field)
            return fail(err, "tensor '%.*s': field at offset %zu appears twice", SHOW_NAME(tensor),
                        key.offset);
        seen |= field;
        int rc = 0;
        mp_item value;
        switch (field) {
        case FIELD_DTYPE:
            rc = read_dtype(reader, tensor, "dtype", &tensor->dtype, err);
            break;
        case FIELD_WIRE:
            rc = read_wire(state, tensor, err);
            break;
        case FIELD_BLOCKS:
            rc = read_count_field(reader, tensor, "blocks", &tensor->q8_blocks, err);
            break;
        case FIELD_KEPT:
            rc = read_count_field(reader, tensor, "kept", &tensor->topk_keep, err);
            break;
        case FIELD_SHAPE:
            rc = read_shape(state, tensor, err);
            break;
        default: /* pad and data are both bin; pad's content is ignored */
            if (mp_read(reader, &value, err) != 0)
                return -1;
            if (value.type != MP_BIN)
                return fail(err, "tensor '%.*s': '%s' at offset %zu must be a bin, not a %s",
                            SHOW_NAME(tensor), field == FIELD_PAD ? "pad" : "data", value.offset,
                            mp_type_name(value.type));
            if (field == FIELD_DATA) {
                tensor->data_offset = (size_t)(value.as.body.bytes - reader->data);
                tensor->data_length = value.as.body.length;
            }
        }
        if (rc != 0)
            return -1;
    }
    static const struct {
        unsigned field;
        const char *name;
    } required[] = {
        {FIELD_DTYPE, "dtype"}, {FIELD_WIRE, "wire"}, {FIELD_SHAPE, "shape"}, {FIELD_DATA, "data"}};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!(seen & required[i].field))
            return fail(err, "tensor '%.*s': entry at offset %zu has no '%s'", SHOW_NAME(tensor),
                        entry.offset, required[i].name);
    if (tensor->encoding != CODEC_ENCODING_PLAIN)
        tensor->wire = tensor->dtype; /* not a wire dtype; keeps every field meaningful */
    return check_tensor_data(reader->data, tensor, seen, entry.offset, err) ? -1 : 0;
}

/* Metadata values that are not ours ("extra") must be JSON-like: no ext types, str keys. */
static int validate_json_like(mp_reader *reader, int depth, codec_error *err)
{
    mp_item item;
    if (mp_read(reader, &item, err) != 0)
        return -1;
    switch (item.type) {
    case MP_EXT:
        return fail(err, "metadata: ext value at offset %zu is not allowed", item.offset);
    case MP_STR:
        if (!mp_utf8_valid(item.as.body.bytes, item.as.body.length))
            return fail(err, "metadata: str at offset %zu is not valid UTF-8", item.offset);
        return 0;
    case MP_ARRAY:
    case MP_MAP:
        break;
    default:
        return 0;
    }
    if (depth >= CODEC_MAX_METADATA_DEPTH)
        return fail(err, "metadata: %s at offset %zu is nested more than %d levels deep",
                    mp_type_name(item.type), item.offset, CODEC_MAX_METADATA_DEPTH);
    for (uint32_t i = 0; i < item.as.count; i++) {
        if (item.type == MP_MAP) {
            mp_item key;
            if (mp_read(reader, &key, err) != 0)
                return -1;
            if (key.type != MP_STR || !mp_utf8_valid(key.as.body.bytes, key.as.body.length))
                return fail(err, "metadata: map key at offset %zu must be a UTF-8 str", key.offset);
        }
        if (validate_json_like(reader, depth + 1, err) != 0)
            return -1;
    }
    return 0;
}

static int validate_metadata(mp_reader *reader, codec_error *err)
{
    mp_item map;
    if (read_expecting(reader, &map, MP_MAP, "'metadata'", err) != 0)
        return -1;
    static const char *const known[] = {"epoch", "loss", "num_samples", "architecture", "extra"};
    unsigned seen = 0;
    for (uint32_t i = 0; i < map.as.count; i++) {
        mp_item key, value;
        if (mp_read(reader, &key, err) != 0)
            return -1;
        unsigned index = 0;
        while (index < 5 && !mp_str_equals(&key, known[index]))
            index++;
        if (index == 5)
            return fail(err, "metadata: unknown key at offset %zu (extra data goes in 'extra')",
                        key.offset);
        if (seen & (1u << index))
            return fail(err, "metadata: key '%s' at offset %zu appears twice", known[index],
                        key.offset);
        seen |= 1u << index;
        size_t value_start = reader->position;
        if (mp_read(reader, &value, err) != 0)
            return -1;
        bool ok = value.type == MP_NIL;
        switch (index) {
        case 0: /* epoch */
            ok = ok || value.type == MP_UINT || value.type == MP_INT;
            break;
        case 1: /* loss */
            ok = ok || value.type == MP_FLOAT || value.type == MP_UINT || value.type == MP_INT;
            break;
        case 2: /* num_samples */
            ok = ok || value.type == MP_UINT;
            break;
        case 3: /* architecture */
            ok = ok ||
                 (value.type == MP_STR && mp_utf8_valid(value.as.body.bytes, value.as.body.length));
            break;
        default: /* extra */
            if (value.type == MP_MAP) {
                reader->position = value_start;
                if (validate_json_like(reader, 0, err) != 0)
                    return -1;
                ok = true;
            }
        }
        if (!ok)
            return fail(err, "metadata: '%s' at offset %zu has the wrong type (%s)", known[index],
                        value.offset, mp_type_name(value.type));
    }
    return 0;
}

int codec_validate_metadata(const uint8_t *data, size_t size, codec_error *err)
{
    mp_reader reader = {data, size, 0};
    if (validate_metadata(&reader, err) != 0)
        return -1;
    if (reader.position != size)
        return fail(err, "metadata: %zu bytes after the map", size - reader.position);
    return 0;
}

static int compare_names(const void *left, const void *right)
{
    const codec_tensor_view *a = *(codec_tensor_view *const *)left;
    const codec_tensor_view *b = *(codec_tensor_view *const *)right;
    if (a->name_length != b->name_length)
        return a->name_length < b->name_length ? -1 : 1;
    return memcmp(a->name, b->name, a->name_length);
}

static int reject_duplicate_names(const codec_message *message, const uint8_t *base,
                                  codec_error *err)
{
    if (message->tensor_count < 2)
        return 0;
    codec_tensor_view **sorted = malloc(message->tensor_count * sizeof *sorted);
    if (sorted == NULL)
        return fail(err, "out of memory checking %zu tensor names", message->tensor_count);
    for (size_t i = 0; i < message->tensor_count; i++)
        sorted[i] = &message->tensors[i];
    qsort(sorted, message->tensor_count, sizeof *sorted, compare_names);
    int rc = 0;
    for (size_t i = 1; i < message->tensor_count && rc == 0; i++)
        if (compare_names(&sorted[i - 1], &sorted[i]) == 0)
            rc = fail(
                err, "tensor '%.*s' appears twice (second at offset %zu)", SHOW_NAME(sorted[i]),
                (size_t)((sorted[i] > sorted[i - 1] ? sorted[i] : sorted[i - 1])->name - base));
    free(sorted);
    return rc;
}

static int parse_tensors(decoder *state, codec_error *err)
{
    codec_message *message = state->message;
    mp_item map;
    if (read_expecting(&state->reader, &map, MP_MAP, "'tensors'", err) != 0)
        return -1;
    /* Never leave the dimension array NULL: even a 0-d tensor's shape must be a pointer. */
    if (reserve((void **)&message->dimensions, &state->dimension_capacity, 1,
                sizeof *message->dimensions, err) != 0)
        return -1;
    for (uint32_t i = 0; i < map.as.count; i++) {
        if (reserve((void **)&message->tensors, &state->tensor_capacity, message->tensor_count + 1,
                    sizeof *message->tensors, err) != 0)
            return -1;
        if (parse_tensor(state, &message->tensors[message->tensor_count], err) != 0)
            return -1;
        message->tensor_count++;
    }
    /* The dimension array has stopped moving; point each tensor at its shape. */
    for (size_t i = 0; i < message->tensor_count; i++)
        message->tensors[i].shape = message->dimensions + message->tensors[i].shape_start;
    return reject_duplicate_names(message, state->reader.data, err);
}

static int parse_message(decoder *state, codec_error *err)
{
    mp_reader *reader = &state->reader;
    codec_message *message = state->message;
    mp_item top, key, value;
    if (read_expecting(reader, &top, MP_MAP, "the message", err) != 0)
        return -1;
    if (top.as.count < 2 || mp_read(reader, &key, err) != 0 || !mp_str_equals(&key, "format"))
        return fail(err, "not a weights message: it must start with a map whose first key is "
                         "'format'");
    if (mp_read(reader, &value, err) != 0)
        return -1;
    if (!mp_str_equals(&value, CODEC_FORMAT_NAME))
        return fail(err, "not a weights message: 'format' at offset %zu is not '%s'", value.offset,
                    CODEC_FORMAT_NAME);
    if (mp_read(reader, &key, err) != 0)
        return -1;
    if (!mp_str_equals(&key, "version"))
        return fail(err, "the second key (offset %zu) must be 'version'", key.offset);
    if (mp_read(reader, &value, err) != 0)
        return -1;
    if (value.type != MP_UINT || (value.as.uint_value != CODEC_FORMAT_VERSION &&
                                  value.as.uint_value != CODEC_DELTA_FORMAT_VERSION))
        return fail(err,
                    "unsupported format version at offset %zu (%s %lld); this build reads "
                    "versions %d and %d",
                    value.offset, mp_type_name(value.type),
                    value.type == MP_UINT ? (long long)value.as.uint_value : -1LL,
                    CODEC_FORMAT_VERSION, CODEC_DELTA_FORMAT_VERSION);
    message->version = (uint32_t)value.as.uint_value;

    /* 'reference' (the id of the model deltas are taken against) exists from version 2 on */
    static const char *const fields[] = {"kind", "metadata", "tensors", "reference"};
    unsigned field_count = message->version >= CODEC_DELTA_FORMAT_VERSION ? 4 : 3;
    unsigned seen = 0;
    for (uint32_t i = 2; i < top.as.count; i++) {
        if (mp_read(reader, &key, err) != 0)
            return -1;
        unsigned index = 0;
        while (index < field_count && !mp_str_equals(&key, fields[index]))
            index++;
        if (index == field_count)
            return fail(err, "unknown top-level key at offset %zu", key.offset);
        if (seen & (1u << index))
            return fail(err, "top-level key '%s' at offset %zu appears twice", fields[index],
                        key.offset);
        seen |= 1u << index;
        if (index == 0) {
            if (mp_read(reader, &value, err) != 0)
                return -1;
            if (mp_str_equals(&value, "numpy"))
                message->kind = CODEC_KIND_NUMPY;
            else if (mp_str_equals(&value, "torch"))
                message->kind = CODEC_KIND_TORCH;
            else
                return fail(err, "'kind' at offset %zu must be \"numpy\" or \"torch\"",
                            value.offset);
        } else if (index == 1) {
            message->metadata_offset = reader->position;
            if (validate_metadata(reader, err) != 0)
                return -1;
            message->metadata_length = reader->position - message->metadata_offset;
        } else if (index == 3) {
            if (read_expecting(reader, &value, MP_BIN, "'reference'", err) != 0)
                return -1;
            if (value.as.body.length != CODEC_REFERENCE_ID_SIZE)
                return fail(err, "'reference' at offset %zu has %u bytes, not %d", value.offset,
                            value.as.body.length, CODEC_REFERENCE_ID_SIZE);
            memcpy(message->reference_id, value.as.body.bytes, CODEC_REFERENCE_ID_SIZE);
        } else if (parse_tensors(state, err) != 0) {
            return -1;
        }
    }
    for (unsigned index = 0; index < field_count; index++)
        if (!(seen & (1u << index)))
            return fail(err, "the message has no '%s'", fields[index]);
    if (reader->position != reader->size)
        return fail(err, "%zu bytes of trailing garbage at offset %zu",
                    reader->size - reader->position, reader->position);
    return 0;
}

int codec_decode(const uint8_t *data, size_t size, codec_message *message, codec_error *err)
{
    memset(message, 0, sizeof *message);
    decoder state = {{data, size, 0}, message, 0, 0};
    if (parse_message(&state, err) != 0) {
        codec_message_free(message);
        return -1;
    }
    return 0;
}

void codec_message_free(codec_message *message)
{
    free(message->tensors);
    free(message->dimensions);
    memset(message, 0, sizeof *message);
}
