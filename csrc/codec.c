/* Python binding of the weight codec: turns Python tensors (as buffers) and metadata into one
 * encoded message, and an untrusted message into tensor data in one block. Arrays themselves
 * are made in segmentation_suite/network/codec.py; this file never needs numpy's C API. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "block_cache.h"
#include "codec_core.h"
#include "codec_reader.h"
#include "fp16.h"
#include "quantize.h"

/* ---- Block: one aligned allocation shared by every tensor of a message ------------------ */

/* Memory comes from block_cache.c: big blocks aligned to and advised for 2 MiB pages (first-touch
 * page faults would otherwise cost more than the fp16 conversion that fills them), and recycled. */

typedef struct {
    PyObject_HEAD void *memory;
    Py_ssize_t size;
    size_t capacity;
    int readonly;
} Block;

static void block_dealloc(Block *self)
{
    block_release(self->memory, self->capacity); /* block_cache.c may keep it for the next */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int block_getbuffer(Block *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->memory, self->size, self->readonly,
                             flags);
}

static Py_ssize_t block_length(Block *self)
{
    return self->size;
}

static PyBufferProcs block_buffer_procs = {(getbufferproc)block_getbuffer, NULL};
static PySequenceMethods block_sequence_methods = {.sq_length = (lenfunc)block_length};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "segmentation_suite.network._relayclient.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_sequence = &block_sequence_methods,
    .tp_as_buffer = &block_buffer_procs,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory of one encoded message or of the tensors of one decoded message.",
};

static Block *block_new(size_t size, int readonly)
{
    if (size > PY_SSIZE_T_MAX)
        return (Block *)PyErr_NoMemory();
    size_t capacity;
    void *memory = block_obtain(size, CODEC_DATA_ALIGNMENT, &capacity);
    if (memory == NULL)
        return (Block *)PyErr_NoMemory();
    Block *block = PyObject_New(Block, &BlockType);
    if (block == NULL) {
        block_release(memory, capacity);
        return NULL;
    }
    block->memory = memory;
    block->size = (Py_ssize_t)size;
    block->capacity = capacity;
    block->readonly = readonly;
    return block;
}

static PyObject *raise_codec_error(const codec_error *err)
{
    /* Messages may quote cut-off tensor names, so decode leniently. */
    PyObject *text =
        PyUnicode_DecodeUTF8(err->message, (Py_ssize_t)strlen(err->message), "replace");
    if (text != NULL) {
        PyErr_SetObject(PyExc_ValueError, text);
        Py_DECREF(text);
    }
    return NULL;
}

/* ---- metadata: Python <-> msgpack --------------------------------------------------- */

static int pack_failed(void)
{
    PyErr_NoMemory();
    return -1;
}

/* Packs JSON-like Python values; anything else is a TypeError naming the key it sat under. */
static int pack_python(msgpack_packer *packer, PyObject *value, int depth, PyObject *key)
{
    if (depth > CODEC_MAX_METADATA_DEPTH) {
        PyErr_Format(PyExc_ValueError, "metadata is nested more than %d levels deep",
                     CODEC_MAX_METADATA_DEPTH);
        return -1;
    }
    if (value == Py_None)
        return msgpack_pack_nil(packer) ? pack_failed() : 0;
    if (PyBool_Check(value))
        return (value == Py_True ? msgpack_pack_true(packer) : msgpack_pack_false(packer))
                   ? pack_failed()
                   : 0;
    if (PyLong_Check(value)) {
        int overflow;
        long long signed_value = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow == 0 && !(signed_value == -1 && PyErr_Occurred()))
            return msgpack_pack_int64(packer, signed_value) ? pack_failed() : 0;
        PyErr_Clear();
        unsigned long long unsigned_value = overflow > 0 ? PyLong_AsUnsignedLongLong(value) : 0;
        if (overflow < 0 || PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "metadata integer under %R does not fit in 64 bits",
                         key);
            return -1;
        }
        return msgpack_pack_uint64(packer, unsigned_value) ? pack_failed() : 0;
    }
    if (PyFloat_Check(value))
        return msgpack_pack_double(packer, PyFloat_AS_DOUBLE(value)) ? pack_failed() : 0;
    if (PyUnicode_Check(value)) {
        Py_ssize_t length;
        const char *text = PyUnicode_AsUTF8AndSize(value, &length);
        if (text == NULL)
            return -1;
        if (msgpack_pack_str(packer, (size_t)length) ||
            msgpack_pack_str_body(packer, text, (size_t)length))
            return pack_failed();
        return 0;
    }
    if (PyBytes_Check(value)) {
        size_t length = (size_t)PyBytes_GET_SIZE(value);
        if (msgpack_pack_bin(packer, length) ||
            msgpack_pack_bin_body(packer, PyBytes_AS_STRING(value), length))
            return pack_failed();
        return 0;
    }
    if (PyList_Check(value) || PyTuple_Check(value)) {
        PyObject *items = PySequence_Fast(value, "metadata sequence");
        if (items == NULL)
            return -1;
        Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
        int rc = msgpack_pack_array(packer, (size_t)count) ? pack_failed() : 0;
        for (Py_ssize_t i = 0; rc == 0 && i < count; i++)
            rc = pack_python(packer, PySequence_Fast_GET_ITEM(items, i), depth + 1, key);
        Py_DECREF(items);
        return rc;
    }
    if (PyDict_Check(value)) {
        if (msgpack_pack_map(packer, (size_t)PyDict_GET_SIZE(value)))
            return pack_failed();
        Py_ssize_t position = 0;
        PyObject *child_key, *child;
        while (PyDict_Next(value, &position, &child_key, &child)) {
            if (!PyUnicode_Check(child_key)) {
                PyErr_Format(PyExc_TypeError, "metadata keys must be str, not %s (%R)",
                             Py_TYPE(child_key)->tp_name, child_key);
                return -1;
            }
            /* hold references: packing may run Python code (str subclasses) */
            Py_INCREF(child_key);
            Py_INCREF(child);
            int rc = pack_python(packer, child_key, depth + 1, child_key);
            if (rc == 0)
                rc = pack_python(packer, child, depth + 1, child_key);
            Py_DECREF(child_key);
            Py_DECREF(child);
            if (rc != 0)
                return -1;
        }
        return 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "metadata value under %R is a %s; allowed are None, bool, int, float, str, "
                 "bytes, list, tuple and dict",
                 key, Py_TYPE(value)->tp_name);
    return -1;
}

