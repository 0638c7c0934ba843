/* crypto_binding.c — Python face of the private-room cryptography: the CPaceSession type, the
 * group-key wrap, in-place sealing and opening of transfers, and Ed25519. Every malformed input
 * becomes a ValueError that says what is wrong; no secret ever appears in a message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sodium.h>
#include <string.h>

#include "chunk_cipher.h"
#include "cpace.h"
#include "cpace_session.h"
#include "group_key.h"
#include "sealing_transfer.h"

static PyObject *CPaceMismatch; /* ValueError subclass: the secret parts differ */

/* ---- argument helpers ----------------------------------------------------------------- */

/* A bytes-like argument of an exact length. */
static int exact_bytes(Py_buffer *view, Py_ssize_t length, const char *what)
{
    if (view->len != length) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, not %zd", what, length, view->len);
        return -1;
    }
    return 0;
}

static PyObject *value_error(const char *why)
{
    PyErr_SetString(PyExc_ValueError, why ? why : "invalid input");
    return NULL;
}

/* ---- CPace primitives (for the draft's test vectors) ------------------------------------ */

static PyObject *py_cpace_generator(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer prs, ci, sid;
    if (!PyArg_ParseTuple(args, "y*y*y*:_cpace_generator", &prs, &ci, &sid))
        return NULL;
    uint8_t hash[64], g[CPACE_POINT_BYTES];
    cpace_generator_hash(hash, prs.buf, (size_t)prs.len, ci.buf, (size_t)ci.len, sid.buf,
                         (size_t)sid.len);
    cpace_calculate_generator(g, prs.buf, (size_t)prs.len, ci.buf, (size_t)ci.len, sid.buf,
                              (size_t)sid.len);
    PyBuffer_Release(&prs);
    PyBuffer_Release(&ci);
    PyBuffer_Release(&sid);
    return Py_BuildValue("(y#y#)", hash, (Py_ssize_t)sizeof hash, g, (Py_ssize_t)sizeof g);
}

static PyObject *py_cpace_scalar_mult_vfy(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer y, point;
    if (!PyArg_ParseTuple(args, "y*y*:_cpace_scalar_mult_vfy", &y, &point))
        return NULL;
    PyObject *result = NULL;
    uint8_t k[CPACE_POINT_BYTES];
    if (exact_bytes(&y, CPACE_SCALAR_BYTES, "scalar") == 0 &&
        exact_bytes(&point, CPACE_POINT_BYTES, "point") == 0) {
        if (cpace_shared_point(k, y.buf, point.buf) != 0)
            value_error("the point is not a valid ristretto255 encoding, or the product is the "
                        "identity element");
        else
            result = PyBytes_FromStringAndSize((const char *)k, sizeof k);
    }
    PyBuffer_Release(&y);
    PyBuffer_Release(&point);
    return result;
}

static PyObject *py_cpace_isk(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer sid, k, ya, ada, yb, adb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*:_cpace_isk", &sid, &k, &ya, &ada, &yb, &adb))
        return NULL;
    PyObject *result = NULL;
    if (exact_bytes(&k, CPACE_POINT_BYTES, "K") == 0 &&
        exact_bytes(&ya, CPACE_POINT_BYTES, "Ya") == 0 &&
        exact_bytes(&yb, CPACE_POINT_BYTES, "Yb") == 0) {
        uint8_t isk[CPACE_ISK_BYTES];
        cpace_isk(isk, sid.buf, (size_t)sid.len, k.buf, ya.buf, ada.buf, (size_t)ada.len, yb.buf,
                  adb.buf, (size_t)adb.len);
        result = PyBytes_FromStringAndSize((const char *)isk, sizeof isk);
    }
    PyBuffer_Release(&sid);
    PyBuffer_Release(&k);
    PyBuffer_Release(&ya);
    PyBuffer_Release(&ada);
    PyBuffer_Release(&yb);
    PyBuffer_Release(&adb);
    return result;
}

/* ---- CPaceSession ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD struct cpace_session session;
    int ready; /* __init__ succeeded: a bare __new__ must not run with an empty secret */
} CPaceSessionObject;

