/* sealing_transfer.c — SealingTransfer: the plaintext and send buffer of one transfer with its
 * sealer (chunk_cipher.c), header written, segments sealed on demand: by send_chunked() one chunk
 * ahead of the socket, or all at once by anyone who views its bytes (the buffer protocol). */
#include "sealing_transfer.h"

#include <pthread.h>
#include <string.h>

#include "chunk_cipher.h"

typedef struct {
    PyObject_HEAD Py_buffer plaintext, sealed;
    struct sealed_sealer sealer;
    pthread_mutex_t lock; /* the sealer: send_chunked seals without the GIL */
    int ready;            /* sealer initialised */
    int failed;
} SealingTransferObject;

static PyTypeObject SealingTransferType;

static int seal_through(SealingTransferObject *self, uint64_t wire_end, const char **error)
{
    pthread_mutex_lock(&self->lock);
    /* The first chunk is sealed by two threads (nothing is on the wire yet, the receiver and
     * the relay wait for it); the later ones by this thread alone, while the service thread
     * sends the chunk before: a helper thread would take the core the send needs. */
    self->sealer.one_thread = self->sealer.next > 0;
    int rc = self->failed ? -1 : sealed_sealer_seal_through(&self->sealer, wire_end, error);
    if (self->failed)
        *error = "sealing this transfer failed before";
    self->failed |= rc != 0;
    pthread_mutex_unlock(&self->lock);
    return rc;
}

int sealing_transfer_view(PyObject *data, const unsigned char **bytes, size_t *size, void **handle)
{
    if (!PyObject_TypeCheck(data, &SealingTransferType))
        return 0;
    SealingTransferObject *self = (SealingTransferObject *)data;
    *bytes = self->sealed.buf;
    *size = (size_t)self->sealed.len;
    *handle = self;
    return 1;
}

int sealing_transfer_through(void *handle, uint64_t wire_end, const char **error)
{
    return seal_through(handle, wire_end, error);
}

static void sealing_transfer_dealloc(SealingTransferObject *self)
{
    if (self->ready) {
        sealed_sealer_free(&self->sealer);
        PyBuffer_Release(&self->plaintext);
        PyBuffer_Release(&self->sealed);
        pthread_mutex_destroy(&self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Whoever views the bytes gets them whole: the rest is sealed first. */
static int sealing_transfer_getbuffer(SealingTransferObject *self, Py_buffer *view, int flags)
{
    const char *error = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = seal_through(self, UINT64_MAX, &error);
    Py_END_ALLOW_THREADS if (rc != 0)
    {
        PyErr_SetString(PyExc_ValueError, error ? error : "sealing failed");
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, self->sealed.buf, self->sealed.len, 0, flags);
}

static Py_ssize_t sealing_transfer_length(SealingTransferObject *self)
{
    return self->sealed.len;
}

static PyObject *sealing_transfer_get_sealed(SealingTransferObject *self, void *unused)
{
    (void)unused;
    pthread_mutex_lock(&self->lock);
    uint64_t ready = sealed_sealer_ready(&self->sealer);
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLongLong(ready);
}

static PyGetSetDef sealing_transfer_getset[] = {
    {"sealed_bytes", (getter)sealing_transfer_get_sealed, NULL,
     "How many bytes from the start are sealed (final) so far.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyBufferProcs sealing_transfer_as_buffer = {.bf_getbuffer =
                                                       (getbufferproc)sealing_transfer_getbuffer};
static PySequenceMethods sealing_transfer_as_sequence = {.sq_length =
                                                             (lenfunc)sealing_transfer_length};

static PyTypeObject SealingTransferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name =
        "segmentation_suite.network._relayclient.SealingTransfer",
    .tp_basicsize = sizeof(SealingTransferObject),
    .tp_dealloc = (destructor)sealing_transfer_dealloc,
    .tp_as_buffer = &sealing_transfer_as_buffer,
    .tp_as_sequence = &sealing_transfer_as_sequence,
    .tp_getset = sealing_transfer_getset,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A sealed transfer made by seal_while_sending(): send_chunked() seals it chunk by "
              "chunk just ahead of the socket; viewing its bytes seals the rest first.",
};

static PyObject *seal_while_sending(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"key",   "room",      "sender", "transfer_id",  "kind",
                               "epoch", "plaintext", "sealed", "segment_size", NULL};
    Py_buffer key;
    const char *room, *sender;
    Py_ssize_t room_len, sender_len;
    unsigned long long transfer_id;
    int kind;
    unsigned int epoch, segment_size = SEALED_DEFAULT_SEGMENT_SIZE;
    SealingTransferObject *self = PyObject_New(SealingTransferObject, &SealingTransferType);
    if (!self)
        return NULL;
    self->ready = self->failed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*s#s#KiIy*w*|$I:seal_while_sending", keywords,
                                     &key, &room, &room_len, &sender, &sender_len, &transfer_id,
                                     &kind, &epoch, &self->plaintext, &self->sealed,
                                     &segment_size)) {
        Py_DECREF(self);
        return NULL;
    }
    const char *error = "kind must be 0 to 255 and key 32 bytes";
    struct sealed_context ctx = {(const uint8_t *)room,
                                 (size_t)room_len,
                                 (const uint8_t *)sender,
                                 (size_t)sender_len,
                                 transfer_id,
                                 (uint8_t)kind,
                                 epoch};
    int ok = kind >= 0 && kind <= 255 && key.len == SEALED_KEY_BYTES;
    if (ok && (segment_size == 0 || segment_size > SEALED_MAX_SEGMENT_SIZE)) {
        ok = 0;
        error = "segment_size must be 1 byte to 1 GiB";
    }
    if (ok &&
        (uint64_t)self->sealed.len != sealed_size((uint64_t)self->plaintext.len, segment_size)) {
        ok = 0;
        error = "sealed must be sealed_size(len(plaintext)) bytes";
    }
    ok = ok && sealed_sealer_init(&self->sealer, key.buf, &ctx, sealed_preferred_algorithm(),
                                  segment_size, self->plaintext.buf, (uint64_t)self->plaintext.len,
                                  self->sealed.buf, 0, &error) == 0;
    PyBuffer_Release(&key);
    if (!ok) {
        PyBuffer_Release(&self->plaintext);
        PyBuffer_Release(&self->sealed);
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    self->ready = 1;
    return (PyObject *)self;
}

static PyMethodDef sealing_transfer_methods[] = {
    {"seal_while_sending", (PyCFunction)(void (*)(void))seal_while_sending,
     METH_VARARGS | METH_KEYWORDS,
     "seal_while_sending(key, room, sender, transfer_id, kind, epoch, plaintext, sealed, *, "
     "segment_size=1 MiB) -> SealingTransfer\n--\n\nAs seal() without a digest, but the header "
     "only is written now: send_chunked() seals each chunk just before it sends it (the chunk "
     "before is on the wire meanwhile); viewing the bytes seals the rest. plaintext and sealed "
     "are held until the object goes."},
    {NULL, NULL, 0, NULL}};

int sealing_transfer_init(PyObject *module)
{
    if (PyType_Ready(&SealingTransferType) != 0 ||
        PyModule_AddFunctions(module, sealing_transfer_methods) != 0)
        return -1;
    Py_INCREF(&SealingTransferType);
    if (PyModule_AddObject(module, "SealingTransfer", (PyObject *)&SealingTransferType) != 0) {
        Py_DECREF(&SealingTransferType);
        return -1;
    }
    return 0;
}