/* Builds Python objects from metadata the decoder has already validated. */
static PyObject *unpack_python(mp_reader *reader, int depth)
{
    codec_error err;
    mp_item item;
    if (mp_read(reader, &item, &err) != 0)
        return raise_codec_error(&err);
    switch (item.type) {
    case MP_NIL:
        Py_RETURN_NONE;
    case MP_BOOL:
        return PyBool_FromLong(item.as.boolean);
    case MP_UINT:
        return PyLong_FromUnsignedLongLong(item.as.uint_value);
    case MP_INT:
        return PyLong_FromLongLong(item.as.int_value);
    case MP_FLOAT:
        return PyFloat_FromDouble(item.as.float_value);
    case MP_STR:
        return PyUnicode_DecodeUTF8((const char *)item.as.body.bytes, item.as.body.length,
                                    "strict");
    case MP_BIN:
        return PyBytes_FromStringAndSize((const char *)item.as.body.bytes, item.as.body.length);
    case MP_EXT:
        break;
    case MP_ARRAY: {
        if (depth > CODEC_MAX_METADATA_DEPTH)
            break;
        PyObject *list = PyList_New(item.as.count);
        for (uint32_t i = 0; list != NULL && i < item.as.count; i++) {
            PyObject *element = unpack_python(reader, depth + 1);
            if (element == NULL)
                Py_CLEAR(list);
            else
                PyList_SET_ITEM(list, i, element);
        }
        return list;
    }
    case MP_MAP: {
        if (depth > CODEC_MAX_METADATA_DEPTH)
            break;
        PyObject *dict = PyDict_New();
        for (uint32_t i = 0; dict != NULL && i < item.as.count; i++) {
            size_t key_offset = reader->position;
            PyObject *key = unpack_python(reader, depth + 1);
            PyObject *value = key ? unpack_python(reader, depth + 1) : NULL;
            int rc = -1;
            if (value != NULL) {
                rc = PyDict_Contains(dict, key);
                if (rc == 1) {
                    PyErr_Format(PyExc_ValueError, "metadata: key %R at offset %zu appears twice",
                                 key, key_offset);
                    rc = -1;
                } else if (rc == 0) {
                    rc = PyDict_SetItem(dict, key, value);
                }
            }
            Py_XDECREF(key);
            Py_XDECREF(value);
            if (rc != 0)
                Py_CLEAR(dict);
        }
        return dict;
    }
    }
    PyErr_Format(PyExc_ValueError, "metadata: unexpected %s at offset %zu", mp_type_name(item.type),
                 item.offset);
    return NULL;
}

/* ---- encode ---------------------------------------------------------------------------- */

static int parse_dtype(PyObject *name, codec_dtype *dtype)
{
    Py_ssize_t length;
    const char *text = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &length) : NULL;
    if (text == NULL || !codec_dtype_from_name(text, (size_t)length, dtype)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "unsupported dtype %R", name);
        return -1;
    }
    return 0;
}

/* 'wire' of an encode() entry: a dtype, or a delta encoding (q8, topk). */
static int parse_wire(PyObject *name, codec_tensor_source *tensor)
{
    if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, CODEC_WIRE_Q8) == 0)
        tensor->encoding = CODEC_ENCODING_Q8;
    else if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, CODEC_WIRE_TOPK) == 0)
        tensor->encoding = CODEC_ENCODING_TOPK;
    else
        return parse_dtype(name, &tensor->wire);
    tensor->wire = tensor->dtype;
    return 0;
}

#define ENTRY_FORMAT "(name, dtype, wire, shape, buffer[, reference buffer, topk kept])"

/* One tensor of the list handed to encode(): views[0] gets the buffer, views[1] the
 * reference of a delta encoding. */