static void cpace_session_dealloc(CPaceSessionObject *self)
{
    sodium_memzero(&self->session, sizeof self->session);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int cpace_session_object_init(CPaceSessionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"role",         "secret", "room", "initiator_id",
                               "responder_id", "ad",     NULL};
    const char *role, *room, *initiator, *responder;
    Py_ssize_t room_len, initiator_len, responder_len;
    Py_buffer secret, ad = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sy*s#s#s#|y*:CPaceSession", keywords, &role,
                                     &secret, &room, &room_len, &initiator, &initiator_len,
                                     &responder, &responder_len, &ad))
        return -1;
    int rc = -1;
    self->ready = 0;
    enum cpace_role which;
    if (strcmp(role, "initiator") == 0)
        which = CPACE_INITIATOR;
    else if (strcmp(role, "responder") == 0)
        which = CPACE_RESPONDER;
    else {
        PyErr_SetString(PyExc_ValueError, "role must be 'initiator' or 'responder'");
        goto done;
    }
    const char *error = NULL;
    if (cpace_session_init(&self->session, which, secret.buf, (size_t)secret.len,
                           (const uint8_t *)room, (size_t)room_len, (const uint8_t *)initiator,
                           (size_t)initiator_len, (const uint8_t *)responder, (size_t)responder_len,
                           ad.buf, ad.buf ? (size_t)ad.len : 0, &error) != CPACE_OK) {
        value_error(error);
        goto done;
    }
    rc = 0;
    self->ready = 1;
done:
    PyBuffer_Release(&secret);
    if (ad.buf)
        PyBuffer_Release(&ad);
    return rc;
}

static int session_ready(CPaceSessionObject *self)
{
    if (!self->ready)
        PyErr_SetString(PyExc_ValueError, "CPaceSession was not initialised");
    return self->ready;
}

static PyObject *session_error(int code, const char *error)
{
    PyErr_SetString(code == CPACE_ERR_MISMATCH ? CPaceMismatch : PyExc_ValueError,
                    error ? error : "key exchange failed");
    return NULL;
}

static PyObject *cpace_session_start_py(CPaceSessionObject *self, PyObject *unused)
{
    (void)unused;
    if (!session_ready(self))
        return NULL;
    uint8_t out[CPACE_MSG_MAX];
    size_t out_len;
    const char *error = NULL;
    int rc = cpace_session_start(&self->session, out, &out_len, &error);
    if (rc != CPACE_OK)
        return session_error(rc, error);
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len);
}

static PyObject *cpace_session_receive_py(CPaceSessionObject *self, PyObject *arg)
{
    Py_buffer message;
    if (!session_ready(self))
        return NULL;
    if (PyObject_GetBuffer(arg, &message, PyBUF_SIMPLE) != 0)
        return NULL;
    uint8_t out[CPACE_MSG_MAX];
    size_t out_len;
    const char *error = NULL;
    int rc = cpace_session_receive(&self->session, message.buf, (size_t)message.len, out, &out_len,
                                   &error);
    PyBuffer_Release(&message);
    if (rc != CPACE_OK)
        return session_error(rc, error);
    if (out_len == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len);
}

static PyObject *cpace_session_derive_key_py(CPaceSessionObject *self, PyObject *arg)
{
    const char *label = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (label == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "label must be a str");
        return NULL;
    }
    uint8_t key[CPACE_KEY_BYTES];
    if (cpace_session_key(&self->session, label, key) != CPACE_OK)
        return value_error("no key before both confirmation tags are checked");
    PyObject *result = PyBytes_FromStringAndSize((const char *)key, sizeof key);
    sodium_memzero(key, sizeof key);
    return result;
}

static PyObject *cpace_session_get_state(CPaceSessionObject *self, void *closure)
{
    (void)closure;
    static const char *names[] = {"start", "sent_share", "await_confirm", "confirmed", "failed"};
    return PyUnicode_FromString(names[self->session.state]);
}