static int parse_tensor_source(PyObject *entry, codec_tensor_source *tensor, uint64_t *shape,
                               Py_buffer *views, int *acquired)
{
    PyObject *name, *dtype_name, *wire_name, *shape_tuple, *buffer, *reference = Py_None;
    Py_ssize_t keep = 0;
    Py_buffer *view = &views[0];
    int *view_acquired = &acquired[0];
    if (!PyTuple_Check(entry)) {
        PyErr_SetString(PyExc_TypeError, "tensor entries are " ENTRY_FORMAT);
        return -1;
    }
    if (!PyArg_ParseTuple(entry, "UUUO!O|On;tensor entries are " ENTRY_FORMAT, &name, &dtype_name,
                          &wire_name, &PyTuple_Type, &shape_tuple, &buffer, &reference, &keep))
        return -1;
    Py_ssize_t name_length;
    tensor->name = PyUnicode_AsUTF8AndSize(name, &name_length);
    if (tensor->name == NULL)
        return -1;
    tensor->name_length = (size_t)name_length;
    if (name_length < 1 || name_length > CODEC_MAX_NAME_LENGTH) {
        PyErr_Format(PyExc_ValueError, "tensor name %.80R must be 1 to %d bytes of UTF-8", name,
                     CODEC_MAX_NAME_LENGTH);
        return -1;
    }
    if (parse_dtype(dtype_name, &tensor->dtype) != 0 || parse_wire(wire_name, tensor) != 0)
        return -1;
    if (tensor->encoding != CODEC_ENCODING_PLAIN && tensor->dtype != CODEC_FLOAT32 &&
        tensor->dtype != CODEC_FLOAT64) {
        PyErr_Format(PyExc_ValueError, "tensor %.80R: only float32 and float64 travel as deltas",
                     name);
        return -1;
    }
    if ((tensor->encoding != CODEC_ENCODING_PLAIN) != (reference != Py_None) || keep < 0) {
        PyErr_Format(PyExc_ValueError,
                     "tensor %.80R: a delta wire needs a reference buffer (and a plain one none)",
                     name);
        return -1;
    }
    tensor->topk_keep = (uint64_t)keep;
    if (!codec_wire_allowed(tensor->dtype, tensor->wire)) {
        PyErr_Format(PyExc_ValueError, "tensor %.80R: a %s tensor cannot travel as %s", name,
                     codec_dtype_name(tensor->dtype), codec_dtype_name(tensor->wire));
        return -1;
    }
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape_tuple);
    if (ndim > CODEC_MAX_NDIM) {
        PyErr_Format(PyExc_ValueError, "tensor %.80R has %zd dimensions (at most %d)", name, ndim,
                     CODEC_MAX_NDIM);
        return -1;
    }
    tensor->ndim = (uint32_t)ndim;
    tensor->shape = shape;
    uint64_t nonzero_product = 1;
    bool has_zero = false;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        unsigned long long value = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(shape_tuple, i));
        if (PyErr_Occurred())
            return -1;
        if (value > CODEC_MAX_ELEMENTS || (value && nonzero_product > CODEC_MAX_ELEMENTS / value)) {
            PyErr_Format(PyExc_ValueError, "tensor %.80R has more than 2**56 elements", name);
            return -1;
        }
        shape[i] = value;
        if (value)
            nonzero_product *= value;
        else
            has_zero = true;
    }
    tensor->element_count = has_zero ? 0 : nonzero_product;

    if (PyObject_GetBuffer(buffer, view, PyBUF_C_CONTIGUOUS) != 0)
        return -1;
    *view_acquired = 1;
    tensor->source = view->buf;
    uint64_t source_bytes = tensor->element_count * codec_dtype_size(tensor->dtype);
    if ((uint64_t)view->len != source_bytes) {
        PyErr_Format(PyExc_ValueError,
                     "tensor %.80R: shape and dtype %s need %llu bytes but the buffer has %zd",
                     name, codec_dtype_name(tensor->dtype), (unsigned long long)source_bytes,
                     view->len);
        return -1;
    }
    if (reference != Py_None) {
        if (PyObject_GetBuffer(reference, &views[1], PyBUF_C_CONTIGUOUS) != 0)
            return -1;
        acquired[1] = 1;
        tensor->reference = views[1].buf;
        if ((uint64_t)views[1].len != source_bytes) {
            PyErr_Format(PyExc_ValueError,
                         "tensor %.80R: the reference has %zd bytes but the tensor %llu", name,
                         views[1].len, (unsigned long long)source_bytes);
            return -1;
        }
    }
    if (tensor->element_count * codec_dtype_size(tensor->wire) > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError,
                     "tensor %.80R is larger than 4 GiB on the wire, the limit of a msgpack bin",
                     name);
        return -1;
    }
    return 0;
}

static int parse_kind(const char *kind, codec_kind *out)
{
    if (strcmp(kind, "numpy") == 0)
        *out = CODEC_KIND_NUMPY;
    else if (strcmp(kind, "torch") == 0)
        *out = CODEC_KIND_TORCH;
    else {
        PyErr_Format(PyExc_ValueError, "kind must be 'numpy' or 'torch', not %R", kind);
        return -1;
    }
    return 0;
}

/* What parse_tensor_source fills for a list of tensors: a source and its shape for each, and
 * two buffer views for each (its data and, for a delta, its reference), each flagged when held.
 * One home for their allocation and release, shared by _encode and _reference_id. */
typedef struct {
    size_t count;
    codec_tensor_source *sources;
    uint64_t *shapes;
    Py_buffer *views;
    int *acquired;
} tensor_sources;