static PyMethodDef cpace_session_methods[] = {
    {"start", (PyCFunction)cpace_session_start_py, METH_NOARGS,
     "start() -> bytes: the initiator's first message (its share)."},
    {"receive", (PyCFunction)cpace_session_receive_py, METH_O,
     "receive(message) -> bytes | None: feed a received message; returns the answer to send, "
     "if any. Raises CPaceMismatch when the secret parts differ, ValueError when the message "
     "is malformed (wrong length, invalid point, identity element) or out of order."},
    {"derive_key", (PyCFunction)cpace_session_derive_key_py, METH_O,
     "derive_key(label) -> 32 bytes derived from the session key for one purpose; only once "
     "confirmed."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef cpace_session_getset[] = {
    {"state", (getter)cpace_session_get_state, NULL,
     "'start', 'sent_share', 'await_confirm', 'confirmed' or 'failed'.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject CPaceSessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "segmentation_suite.network._relayclient.CPaceSession",
    .tp_basicsize = sizeof(CPaceSessionObject),
    .tp_dealloc = (destructor)cpace_session_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CPaceSession(role, secret, room, initiator_id, responder_id, ad=b'')\n\n"
              "One CPace (ristretto255, SHA-512) run with explicit key confirmation; sans-I/O.",
    .tp_methods = cpace_session_methods,
    .tp_getset = cpace_session_getset,
    .tp_init = (initproc)cpace_session_object_init,
    .tp_new = PyType_GenericNew,
};

/* ---- group key ---------------------------------------------------------------------------- */

static PyObject *py_group_key_generate(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    uint8_t key[GROUP_KEY_BYTES];
    group_key_generate(key);
    PyObject *result = PyBytes_FromStringAndSize((const char *)key, sizeof key);
    sodium_memzero(key, sizeof key);
    return result;
}

static PyObject *py_group_key_wrap(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer wrap_key, key, sign_pk;
    struct group_key_context ctx;
    Py_ssize_t room_len, host_len, member_len;
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, "y*s#s#s#Iy*y*:group_key_wrap", &wrap_key, &ctx.room, &room_len,
                          &ctx.host_id, &host_len, &ctx.member_id, &member_len, &epoch, &key,
                          &sign_pk))
        return NULL;
    ctx.room_len = (size_t)room_len;
    ctx.host_id_len = (size_t)host_len;
    ctx.member_id_len = (size_t)member_len;
    ctx.epoch = epoch;
    PyObject *result = NULL;
    uint8_t out[GROUP_WRAPPED_BYTES];
    const char *error = NULL;
    if (exact_bytes(&wrap_key, GROUP_WRAP_KEY_BYTES, "wrap key") == 0 &&
        exact_bytes(&key, GROUP_KEY_BYTES, "group key") == 0 &&
        exact_bytes(&sign_pk, GROUP_SIGN_PK_BYTES, "signing public key") == 0) {
        if (group_key_wrap(out, wrap_key.buf, &ctx, key.buf, sign_pk.buf, &error) != 0)
            value_error(error);
        else
            result = PyBytes_FromStringAndSize((const char *)out, sizeof out);
    }
    PyBuffer_Release(&wrap_key);
    PyBuffer_Release(&key);
    PyBuffer_Release(&sign_pk);
    return result;
}

static PyObject *py_group_key_unwrap(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer wrap_key, wrapped;
    struct group_key_context ctx;
    Py_ssize_t room_len, host_len, member_len;
    unsigned int epoch;
    if (!PyArg_ParseTuple(args, "y*s#s#s#Iy*:group_key_unwrap", &wrap_key, &ctx.room, &room_len,
                          &ctx.host_id, &host_len, &ctx.member_id, &member_len, &epoch, &wrapped))
        return NULL;
    ctx.room_len = (size_t)room_len;
    ctx.host_id_len = (size_t)host_len;
    ctx.member_id_len = (size_t)member_len;
    ctx.epoch = epoch;
    PyObject *result = NULL;
    uint8_t key[GROUP_KEY_BYTES], sign_pk[GROUP_SIGN_PK_BYTES];
    const char *error = NULL;
    if (exact_bytes(&wrap_key, GROUP_WRAP_KEY_BYTES, "wrap key") == 0) {
        if (group_key_unwrap(key, sign_pk, wrap_key.buf, &ctx, wrapped.buf, (size_t)wrapped.len,
                             &error) != 0)
            value_error(error);
        else
            result = Py_BuildValue("(y#y#)", key, (Py_ssize_t)sizeof key, sign_pk,
                                   (Py_ssize_t)sizeof sign_pk);
    }
    sodium_memzero(key, sizeof key);
    PyBuffer_Release(&wrap_key);
    PyBuffer_Release(&wrapped);
    return result;
}

/* ---- sealed transfers --------------------------------------------------------------------- */

static int parse_context(struct sealed_context *ctx, const char *room, Py_ssize_t room_len,
                         const char *sender, Py_ssize_t sender_len, unsigned long long transfer_id,
                         int kind, unsigned int epoch)
{
    if (kind < 0 || kind > 255) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 to 255");
        return -1;
    }
    ctx->room = (const uint8_t *)room;
    ctx->room_len = (size_t)room_len;
    ctx->sender = (const uint8_t *)sender;
    ctx->sender_len = (size_t)sender_len;
    ctx->transfer_id = transfer_id;
    ctx->kind = (uint8_t)kind;
    ctx->epoch = epoch;
    return 0;
}

static PyObject *py_seal(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"key",       "room",         "sender",    "transfer_id",
                               "kind",      "epoch",        "plaintext", "sealed",
                               "algorithm", "segment_size", "digest",    NULL};
    Py_buffer key, plaintext, sealed;
    const char *room, *sender;
    Py_ssize_t room_len, sender_len;
    unsigned long long transfer_id;
    int kind, algorithm = 0, want_digest = 0;
    unsigned int epoch, segment_size = SEALED_DEFAULT_SEGMENT_SIZE;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*s#s#KiIy*w*|$iIp:seal", keywords, &key, &room,
                                     &room_len, &sender, &sender_len, &transfer_id, &kind, &epoch,
                                     &plaintext, &sealed, &algorithm, &segment_size, &want_digest))
        return NULL;
    PyObject *result = NULL;
    struct sealed_context ctx;
    uint8_t digest[SEALED_DIGEST_BYTES];
    const char *error = NULL;
    if (exact_bytes(&key, SEALED_KEY_BYTES, "key") != 0 ||
        parse_context(&ctx, room, room_len, sender, sender_len, transfer_id, kind, epoch) != 0)
        goto done;
    if (segment_size == 0 || segment_size > SEALED_MAX_SEGMENT_SIZE) {
        value_error("segment_size must be 1 byte to 1 GiB");
        goto done;
    }
    uint64_t need = sealed_size((uint64_t)plaintext.len, segment_size);
    if ((uint64_t)sealed.len != need) {
        PyErr_Format(PyExc_ValueError,
                     "sealed must be sealed_size(len(plaintext)) = %llu bytes, "
                     "not %zd",
                     (unsigned long long)need, sealed.len);
        goto done;
    }
    if (algorithm == 0)
        algorithm = sealed_preferred_algorithm();
    int rc;
    Py_BEGIN_ALLOW_THREADS rc =
        sealed_seal(key.buf, &ctx, (enum sealed_algorithm)algorithm, segment_size, plaintext.buf,
                    (uint64_t)plaintext.len, sealed.buf, want_digest ? digest : NULL, &error);
    Py_END_ALLOW_THREADS if (rc != 0)
    {
        value_error(error);
        goto done;
    }
    if (want_digest)
        result = PyBytes_FromStringAndSize((const char *)digest, sizeof digest);
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&plaintext);
    PyBuffer_Release(&sealed);
    return result;
}

/* ---- SealedOpener: opens a transfer while its chunks arrive ---------------------------- */

typedef struct {
    PyObject_HEAD struct sealed_opener opener;
    int ready;
} SealedOpenerObject;

static void sealed_opener_dealloc(SealedOpenerObject *self)
{
    if (self->ready)
        sealed_opener_free(&self->opener);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int sealed_opener_object_init(SealedOpenerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"key",   "room",       "sender", "transfer_id", "kind",
                               "epoch", "sealed_len", "digest", NULL};
    Py_buffer key;
    const char *room, *sender;
    Py_ssize_t room_len, sender_len;
    unsigned long long transfer_id, sealed_len;
    int kind, want_digest = 0;
    unsigned int epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*s#s#KiIK|$p:SealedOpener", keywords, &key,
                                     &room, &room_len, &sender, &sender_len, &transfer_id, &kind,
                                     &epoch, &sealed_len, &want_digest))
        return -1;
    int rc = -1;
    struct sealed_context ctx;
    const char *error = NULL;
    if (self->ready) {
        sealed_opener_free(&self->opener);
        self->ready = 0;
    }
    if (exact_bytes(&key, SEALED_KEY_BYTES, "key") == 0 &&
        parse_context(&ctx, room, room_len, sender, sender_len, transfer_id, kind, epoch) == 0) {
        if (sealed_opener_init(&self->opener, key.buf, &ctx, sealed_len, want_digest, &error) != 0)
            value_error(error);
        else
            rc = 0, self->ready = 1;
    }
    PyBuffer_Release(&key);
    return rc;
}