/* 0, or -1 with MemoryError set; tensor_sources_release() either way. */
static int tensor_sources_init(tensor_sources *list, size_t count)
{
    list->count = count;
    list->sources = PyMem_Calloc(count ? count : 1, sizeof *list->sources);
    list->shapes = PyMem_Calloc(count ? count * CODEC_MAX_NDIM : 1, sizeof *list->shapes);
    list->views = PyMem_Calloc(count ? 2 * count : 1, sizeof *list->views);
    list->acquired = PyMem_Calloc(count ? 2 * count : 1, sizeof *list->acquired);
    if (list->sources && list->shapes && list->views && list->acquired)
        return 0;
    PyErr_NoMemory();
    return -1;
}

static int tensor_sources_parse(tensor_sources *list, size_t i, PyObject *entry)
{
    return parse_tensor_source(entry, &list->sources[i], list->shapes + i * CODEC_MAX_NDIM,
                               &list->views[2 * i], &list->acquired[2 * i]);
}

static void tensor_sources_release(tensor_sources *list)
{
    for (size_t i = 0; list->acquired && i < 2 * list->count; i++)
        if (list->acquired[i])
            PyBuffer_Release(&list->views[i]);
    PyMem_Free(list->sources);
    PyMem_Free(list->shapes);
    PyMem_Free(list->views);
    PyMem_Free(list->acquired);
}

PyDoc_STRVAR(encode_doc,
             "_encode(tensors, kind, metadata, delta=False, size_only=False) -> Block\n\n"
             "tensors: list of (name, dtype, wire, shape, C-contiguous buffer[, reference\n"
             "buffer, topk kept]); wire is a dtype, or 'q8'/'topk' with a reference.\n"
             "kind: 'numpy' or 'torch'. metadata: dict written as the message's metadata map.\n"
             "delta: write a version-2 message with the reference id (needed for q8/topk).\n"
             "size_only: return the message's size (int) instead, converting nothing.\n"
             "Conversion runs with the GIL released.");

static PyObject *codec_encode(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *tensor_list, *metadata;
    const char *kind_name;
    int delta = 0, size_only = 0;
    if (!PyArg_ParseTuple(args, "O!sO!|pp:_encode", &PyList_Type, &tensor_list, &kind_name,
                          &PyDict_Type, &metadata, &delta, &size_only))
        return NULL;
    codec_encode_input input = {0};
    input.delta = delta;
    if (parse_kind(kind_name, &input.kind) != 0)
        return NULL;

    /* The list is copied so that Python code run while parsing cannot resize it under us. */
    PyObject *entries = PySequence_Tuple(tensor_list);
    if (entries == NULL)
        return NULL;
    size_t count = (size_t)PyTuple_GET_SIZE(entries);
    tensor_sources list;
    int listed = tensor_sources_init(&list, count);
    codec_tensor_source *tensors = list.sources;
    uint8_t **destinations = PyMem_Calloc(count ? count : 1, sizeof *destinations);
    msgpack_sbuffer packed_metadata;
    msgpack_sbuffer_init(&packed_metadata);
    Block *block = NULL;
    PyObject *size_object = NULL; /* size_only's result */
    bool deltas_prepared = false;
    if (listed != 0)
        goto done;
    if (!destinations) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        if (tensor_sources_parse(&list, i, PyTuple_GET_ITEM(entries, i)) != 0)
            goto done;
        if (tensors[i].encoding != CODEC_ENCODING_PLAIN && !input.delta) {
            PyErr_SetString(PyExc_ValueError, "q8 and topk wires need delta=True");
            goto done;
        }
    }

    msgpack_packer packer;
    msgpack_packer_init(&packer, &packed_metadata, msgpack_sbuffer_write);
    if (pack_python(&packer, metadata, 0, Py_None) != 0)
        goto done;
    codec_error err;
    if (codec_validate_metadata((const uint8_t *)packed_metadata.data, packed_metadata.size,
                                &err) != 0) {
        raise_codec_error(&err);
        goto done;
    }
    input.metadata = (const uint8_t *)packed_metadata.data;
    input.metadata_length = packed_metadata.size;
    input.tensors = tensors;
    input.tensor_count = count;
    if (input.delta) {
        deltas_prepared = true;
        int rc;
        PyThreadState *preparing = PyEval_SaveThread();
        rc = codec_prepare_deltas(&input, &err);
        PyEval_RestoreThread(preparing);
        if (rc != 0) {
            raise_codec_error(&err);
            goto done;
        }
    }

    size_t size = codec_encoded_size(&input);
    if (size == 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (size_only) {
        size_object = PyLong_FromSize_t(size);
        goto done;
    }
    block = block_new(size, 1);
    if (block == NULL)
        goto done;
    codec_encode_layout(&input, block->memory, destinations);
    PyThreadState *thread_state = PyEval_SaveThread();
    int rc = codec_encode_data(&input, destinations, &err);
    PyEval_RestoreThread(thread_state);
    if (rc != 0)
        raise_codec_error(&err);

done:
    if (deltas_prepared)
        codec_release_deltas(&input);
    tensor_sources_release(&list);
    msgpack_sbuffer_destroy(&packed_metadata);
    PyMem_Free(destinations);
    Py_DECREF(entries);
    if (PyErr_Occurred()) {
        Py_CLEAR(block);
        Py_CLEAR(size_object);
    }
    return size_object != NULL ? size_object : (PyObject *)block;
}

/* ---- decode ---------------------------------------------------------------------------- */