static PyObject *sealed_opener_feed_py(SealedOpenerObject *self, PyObject *args)
{
    Py_buffer sealed;
    unsigned long long available;
    if (!PyArg_ParseTuple(args, "w*K:feed", &sealed, &available))
        return NULL;
    PyObject *result = NULL;
    const char *error = NULL;
    if (!self->ready)
        value_error("SealedOpener was not initialised");
    else if ((uint64_t)sealed.len != self->opener.sealed_len || available > (uint64_t)sealed.len)
        value_error("feed() needs the whole receive buffer, of the transfer's size, and "
                    "available <= its length");
    else {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc =
            sealed_opener_feed(&self->opener, sealed.buf, (uint64_t)available, &error);
        Py_END_ALLOW_THREADS if (rc != 0) value_error(error);
        else result = PyBool_FromLong(self->opener.state == 2);
    }
    PyBuffer_Release(&sealed);
    return result;
}

static PyObject *sealed_opener_feed_from_py(SealedOpenerObject *self, PyObject *args)
{
    Py_buffer sealed, piece;
    if (!PyArg_ParseTuple(args, "w*y*:feed_from", &sealed, &piece))
        return NULL;
    PyObject *result = NULL;
    const char *error = NULL;
    if (!self->ready)
        value_error("SealedOpener was not initialised");
    else if ((uint64_t)sealed.len != self->opener.sealed_len)
        value_error("feed_from() needs the whole receive buffer, of the transfer's size");
    else {
        int rc;
        Py_BEGIN_ALLOW_THREADS rc = sealed_opener_feed_from(&self->opener, sealed.buf, piece.buf,
                                                            (uint64_t)piece.len, &error);
        Py_END_ALLOW_THREADS if (rc != 0) value_error(error);
        else result = PyBool_FromLong(self->opener.state == 2);
    }
    PyBuffer_Release(&sealed);
    PyBuffer_Release(&piece);
    return result;
}

static PyObject *sealed_opener_finish_py(SealedOpenerObject *self, PyObject *unused)
{
    (void)unused;
    uint8_t digest[SEALED_DIGEST_BYTES];
    const char *error = NULL;
    if (!self->ready)
        return value_error("SealedOpener was not initialised");
    int with_digest = self->opener.md != NULL;
    if (sealed_opener_finish(&self->opener, with_digest ? digest : NULL, &error) != 0)
        return value_error(error);
    if (with_digest)
        return PyBytes_FromStringAndSize((const char *)digest, sizeof digest);
    Py_RETURN_NONE;
}

static PyObject *sealed_opener_get_offset(SealedOpenerObject *self, void *closure)
{
    (void)closure;
    if (!self->ready || self->opener.state < 1)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(self->opener.data_offset);
}

static PyObject *sealed_opener_get_length(SealedOpenerObject *self, void *closure)
{
    (void)closure;
    if (!self->ready || self->opener.state < 1)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(self->opener.header.plaintext_len);
}

static PyMethodDef sealed_opener_methods[] = {
    {"feed", (PyCFunction)sealed_opener_feed_py, METH_VARARGS,
     "feed(sealed, available) -> bool: checks and decrypts in place every segment now complete "
     "in the first `available` bytes of the receive buffer; True once all are. ValueError (and "
     "the ciphertext region wiped) on anything that does not authenticate."},
    {"feed_from", (PyCFunction)sealed_opener_feed_from_py, METH_VARARGS,
     "feed_from(sealed, piece) -> bool: the next piece of the transfer (a chunk's payload): "
     "its bytes land at their place in the receive buffer `sealed`, segments wholly inside it "
     "decrypted straight from it (no separate copy). True once all segments are open."},
    {"finish", (PyCFunction)sealed_opener_finish_py, METH_NOARGS,
     "finish() -> digest or None: ValueError unless every segment was opened."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef sealed_opener_getset[] = {
    {"offset", (getter)sealed_opener_get_offset, NULL,
     "Where the plaintext starts in the buffer (None before the header and tags arrived).", NULL},
    {"length", (getter)sealed_opener_get_length, NULL, "Plaintext bytes (None before the header).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject SealedOpenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "segmentation_suite.network._relayclient.SealedOpener",
    .tp_basicsize = sizeof(SealedOpenerObject),
    .tp_dealloc = (destructor)sealed_opener_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc =
        "SealedOpener(key, room, sender, transfer_id, kind, epoch, sealed_len, *, "
        "digest=False)\n\nOpens one sealed transfer in place while its chunks arrive. Feed it from "
        "one thread at a time (the reassembly loop).",
    .tp_methods = sealed_opener_methods,
    .tp_getset = sealed_opener_getset,
    .tp_init = (initproc)sealed_opener_object_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *py_open_in_place(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"key",   "room",   "sender", "transfer_id", "kind",
                               "epoch", "sealed", "digest", NULL};
    Py_buffer key, sealed;
    const char *room, *sender;
    Py_ssize_t room_len, sender_len;
    unsigned long long transfer_id;
    int kind, want_digest = 0;
    unsigned int epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*s#s#KiIw*|$p:open_in_place", keywords, &key,
                                     &room, &room_len, &sender, &sender_len, &transfer_id, &kind,
                                     &epoch, &sealed, &want_digest))
        return NULL;
    PyObject *result = NULL;
    struct sealed_context ctx;
    struct sealed_header header;
    uint8_t digest[SEALED_DIGEST_BYTES];
    const char *error = NULL;
    if (exact_bytes(&key, SEALED_KEY_BYTES, "key") != 0 ||
        parse_context(&ctx, room, room_len, sender, sender_len, transfer_id, kind, epoch) != 0)
        goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = sealed_open(key.buf, &ctx, sealed.buf, (uint64_t)sealed.len,
                                            &header, want_digest ? digest : NULL, &error);
    Py_END_ALLOW_THREADS if (rc != 0)
    {
        value_error(error);
        goto done;
    }
    unsigned long long offset = sealed_data_offset(header.plaintext_len, header.segment_size);
    if (want_digest)
        result = Py_BuildValue("(KKy#)", offset, (unsigned long long)header.plaintext_len, digest,
                               (Py_ssize_t)sizeof digest);
    else
        result = Py_BuildValue("(KK)", offset, (unsigned long long)header.plaintext_len);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&sealed);
    return result;
}

static PyObject *py_sealed_header(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer sealed;
    if (PyObject_GetBuffer(arg, &sealed, PyBUF_SIMPLE) != 0)
        return NULL;
    struct sealed_header header;
    const char *error = NULL;
    PyObject *result = NULL;
    if (sealed_parse_header(&header, sealed.buf, (uint64_t)sealed.len, &error) != 0)
        value_error(error);
    else
        result = Py_BuildValue("{sisIsIsKsK}", "algorithm", (int)header.algorithm, "epoch",
                               header.epoch, "segment_size", header.segment_size, "plaintext_len",
                               (unsigned long long)header.plaintext_len, "segment_count",
                               (unsigned long long)header.segment_count);
    PyBuffer_Release(&sealed);
    return result;
}

static PyObject *py_sealed_size(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned long long length;
    unsigned int segment_size = SEALED_DEFAULT_SEGMENT_SIZE;
    if (!PyArg_ParseTuple(args, "K|I:sealed_size", &length, &segment_size))
        return NULL;
    if (segment_size == 0)
        return value_error("segment_size must be at least 1");
    return PyLong_FromUnsignedLongLong(sealed_size(length, segment_size));
}