/* Decodes the message in `data` with the GIL released. Its buffer stays exported in `view`
 * (released by the caller) so that a bytearray cannot be resized while the message's views
 * point into it. 0, or -1 with the exception set and nothing held. */
static int decode_exported(PyObject *data, Py_buffer *view, codec_message *message)
{
    if (PyObject_GetBuffer(data, view, PyBUF_SIMPLE) != 0)
        return -1;
    codec_error err;
    PyThreadState *thread_state = PyEval_SaveThread();
    int rc = codec_decode(view->buf, (size_t)view->len, message, &err);
    PyEval_RestoreThread(thread_state);
    if (rc == 0)
        return 0;
    PyBuffer_Release(view);
    raise_codec_error(&err);
    return -1;
}

/* Where one decoded tensor lives: in the input buffer (a view) or in the output block. */
typedef struct {
    codec_dtype output;
    bool in_block;
    bool round; /* float16_values: rounded to float16 values after decoding */
    size_t offset;
} tensor_placement;

static size_t align_up(size_t value, size_t alignment)
{
    return (value + alignment - 1) / alignment * alignment;
}

static PyObject *describe_tensors(const codec_message *message, const tensor_placement *places)
{
    PyObject *list = PyList_New((Py_ssize_t)message->tensor_count);
    for (size_t i = 0; list != NULL && i < message->tensor_count; i++) {
        const codec_tensor_view *tensor = &message->tensors[i];
        PyObject *shape = PyTuple_New(tensor->ndim);
        for (uint32_t d = 0; shape != NULL && d < tensor->ndim; d++) {
            PyObject *dimension = PyLong_FromUnsignedLongLong(tensor->shape[d]);
            if (dimension == NULL)
                Py_CLEAR(shape);
            else
                PyTuple_SET_ITEM(shape, d, dimension);
        }
        PyObject *entry = shape == NULL ? NULL
                                        : Py_BuildValue("(s#sNOn)", (const char *)tensor->name,
                                                        (Py_ssize_t)tensor->name_length,
                                                        codec_dtype_name(places[i].output), shape,
                                                        places[i].in_block ? Py_True : Py_False,
                                                        (Py_ssize_t)places[i].offset);
        if (entry == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, entry);
    }
    return list;
}

/* Hex of the first 8 bytes of an id: enough to tell two ids apart in an error message. */
static void format_id(const uint8_t *id, char out[17])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[16] = '\0';
}

/* For each delta tensor of `message`, finds its reference in `reference` (a dict of name ->
 * (dtype, shape, buffer)), checks dtype and shape, and checks that the references together
 * have the id the message names. Fills `sources` (one per tensor; reference set for deltas)
 * and holds the buffers in `views`/`acquired` (released by the caller). */