static PyObject *py_aead_raw(PyObject *module, PyObject *args)
{
    (void)module;
    int algorithm, encrypt;
    Py_buffer key, nonce, ad, data, tag;
    if (!PyArg_ParseTuple(args, "ipy*y*y*w*w*:_aead_raw", &algorithm, &encrypt, &key, &nonce, &ad,
                          &data, &tag))
        return NULL;
    PyObject *result = NULL;
    if (exact_bytes(&key, SEALED_KEY_BYTES, "key") == 0 && exact_bytes(&nonce, 12, "nonce") == 0 &&
        exact_bytes(&tag, SEALED_TAG_BYTES, "tag") == 0) {
        int rc = sealed_aead_raw((enum sealed_algorithm)algorithm, encrypt, key.buf, nonce.buf,
                                 ad.buf, (size_t)ad.len, data.buf, (size_t)data.len, tag.buf);
        if (rc == -2)
            value_error("authentication failed");
        else if (rc != 0)
            value_error("bad algorithm or length");
        else
            result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&ad);
    PyBuffer_Release(&data);
    PyBuffer_Release(&tag);
    return result;
}

/* ---- Ed25519 ----------------------------------------------------------------------------- */

static PyObject *py_sign_keypair(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer seed = {0};
    if (!PyArg_ParseTuple(args, "|y*:sign_keypair", &seed))
        return NULL;
    uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    PyObject *result = NULL;
    if (seed.buf && exact_bytes(&seed, crypto_sign_SEEDBYTES, "seed") != 0)
        goto done;
    if (seed.buf)
        crypto_sign_seed_keypair(pk, sk, seed.buf);
    else
        crypto_sign_keypair(pk, sk);
    result = Py_BuildValue("(y#y#)", pk, (Py_ssize_t)sizeof pk, sk, (Py_ssize_t)sizeof sk);
done:
    sodium_memzero(sk, sizeof sk);
    if (seed.buf)
        PyBuffer_Release(&seed);
    return result;
}

static PyObject *py_sign_detached(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer sk, message;
    if (!PyArg_ParseTuple(args, "y*y*:sign_detached", &sk, &message))
        return NULL;
    PyObject *result = NULL;
    uint8_t signature[crypto_sign_BYTES];
    if (exact_bytes(&sk, crypto_sign_SECRETKEYBYTES, "secret key") == 0) {
        crypto_sign_detached(signature, NULL, message.buf, (unsigned long long)message.len, sk.buf);
        result = PyBytes_FromStringAndSize((const char *)signature, sizeof signature);
    }
    PyBuffer_Release(&sk);
    PyBuffer_Release(&message);
    return result;
}

static PyObject *py_sign_verify(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer pk, message, signature;
    if (!PyArg_ParseTuple(args, "y*y*y*:sign_verify", &pk, &message, &signature))
        return NULL;
    PyObject *result = NULL;
    if (exact_bytes(&pk, crypto_sign_PUBLICKEYBYTES, "public key") == 0 &&
        exact_bytes(&signature, crypto_sign_BYTES, "signature") == 0) {
        if (crypto_sign_verify_detached(signature.buf, message.buf, (unsigned long long)message.len,
                                        pk.buf) != 0)
            value_error("the signature does not verify: not signed by the room's host");
        else
            result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&pk);
    PyBuffer_Release(&message);
    PyBuffer_Release(&signature);
    return result;
}

static PyMethodDef crypto_methods[] = {
    {"_cpace_generator", py_cpace_generator, METH_VARARGS,
     "_cpace_generator(prs, ci, sid) -> (generator hash, encoded g). Test vectors only."},
    {"_cpace_scalar_mult_vfy", py_cpace_scalar_mult_vfy, METH_VARARGS,
     "_cpace_scalar_mult_vfy(y, X) -> encoded y*X; ValueError for invalid X or the identity."},
    {"_cpace_isk", py_cpace_isk, METH_VARARGS,
     "_cpace_isk(sid, K, Ya, ADa, Yb, ADb) -> ISK (initiator-responder transcript)."},
    {"group_key_generate", py_group_key_generate, METH_NOARGS,
     "group_key_generate() -> 32 random bytes."},
    {"group_key_wrap", py_group_key_wrap, METH_VARARGS,
     "group_key_wrap(wrap_key, room, host_id, member_id, epoch, key, sign_pk) -> 104 bytes."},
    {"group_key_unwrap", py_group_key_unwrap, METH_VARARGS,
     "group_key_unwrap(wrap_key, room, host_id, member_id, epoch, wrapped) -> (key, sign_pk)."},
    {"seal", (PyCFunction)(void (*)(void))py_seal, METH_VARARGS | METH_KEYWORDS,
     "seal(key, room, sender, transfer_id, kind, epoch, plaintext, sealed, *, algorithm=0, "
     "segment_size=1 MiB, digest=False) -> digest or None: writes the sealed transfer into the "
     "writable buffer `sealed` (sealed_size(len(plaintext)) bytes). plaintext may be the "
     "sealed buffer's data region (in place) or another buffer (the encryption is the copy)."},
    {"open_in_place", (PyCFunction)(void (*)(void))py_open_in_place, METH_VARARGS | METH_KEYWORDS,
     "open_in_place(key, room, sender, transfer_id, kind, epoch, sealed, *, digest=False) -> "
     "(offset, length[, digest]): decrypts the writable sealed transfer in place; ValueError "
     "(and the ciphertext wiped) if anything does not authenticate."},
    {"sealed_header", py_sealed_header, METH_O,
     "sealed_header(sealed) -> dict of algorithm, epoch, segment_size, plaintext_len, "
     "segment_count; ValueError if malformed."},
    {"sealed_size", py_sealed_size, METH_VARARGS,
     "sealed_size(length, segment_size=1 MiB) -> size of the sealed transfer of length bytes."},
    {"_aead_raw", py_aead_raw, METH_VARARGS,
     "_aead_raw(algorithm, encrypt, key, nonce, ad, data, tag): one AEAD call in place, for "
     "published test vectors."},
    {"sign_keypair", py_sign_keypair, METH_VARARGS,
     "sign_keypair(seed=None) -> (public key, secret key), Ed25519."},
    {"sign_detached", py_sign_detached, METH_VARARGS,
     "sign_detached(secret_key, message) -> 64-byte Ed25519 signature."},
    {"sign_verify", py_sign_verify, METH_VARARGS,
     "sign_verify(public_key, message, signature): ValueError unless it verifies."},
    {NULL, NULL, 0, NULL}};

int crypto_module_init(PyObject *module)
{
    if (cpace_init() != 0) {
        PyErr_SetString(PyExc_ImportError, "libsodium failed to initialise");
        return -1;
    }
    if (PyType_Ready(&CPaceSessionType) != 0)
        return -1;
    if (PyModule_AddFunctions(module, crypto_methods) != 0)
        return -1;
    if (PyType_Ready(&SealedOpenerType) != 0 || sealing_transfer_init(module) != 0)
        return -1;
    Py_INCREF(&SealedOpenerType);
    if (PyModule_AddObject(module, "SealedOpener", (PyObject *)&SealedOpenerType) != 0) {
        Py_DECREF(&SealedOpenerType);
        return -1;
    }
    Py_INCREF(&CPaceSessionType);
    if (PyModule_AddObject(module, "CPaceSession", (PyObject *)&CPaceSessionType) != 0) {
        Py_DECREF(&CPaceSessionType);
        return -1;
    }
    CPaceMismatch = PyErr_NewExceptionWithDoc(
        "segmentation_suite.network._relayclient.CPaceMismatch",
        "The key exchange failed its confirmation: the code's secret part does not match.",
        PyExc_ValueError, NULL);
    if (CPaceMismatch == NULL || PyModule_AddObject(module, "CPaceMismatch", CPaceMismatch) != 0)
        return -1;
    Py_INCREF(CPaceMismatch);
    if (PyModule_AddIntConstant(module, "SEALED_AES_256_GCM", SEALED_AES_256_GCM) != 0 ||
        PyModule_AddIntConstant(module, "SEALED_CHACHA20_POLY1305", SEALED_CHACHA20_POLY1305) ||
        PyModule_AddIntConstant(module, "SEALED_HEADER_BYTES", SEALED_HEADER_BYTES) != 0 ||
        PyModule_AddIntConstant(module, "SEALED_TAG_BYTES", SEALED_TAG_BYTES) != 0 ||
        PyModule_AddIntConstant(module, "SEALED_DEFAULT_SEGMENT_SIZE",
                                SEALED_DEFAULT_SEGMENT_SIZE) != 0 ||
        PyModule_AddIntConstant(module, "SEALED_PREFERRED_ALGORITHM",
                                sealed_preferred_algorithm()) != 0)
        return -1;
    return 0;
}