static int bind_reference(const codec_message *message, PyObject *reference,
                          codec_tensor_source *sources, Py_buffer *views, int *acquired,
                          bool check_id)
{
    char wanted[17];
    format_id(message->reference_id, wanted);
    if (reference == Py_None) {
        PyErr_Format(PyExc_ValueError,
                     "the message is a delta against a reference model (id %s...) and no "
                     "reference was given: decode it with reference=<that model>",
                     wanted);
        return -1;
    }
    if (!PyDict_Check(reference)) {
        PyErr_SetString(PyExc_TypeError,
                        "reference must be a dict of name -> (dtype, shape, buffer)");
        return -1;
    }
    for (size_t i = 0; i < message->tensor_count; i++) {
        const codec_tensor_view *tensor = &message->tensors[i];
        codec_tensor_source *source = &sources[i];
        *source = (codec_tensor_source){(const char *)tensor->name,
                                        tensor->name_length,
                                        tensor->dtype,
                                        tensor->wire,
                                        tensor->ndim,
                                        tensor->shape,
                                        tensor->element_count,
                                        NULL,
                                        tensor->encoding,
                                        NULL,
                                        0,
                                        NULL,
                                        0};
        if (tensor->encoding == CODEC_ENCODING_PLAIN)
            continue;
        PyObject *name = PyUnicode_DecodeUTF8((const char *)tensor->name,
                                              (Py_ssize_t)tensor->name_length, "strict");
        if (name == NULL)
            return -1;
        PyObject *entry = PyDict_GetItemWithError(reference, name); /* borrowed */
        if (entry == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError,
                             "the reference model has no tensor %.80R, which the message is a "
                             "delta of",
                             name);
            Py_DECREF(name);
            return -1;
        }
        PyObject *dtype_name, *shape, *buffer;
        if (!PyTuple_Check(entry) ||
            !PyArg_ParseTuple(entry, "UO!O;reference entries are (dtype, shape, buffer)",
                              &dtype_name, &PyTuple_Type, &shape, &buffer)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "reference entries are (dtype, shape, buffer)");
            Py_DECREF(name);
            return -1;
        }
        bool same =
            PyUnicode_CompareWithASCIIString(dtype_name, codec_dtype_name(tensor->dtype)) == 0 &&
            PyTuple_GET_SIZE(shape) == (Py_ssize_t)tensor->ndim;
        for (uint32_t d = 0; same && d < tensor->ndim; d++) {
            unsigned long long dimension = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(shape, d));
            if (PyErr_Occurred()) {
                Py_DECREF(name);
                return -1;
            }
            same = dimension == tensor->shape[d];
        }
        if (!same) {
            PyErr_Format(PyExc_ValueError,
                         "the reference model's tensor %.80R has dtype %S and shape %S, not those "
                         "of the message's delta (%s)",
                         name, dtype_name, shape, codec_dtype_name(tensor->dtype));
            Py_DECREF(name);
            return -1;
        }
        Py_DECREF(name);
        if (PyObject_GetBuffer(buffer, &views[i], PyBUF_C_CONTIGUOUS) != 0)
            return -1;
        acquired[i] = 1;
        if ((uint64_t)views[i].len != tensor->element_count * codec_dtype_size(tensor->dtype)) {
            PyErr_SetString(PyExc_ValueError, "a reference buffer does not match its shape");
            return -1;
        }
        source->reference = views[i].buf;
    }
    if (!check_id)
        return 0;
    uint8_t id[CODEC_REFERENCE_ID_SIZE];
    int rc;
    PyThreadState *thread_state = PyEval_SaveThread();
    rc = codec_reference_id(sources, message->tensor_count, id);
    PyEval_RestoreThread(thread_state);
    if (rc != 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (memcmp(id, message->reference_id, CODEC_REFERENCE_ID_SIZE) != 0) {
        char given[17];
        format_id(id, given);
        PyErr_Format(PyExc_ValueError,
                     "reference mismatch: the message is a delta against the model with id "
                     "%s..., but the reference given has id %s... (not the model it was made "
                     "against)",
                     wanted, given);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(decode_doc,
             "_decode(data, reference=None, float16_values=False)\n"
             "    -> (kind, metadata, block, tensors, reference_id)\n\n"
             "Validates the message in `data` (any buffer) and returns tensors as\n"
             "(name, dtype, shape, in_block, offset): their bytes are at `offset` in `block`\n"
             "when in_block, else in `data` itself (only when `data` is writable and the\n"
             "tensor needs no conversion and is aligned). A version-2 (delta) message needs\n"
             "`reference`, a dict of name -> (dtype, shape, buffer) of the model its deltas\n"
             "were taken against; reference_id is its id (bytes), None for version 1.\n"
             "float16_values rounds float32/float64 tensors to float16 values in the same\n"
             "pass (as a float16 wire would). Raises ValueError on bad input or a missing or\n"
             "different reference.");

static PyObject *codec_decode_py(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *data, *reference = Py_None;
    int float16_values = 0;
    if (!PyArg_ParseTuple(args, "O|Op:_decode", &data, &reference, &float16_values))
        return NULL;
    Py_buffer view;
    codec_message message;
    if (decode_exported(data, &view, &message) != 0)
        return NULL;

    PyObject *result = NULL, *metadata = NULL, *tensors = NULL;
    Block *block = NULL;
    tensor_placement *places = NULL;
    codec_tensor_source *sources = NULL;
    Py_buffer *reference_views = NULL;
    int *reference_acquired = NULL;
    PyThreadState *thread_state;

    const uint8_t *base = view.buf;
    size_t slots = message.tensor_count ? message.tensor_count : 1;
    places = PyMem_Calloc(slots, sizeof *places);
    sources = PyMem_Calloc(slots, sizeof *sources);
    reference_views = PyMem_Calloc(slots, sizeof *reference_views);
    reference_acquired = PyMem_Calloc(slots, sizeof *reference_acquired);
    if (!places || !sources || !reference_views || !reference_acquired) {
        PyErr_NoMemory();
        goto done;
    }
    bool delta = message.version >= CODEC_DELTA_FORMAT_VERSION;
    if (delta && bind_reference(&message, reference, sources, reference_views, reference_acquired,
                                true) != 0)
        goto done;
    /* Output needs at most 4 bytes per wire byte (float16 -> float64) plus alignment, or for
     * a delta the size of its reference, so the block is bounded by what the input and the
     * caller's own reference justify. */
    size_t block_size = 0;
    for (size_t i = 0; i < message.tensor_count; i++) {
        const codec_tensor_view *tensor = &message.tensors[i];
        codec_dtype output = tensor->dtype;
        size_t item_size = codec_dtype_size(output);
        bool aligned = (uintptr_t)(base + tensor->data_offset) % item_size == 0;
        places[i].output = output;
        /* rounded in place: float32/float64 values that did not travel as float16 */
        places[i].round =
            float16_values && (output == CODEC_FLOAT32 || output == CODEC_FLOAT64) &&
            !(tensor->encoding == CODEC_ENCODING_PLAIN && tensor->wire == CODEC_FLOAT16);
        if (tensor->encoding == CODEC_ENCODING_PLAIN && output == tensor->wire && !view.readonly &&
            aligned && !places[i].round) {
            places[i].in_block = false;
            places[i].offset = tensor->data_offset;
        } else {
            places[i].in_block = true;
            places[i].offset = align_up(block_size, CODEC_DATA_ALIGNMENT);
            block_size = places[i].offset + (size_t)tensor->element_count * item_size;
        }
    }
    block = block_new(block_size, 0);
    if (block == NULL)
        goto done;
    thread_state = PyEval_SaveThread();
    for (size_t i = 0; i < message.tensor_count; i++) {
        if (!places[i].in_block)
            continue;
        uint8_t *out = (uint8_t *)block->memory + places[i].offset;
        codec_decode_tensor(base, &message.tensors[i], sources[i].reference, out);
        if (places[i].round)
            codec_round_to_float16(places[i].output, out, message.tensors[i].element_count);
    }
    PyEval_RestoreThread(thread_state);

    mp_reader metadata_reader = {base + message.metadata_offset, message.metadata_length, 0};
    metadata = unpack_python(&metadata_reader, 0);
    if (metadata == NULL)
        goto done;
    tensors = describe_tensors(&message, places);
    if (tensors == NULL)
        goto done;
    if (delta)
        result =
            Py_BuildValue("(sOOOy#)", message.kind == CODEC_KIND_TORCH ? "torch" : "numpy",
                          metadata, (PyObject *)block, tensors, (const char *)message.reference_id,
                          (Py_ssize_t)CODEC_REFERENCE_ID_SIZE);
    else
        result = Py_BuildValue("(sOOOO)", message.kind == CODEC_KIND_TORCH ? "torch" : "numpy",
                               metadata, (PyObject *)block, tensors, Py_None);

done:
    for (size_t i = 0; reference_acquired && i < message.tensor_count; i++)
        if (reference_acquired[i])
            PyBuffer_Release(&reference_views[i]);
    Py_XDECREF(metadata);
    Py_XDECREF(tensors);
    Py_XDECREF(block);
    PyMem_Free(places);
    PyMem_Free(sources);
    PyMem_Free(reference_views);
    PyMem_Free(reference_acquired);
    codec_message_free(&message);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(subtract_rebuilt_doc,
             "_subtract_rebuilt(data, reference, residuals) -> None\n\n"
             "For a sender's error feedback: validates the delta message `data` and subtracts\n"
             "what each delta tensor rebuilds against `reference` (as for _decode, but its id\n"
             "is not checked: the sender just made the message against it) from the writable\n"
             "buffer residuals[name], in place, with the GIL released.");

static PyObject *codec_subtract_rebuilt_py(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *data, *reference, *residuals;
    if (!PyArg_ParseTuple(args, "OOO!:_subtract_rebuilt", &data, &reference, &PyDict_Type,
                          &residuals))
        return NULL;
    Py_buffer view;
    codec_message message;
    if (decode_exported(data, &view, &message) != 0)
        return NULL;
    PyObject *result = NULL;
    codec_tensor_source *sources = NULL;
    Py_buffer *reference_views = NULL, *residual_views = NULL;
    int *reference_acquired = NULL, *residual_acquired = NULL;
    void *scratch = NULL;
    PyThreadState *thread_state;
    size_t slots = message.tensor_count ? message.tensor_count : 1;
    sources = PyMem_Calloc(slots, sizeof *sources);
    reference_views = PyMem_Calloc(slots, sizeof *reference_views);
    residual_views = PyMem_Calloc(slots, sizeof *residual_views);
    reference_acquired = PyMem_Calloc(slots, sizeof *reference_acquired);
    residual_acquired = PyMem_Calloc(slots, sizeof *residual_acquired);
    if (!sources || !reference_views || !residual_views || !reference_acquired ||
        !residual_acquired) {
        PyErr_NoMemory();
        goto done;
    }
    if (message.version < CODEC_DELTA_FORMAT_VERSION) {
        PyErr_SetString(PyExc_ValueError, "the message is not a delta message");
        goto done;
    }
    if (bind_reference(&message, reference, sources, reference_views, reference_acquired, false) !=
        0)
        goto done;
    size_t scratch_bytes = 0;
    for (size_t i = 0; i < message.tensor_count; i++) {
        const codec_tensor_view *tensor = &message.tensors[i];
        if (tensor->encoding == CODEC_ENCODING_PLAIN)
            continue;
        PyObject *name = PyUnicode_DecodeUTF8((const char *)tensor->name,
                                              (Py_ssize_t)tensor->name_length, "strict");
        if (name == NULL)
            goto done;
        PyObject *buffer = PyDict_GetItemWithError(residuals, name); /* borrowed */
        if (buffer == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "no residual for the delta tensor %.80R", name);
            Py_DECREF(name);
            goto done;
        }
        Py_DECREF(name);
        if (PyObject_GetBuffer(buffer, &residual_views[i], PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) !=
            0)
            goto done;
        residual_acquired[i] = 1;
        size_t item = codec_dtype_size(tensor->dtype);
        if ((uint64_t)residual_views[i].len != tensor->element_count * item) {
            PyErr_SetString(PyExc_ValueError, "a residual buffer does not match its tensor");
            goto done;
        }
        size_t need = (size_t)codec_subtract_scratch_count(tensor) * item;
        if (need > scratch_bytes)
            scratch_bytes = need;
    }
    scratch = PyMem_RawMalloc(scratch_bytes ? scratch_bytes : 1);
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    thread_state = PyEval_SaveThread();
    for (size_t i = 0; i < message.tensor_count; i++)
        if (residual_acquired[i])
            codec_subtract_rebuilt(view.buf, &message.tensors[i], sources[i].reference,
                                   residual_views[i].buf, scratch);
    PyEval_RestoreThread(thread_state);
    result = Py_NewRef(Py_None);

done:
    for (size_t i = 0; sources && i < message.tensor_count; i++) {
        if (reference_acquired && reference_acquired[i])
            PyBuffer_Release(&reference_views[i]);
        if (residual_acquired && residual_acquired[i])
            PyBuffer_Release(&residual_views[i]);
    }
    PyMem_RawFree(scratch);
    PyMem_Free(sources);
    PyMem_Free(reference_views);
    PyMem_Free(residual_views);
    PyMem_Free(reference_acquired);
    PyMem_Free(residual_acquired);
    codec_message_free(&message);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(message_reference_doc,
             "_message_reference(data) -> bytes | None\n\n"
             "Validates the message and returns the id of the reference it is a delta against\n"
             "(None for a whole, version-1 message), so a receiver can pick that reference.");

static PyObject *codec_message_reference_py(PyObject *module, PyObject *data)
{
    (void)module;
    Py_buffer view;
    codec_message message;
    if (decode_exported(data, &view, &message) != 0)
        return NULL;
    PyBuffer_Release(&view);
    PyObject *result =
        message.version >= CODEC_DELTA_FORMAT_VERSION
            ? PyBytes_FromStringAndSize((const char *)message.reference_id, CODEC_REFERENCE_ID_SIZE)
            : Py_NewRef(Py_None);
    codec_message_free(&message);
    return result;
}

PyDoc_STRVAR(reference_id_doc,
             "_reference_id(tensors) -> bytes\n\n"
             "The id a delta message against these tensors names: tensors is a list of\n"
             "(name, dtype, shape, buffer), the float32/float64 tensors of the reference in\n"
             "message order.");

static PyObject *codec_reference_id_py(PyObject *module, PyObject *tensor_list)
{
    (void)module;
    PyObject *entries = PySequence_Tuple(tensor_list);
    if (entries == NULL)
        return NULL;
    size_t count = (size_t)PyTuple_GET_SIZE(entries);
    tensor_sources list;
    PyObject *result = NULL;
    if (tensor_sources_init(&list, count) != 0)
        goto done;
    for (size_t i = 0; i < count; i++) {
        PyObject *name, *dtype, *shape, *buffer;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(entries, i), "UUO!O", &name, &dtype, &PyTuple_Type,
                              &shape, &buffer))
            goto done;
        /* the same checks as an encoded delta tensor, with the buffer as its own reference */
        PyObject *entry = Py_BuildValue("(OOsOOOn)", name, dtype, CODEC_WIRE_Q8, shape, buffer,
                                        buffer, (Py_ssize_t)0);
        if (entry == NULL)
            goto done;
        int rc = tensor_sources_parse(&list, i, entry);
        Py_DECREF(entry);
        if (rc != 0)
            goto done;
    }
    uint8_t id[CODEC_REFERENCE_ID_SIZE];
    int rc;
    PyThreadState *thread_state = PyEval_SaveThread();
    rc = codec_reference_id(list.sources, count, id);
    PyEval_RestoreThread(thread_state);
    if (rc != 0)
        PyErr_NoMemory();
    else
        result = PyBytes_FromStringAndSize((const char *)id, CODEC_REFERENCE_ID_SIZE);
done:
    tensor_sources_release(&list);
    Py_DECREF(entries);
    return result;
}

/* ---- SIMD switch for tests -------------------------------------------------------------- */

static PyObject *codec_set_simd(PyObject *module, PyObject *enabled)
{
    (void)module;
    int flag = PyObject_IsTrue(enabled);
    if (flag < 0)
        return NULL;
    fp16_set_simd_enabled(flag);
    Py_RETURN_NONE;
}

static PyObject *codec_simd_path(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyUnicode_FromString(fp16_active_path());
}

static PyMethodDef codec_methods[] = {
    {"_encode", codec_encode, METH_VARARGS, encode_doc},
    {"_decode", codec_decode_py, METH_VARARGS, decode_doc},
    {"_reference_id", codec_reference_id_py, METH_O, reference_id_doc},
    {"_message_reference", codec_message_reference_py, METH_O, message_reference_doc},
    {"_subtract_rebuilt", codec_subtract_rebuilt_py, METH_VARARGS, subtract_rebuilt_doc},
    {"_set_simd", codec_set_simd, METH_O,
     "_set_simd(enabled): use the SIMD fp16/bf16 kernels (True, default) or force the "
     "scalar ones (tests only; not thread-safe)."},
    {"_simd_path", codec_simd_path, METH_NOARGS,
     "_simd_path() -> 'f16c+avx2', 'neon' or 'scalar': the conversion kernels in use."},
    {NULL, NULL, 0, NULL}};

int codec_module_init(PyObject *module)
{
    if (PyType_Ready(&BlockType) != 0)
        return -1;
    if (PyModule_AddFunctions(module, codec_methods) != 0)
        return -1;
    Py_INCREF(&BlockType);
    if (PyModule_AddObject(module, "Block", (PyObject *)&BlockType) != 0) {
        Py_DECREF(&BlockType);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "FORMAT_VERSION", CODEC_FORMAT_VERSION) != 0 ||
        PyModule_AddStringConstant(module, "FORMAT_NAME", CODEC_FORMAT_NAME) != 0 ||
        PyModule_AddIntConstant(module, "DATA_ALIGNMENT", CODEC_DATA_ALIGNMENT) != 0 ||
        PyModule_AddIntConstant(module, "DELTA_FORMAT_VERSION", CODEC_DELTA_FORMAT_VERSION) != 0 ||
        PyModule_AddIntConstant(module, "Q8_BLOCK_SIZE", Q8_BLOCK_SIZE) != 0)
        return -1;
    return 0;
}
