/* transport_connection.c — the Python face of the transport: connect(), the Connection type
 * (send_text, send_binary, send_chunked, recv, close) and the buffer type received binary
 * messages arrive in. Every wait happens with the GIL released. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "sealing_transfer.h"
#include "transport.h"
#include "transport_engine.h"
#include "transport_service.h"

#define DEFAULT_MAX_MESSAGE_SIZE (256ull * 1024 * 1024)
#define DEFAULT_RECEIVE_QUEUE_SIZE (64ull * 1024 * 1024)
#define CLOSE_REASON_MAX_BYTES 123

static PyObject *ConnectionClosed; /* ConnectionError subclass with .code and .reason */

typedef struct {
    PyObject_HEAD struct client_connection *conn;
    PyObject *url;
} ConnectionObject;

/* One received binary message: owns the block the service thread assembled it in, and lends
 * it out through the buffer protocol, so the codec views the bytes where they arrived. */
typedef struct {
    PyObject_HEAD unsigned char *data;
    Py_ssize_t size;
    size_t capacity;
} MessageBufferObject;

/* ---- the received-message buffer ---------------------------------------------------------- */

static void message_buffer_dealloc(MessageBufferObject *self)
{
    message_block_release(self->data, self->capacity);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int message_buffer_getbuffer(MessageBufferObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 0, flags);
}

static PyBufferProcs message_buffer_as_buffer = {
    .bf_getbuffer = (getbufferproc)message_buffer_getbuffer,
};

static PyTypeObject MessageBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name =
        "segmentation_suite.network._relayclient.MessageBuffer",
    .tp_basicsize = sizeof(MessageBufferObject),
    .tp_dealloc = (destructor)message_buffer_dealloc,
    .tp_as_buffer = &message_buffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The memory of one received binary message (view it with memoryview).",
};

/* One whole chunked transfer, reassembled by the service thread: its payload through the buffer
 * protocol (64-byte aligned, viewed where it was written) and chunk 0's frame header. */
typedef struct {
    PyObject_HEAD unsigned char *data;
    Py_ssize_t size;
    size_t capacity;
    PyObject *frame_header;           /* bytes */
    struct completed_transfer opened; /* private rooms: how it was opened (payload unused) */
} TransferObject;

static PyObject *transport_parse_frame_header(PyObject *module, PyObject *data);

static void transfer_dealloc(TransferObject *self)
{
    message_block_release(self->data, self->capacity);
    Py_XDECREF(self->frame_header);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int transfer_getbuffer(TransferObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 0, flags);
}

static Py_ssize_t transfer_length(TransferObject *self)
{
    return self->size;
}

static PyObject *transfer_get_header(TransferObject *self, void *unused)
{
    (void)unused;
    return transport_parse_frame_header(NULL, self->frame_header);
}

/* (offset, length, key epoch, digest or None) of the plaintext opened as it landed, or None. */
static PyObject *transfer_get_opened(TransferObject *self, void *unused)
{
    (void)unused;
    const struct completed_transfer *o = &self->opened;
    if (o->opened != TRANSFER_OPENED)
        Py_RETURN_NONE;
    if (!o->has_digest)
        return Py_BuildValue("(KKkO)", (unsigned long long)o->plaintext_offset,
                             (unsigned long long)o->plaintext_size, (unsigned long)o->epoch,
                             Py_None);
    return Py_BuildValue("(KKky#)", (unsigned long long)o->plaintext_offset,
                         (unsigned long long)o->plaintext_size, (unsigned long)o->epoch, o->digest,
                         (Py_ssize_t)SEALED_DIGEST_BYTES);
}

static PyObject *transfer_get_open_error(TransferObject *self, void *unused)
{
    (void)unused;
    if (self->opened.opened != TRANSFER_REFUSED)
        Py_RETURN_NONE;
    return PyUnicode_FromString(self->opened.open_error ? self->opened.open_error
                                                        : "the transfer failed to open");
}

static PyBufferProcs transfer_as_buffer = {.bf_getbuffer = (getbufferproc)transfer_getbuffer};
static PySequenceMethods transfer_as_sequence = {.sq_length = (lenfunc)transfer_length};
static PyGetSetDef transfer_getset[] = {
    {"header", (getter)transfer_get_header, NULL,
     "FrameHeader of chunk 0: kind, transfer_id, sender, recipients, chunk_count, total_size",
     NULL},
    {"opened", (getter)transfer_get_opened, NULL,
     "Private rooms (set_transfer_key): (offset, length, epoch, digest or None) of the plaintext "
     "this buffer holds, opened segment by segment as it landed; None when it holds the bytes "
     "as sent. The sender, replays and a global model's signature are still the caller's to check.",
     NULL},
    {"open_error", (getter)transfer_get_open_error, NULL,
     "Why the transfer failed to open under the connection's key (its bytes wiped), or None.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TransferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "segmentation_suite.network._relayclient.Transfer",
    .tp_basicsize = sizeof(TransferObject),
    .tp_dealloc = (destructor)transfer_dealloc,
    .tp_as_buffer = &transfer_as_buffer,
    .tp_as_sequence = &transfer_as_sequence,
    .tp_getset = transfer_getset,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A whole chunked transfer (connect(reassemble_transfers=True)): its payload through "
              "the buffer protocol, where it was reassembled, and `header`.",
};

/* ---- waiting with the GIL released -------------------------------------------------------- */

static struct timespec monotonic_timespec(double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    return ts;
}

/* Waits until `done` holds (checked under conn->lock) or the monotonic `deadline` passes
 * (deadline < 0: no limit). Wakes every 100 ms so that Ctrl-C reaches a waiting main thread.
 * Returns 1 when done, 0 on timeout, -1 with a Python exception set by a signal handler. */
/* The thread that ran _shutdown (the main thread, from atexit). */
static unsigned long shutdown_thread;

/* Called without the GIL. At interpreter exit only daemon threads are still waiting here (the
 * others were joined before atexit ran _shutdown). Returning would raise ConnectionClosed in them
 * while the interpreter finalizes, and the traceback they print races its teardown of
 * sys.stderr: "Fatal Python error: _enter_buffered_busy". CPython freezes daemon threads at
 * exit anyway; this freezes them a step earlier, holding nothing. */
static void park_if_exiting(void)
{
    if (!service_exiting() || PyThread_get_thread_ident() == shutdown_thread)
        return;
    for (;;)
        pause();
}

static int wait_until(struct client_connection *conn,
                      int (*done)(struct client_connection *, void *), void *argument,
                      double deadline)
{
    for (;;) {
        int satisfied = 0;
        {
            PyThreadState *released = PyEval_SaveThread();
            pthread_mutex_lock(&conn->lock);
            double slice_end = transport_monotonic_seconds() + 0.1;
            if (deadline >= 0 && deadline < slice_end)
                slice_end = deadline;
            struct timespec until = monotonic_timespec(slice_end);
            while (!(satisfied = done(conn, argument)))
                if (pthread_cond_timedwait(&conn->changed, &conn->lock, &until) == ETIMEDOUT)
                    break;
            pthread_mutex_unlock(&conn->lock);
            park_if_exiting();
            PyEval_RestoreThread(released);
        }
        if (satisfied)
            return 1;
        if (deadline >= 0 && transport_monotonic_seconds() >= deadline)
            return 0;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

static int is_not_connecting(struct client_connection *conn, void *unused)
{
    (void)unused;
    return conn->state != CONNECTION_CONNECTING;
}

static int is_closed(struct client_connection *conn, void *unused)
{
    (void)unused;
    return conn->state == CONNECTION_CLOSED;
}

static int request_finished(struct client_connection *conn, void *request)
{
    (void)conn;
    return ((struct send_request *)request)->finished;
}

static int message_or_closed(struct client_connection *conn, void *unused)
{
    (void)unused;
    return conn->received_head != NULL || conn->state == CONNECTION_CLOSED;
}

static double deadline_after(PyObject *timeout, const char *name, int *error)
{
    *error = 0;
    if (timeout == Py_None)
        return -1;
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1 && PyErr_Occurred()) {
        *error = 1;
        return 0;
    }
    if (!(seconds >= 0) || isinf(seconds)) {
        PyErr_Format(PyExc_ValueError, "%s must be a finite number of seconds >= 0, or None", name);
        *error = 1;
        return 0;
    }
    return transport_monotonic_seconds() + seconds;
}

/* ---- errors ------------------------------------------------------------------------------- */

/* Raises ConnectionClosed with `code` and `reason` attributes (None while still closing). */
static PyObject *raise_closed(struct client_connection *conn, const char *doing)
{
    int closed, code;
    char reason[sizeof conn->close_reason];
    {
        PyThreadState *released = PyEval_SaveThread();
        pthread_mutex_lock(&conn->lock);
        closed = conn->state == CONNECTION_CLOSED;
        code = conn->close_code;
        memcpy(reason, conn->close_reason, sizeof reason);
        pthread_mutex_unlock(&conn->lock);
        PyEval_RestoreThread(released);
    }

    PyObject *reason_text =
        closed ? PyUnicode_DecodeUTF8(reason, strlen(reason), "replace") : Py_NewRef(Py_None);
    PyObject *code_object = closed ? PyLong_FromLong(code) : Py_NewRef(Py_None);
    PyObject *message = NULL, *exception = NULL;
    if (reason_text && code_object) {
        message = closed ? PyUnicode_FromFormat("%s: the connection is closed (%d %U)", doing, code,
                                                reason_text)
                         : PyUnicode_FromFormat("%s: the connection is closing", doing);
    }
    if (message)
        exception = PyObject_CallOneArg(ConnectionClosed, message);
    if (exception && PyObject_SetAttrString(exception, "code", code_object) == 0 &&
        PyObject_SetAttrString(exception, "reason", reason_text) == 0)
        PyErr_SetObject(ConnectionClosed, exception);
    Py_XDECREF(exception);
    Py_XDECREF(message);
    Py_XDECREF(code_object);
    Py_XDECREF(reason_text);
    return NULL;
}

/* ---- the Connection type ------------------------------------------------------------------ */

/* Asks for a close without waiting: from close() before it waits, and from dealloc. */
static void request_close(struct client_connection *conn, int code, const char *reason)
{
    pthread_mutex_lock(&conn->lock);
    if (conn->state == CONNECTION_CONNECTING) {
        conn->abort_requested = 1;
    } else if (conn->state == CONNECTION_OPEN && !conn->close_requested) {
        conn->close_requested = 1;
        conn->close_requested_code = code;
        snprintf(conn->close_requested_reason, sizeof conn->close_requested_reason, "%s", reason);
    }
    pthread_mutex_unlock(&conn->lock);
    service_notify(conn);
}

static void connection_dealloc(ConnectionObject *self)
{
    if (self->conn) {
        /* Collected while open: close in the background; the service thread keeps its own
         * reference until the socket is gone. */
        request_close(self->conn, LWS_CLOSE_STATUS_GOINGAWAY, "connection object released");
        connection_release(self->conn);
    }
    Py_XDECREF(self->url);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Takes `request` back from the send queue and marks it finished (the caller holds conn->lock):
 * once it is unlinked the service thread never reads the caller's buffer again. With a
 * `close_reason` it also asks for a close (unless one is asked for already), because a message
 * cut in the middle cannot be completed with other bytes. */
static void take_back_send(struct client_connection *conn, struct send_request *request,
                           int close_code, const char *close_reason)
{
    struct send_request **link = &conn->send_head, *previous = NULL;
    while (*link && *link != request) {
        previous = *link;
        link = &(*link)->next;
    }
    if (*link) {
        *link = request->next;
        if (conn->send_tail == request)
            conn->send_tail = previous;
    }
    if (close_reason && !conn->close_requested) {
        conn->close_requested = 1;
        conn->close_requested_code = close_code;
        snprintf(conn->close_requested_reason, sizeof conn->close_requested_reason, "%s",
                 close_reason);
    }
    request->finished = 1;
}

/* A transfer sealed while it is sent: seals chunk after chunk on this thread (GIL released)
 * while the service thread sends the ones before. A cipher failure takes the request back and
 * closes the connection: half a transfer is never completed with bytes that were not sealed. */
static int seal_ahead(struct client_connection *conn, struct send_request *request)
{
    const struct chunk_plan *plan = request->plan;
    const char *error = NULL;
    int failed = 0;
    PyThreadState *released = PyEval_SaveThread();
    for (uint32_t chunk = 0; chunk < request->message_count && !failed; chunk++) {
        uint64_t end = (uint64_t)(chunk + 1) * plan->payload_per_chunk;
        failed = sealing_transfer_through(request->sealing, end, &error) != 0;
        pthread_mutex_lock(&conn->lock);
        if (failed && !request->finished) {
            take_back_send(conn, request, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "sealing failed");
            request->failed = 1;
        } else if (!failed) {
            request->messages_ready = chunk + 1;
        }
        pthread_mutex_unlock(&conn->lock);
        service_notify(conn);
    }
    PyEval_RestoreThread(released);
    if (failed)
        PyErr_Format(PyExc_ValueError, "sealing the transfer failed: %s",
                     error ? error : "the cipher failed");
    return failed ? -1 : 0;
}

/* Queues `request`, waits until the service thread has handed all of it to lws, and undoes it
 * cleanly if a signal (Ctrl-C) interrupts the wait. */
static PyObject *run_send(ConnectionObject *self, struct send_request *request)
{
    struct client_connection *conn = self->conn;
    int accepted;
    {
        PyThreadState *released = PyEval_SaveThread();
        pthread_mutex_lock(&conn->lock);
        accepted = conn->state == CONNECTION_OPEN && !conn->close_requested;
        if (accepted) {
            if (conn->send_tail)
                conn->send_tail->next = request;
            else
                conn->send_head = request;
            conn->send_tail = request;
        }
        pthread_mutex_unlock(&conn->lock);
        if (accepted)
            service_notify(conn);
        PyEval_RestoreThread(released);
    }
    if (!accepted)
        return raise_closed(conn, "cannot send");
    if (request->sealing && seal_ahead(conn, request) != 0)
        return NULL;

    int waited = wait_until(conn, request_finished, request, -1);
    if (waited < 0) {
        /* Interrupted (Ctrl-C): the caller's buffer goes back to the caller. */
        {
            PyThreadState *released = PyEval_SaveThread();
            pthread_mutex_lock(&conn->lock);
            if (!request->finished)
                take_back_send(conn, request, LWS_CLOSE_STATUS_GOINGAWAY,
                               request->message_offset > 0 ? "send interrupted" : NULL);
            pthread_mutex_unlock(&conn->lock);
            service_notify(conn);
            PyEval_RestoreThread(released);
        }
        return NULL;
    }
    if (request->failed)
        return raise_closed(conn, "send failed");
    Py_RETURN_NONE;
}

static PyObject *connection_send_text(ConnectionObject *self, PyObject *text)
{
    if (!PyUnicode_Check(text))
        return PyErr_Format(PyExc_TypeError, "send_text() takes a str, not %.100s",
                            Py_TYPE(text)->tp_name);
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size); /* cached in the str: no copy */
    if (!utf8)
        return NULL;
    struct send_request request = {
        .is_text = 1,
        .payload = (const unsigned char *)utf8,
        .payload_size = (size_t)size,
        .message_count = 1,
    };
    return run_send(self, &request);
}

static PyObject *connection_send_binary(ConnectionObject *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    struct send_request request = {
        .payload = view.buf,
        .payload_size = (size_t)view.len,
        .message_count = 1,
    };
    PyObject *result = run_send(self, &request);
    PyBuffer_Release(&view);
    return result;
}

/* Reads a str as a frame id (1-128 bytes of UTF-8); `what` names it in the error. */
static int frame_id_from(PyObject *text, struct frame_id *id, const char *what)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what, Py_TYPE(text)->tp_name);
        return -1;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (!utf8)
        return -1;
    if (size < 1 || size > FRAME_ID_MAX_LENGTH) {
        PyErr_Format(PyExc_ValueError, "%s must be 1 to %d bytes of UTF-8, got %zd", what,
                     FRAME_ID_MAX_LENGTH, size);
        return -1;
    }
    id->bytes = utf8;
    id->length = (uint8_t)size;
    return 0;
}

/* The ids of a chunk plan, read from Python: send_chunked() and chunk_count() share them. */
struct plan_ids {
    PyObject *recipient_list; /* keeps the strs the ids point into alive */
    struct frame_id sender;
    struct frame_id *recipients;
    size_t recipient_count;
};

static void plan_ids_release(struct plan_ids *ids)
{
    PyMem_Free(ids->recipients);
    Py_XDECREF(ids->recipient_list);
}

/* Reads `sender` (a str) and `recipients` (a sequence of str), and checks `chunk_size`.
 * Returns 0, or -1 with an exception set (and nothing to release). */
static int plan_ids_read(struct plan_ids *ids, PyObject *sender, PyObject *recipients,
                         Py_ssize_t chunk_size)
{
    memset(ids, 0, sizeof *ids);
    if (chunk_size <= 0) {
        PyErr_Format(PyExc_ValueError, "chunk_size must be positive, got %zd", chunk_size);
        return -1;
    }
    if (PyUnicode_Check(recipients)) {
        PyErr_SetString(PyExc_TypeError, "recipients must be a sequence of str, not a str");
        return -1;
    }
    ids->recipient_list = PySequence_Fast(recipients, "recipients must be a sequence of str");
    if (!ids->recipient_list)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(ids->recipient_list);
    ids->recipient_count = (size_t)count;
    ids->recipients = PyMem_Calloc(count ? (size_t)count : 1, sizeof *ids->recipients);
    if (!ids->recipients) {
        PyErr_NoMemory();
        goto fail;
    }
    if (frame_id_from(sender, &ids->sender, "sender") < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < count; i++)
        if (frame_id_from(PySequence_Fast_GET_ITEM(ids->recipient_list, i), &ids->recipients[i],
                          "each recipient") < 0)
            goto fail;
    return 0;
fail:
    plan_ids_release(ids);
    return -1;
}

/* framing_plan() for `ids`; 0, or -1 with ValueError set. */
static int plan_chunks(struct chunk_plan *plan, int kind, uint64_t transfer_id,
                       const struct plan_ids *ids, uint64_t total_size, Py_ssize_t chunk_size)
{
    const char *error = "kind must be one of the FRAME_KIND_* values";
    if (kind < 0 || kind > 255 ||
        framing_plan(plan, (uint8_t)kind, transfer_id, ids->sender, ids->recipients,
                     ids->recipient_count, total_size, (size_t)chunk_size, &error) < 0) {
        PyErr_SetString(PyExc_ValueError, error);
        return -1;
    }
    return 0;
}

static PyObject *connection_send_chunked(ConnectionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"kind", "transfer_id", "sender", "recipients",
                               "data", "chunk_size",  NULL};
    int kind;
    unsigned long long transfer_id;
    PyObject *sender, *recipients, *data;
    Py_ssize_t chunk_size = FRAMING_DEFAULT_MESSAGE_SIZE;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iKUOO|n:send_chunked", keywords, &kind,
                                     &transfer_id, &sender, &recipients, &data, &chunk_size))
        return NULL;
    struct plan_ids ids;
    if (plan_ids_read(&ids, sender, recipients, chunk_size) < 0)
        return NULL;
    PyObject *result = NULL;
    Py_buffer view = {0};
    struct chunk_plan plan;
    const unsigned char *bytes;
    size_t size;
    void *sealing = NULL;
    if (sealing_transfer_view(data, &bytes, &size, &sealing)) {
        view.buf = (void *)bytes; /* `data` (held by our caller) keeps it alive */
        view.len = (Py_ssize_t)size;
    } else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    if (plan_chunks(&plan, kind, transfer_id, &ids, (uint64_t)view.len, chunk_size) < 0)
        goto done;
    struct send_request request = {
        .payload = view.buf,
        .payload_size = (size_t)view.len,
        .plan = &plan,
        .message_count = plan.chunk_count,
        .sealing = sealing,
    };
    result = run_send(self, &request);
    if (result) {
        Py_DECREF(result);
        result = PyLong_FromUnsignedLong(plan.chunk_count);
    }
done:
    if (view.obj)
        PyBuffer_Release(&view);
    plan_ids_release(&ids);
    return result;
}

static PyObject *connection_recv(ConnectionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:recv", keywords, &timeout))
        return NULL;
    int bad;
    double deadline = deadline_after(timeout, "timeout", &bad);
    if (bad)
        return NULL;
    struct client_connection *conn = self->conn;
    int waited = wait_until(conn, message_or_closed, NULL, deadline);
    if (waited < 0)
        return NULL;

    struct received_message *message = NULL;
    int resume = 0;
    {
        PyThreadState *released = PyEval_SaveThread();
        pthread_mutex_lock(&conn->lock);
        message = conn->received_head;
        if (message) {
            conn->received_head = message->next;
            if (!conn->received_head)
                conn->received_tail = NULL;
            conn->received_bytes -= message->size;
            /* Resume reading at half the limit, not just below it, so the socket is not toggled
             * on and off for every message. */
            if (conn->receiving_paused && !conn->resume_receiving &&
                conn->received_bytes <= conn->receive_queue_limit / 2) {
                conn->resume_receiving = 1;
                resume = 1;
            }
        }
        pthread_mutex_unlock(&conn->lock);
        if (resume)
            service_notify(conn);
        PyEval_RestoreThread(released);
    }

    if (!message) {
        if (waited == 0)
            return PyErr_Format(PyExc_TimeoutError, "no message within the timeout");
        return raise_closed(conn, "recv");
    }

    PyObject *payload;
    if (message->frame_header) {
        TransferObject *transfer = PyObject_New(TransferObject, &TransferType);
        PyObject *header = PyBytes_FromStringAndSize((const char *)message->frame_header,
                                                     (Py_ssize_t)message->frame_header_size);
        if (!transfer || !header) {
            Py_XDECREF(header);
            if (transfer) {
                transfer->data = NULL;
                transfer->capacity = 0;
                transfer->frame_header = NULL;
                Py_DECREF(transfer);
            }
            received_message_free(message);
            return NULL;
        }
        transfer->data = message->data;
        transfer->size = (Py_ssize_t)message->size;
        transfer->capacity = message->capacity;
        transfer->frame_header = header;
        transfer->opened = message->opened;
        message->data = NULL; /* the Transfer owns it now */
        payload = (PyObject *)transfer;
    } else if (message->is_binary) {
        MessageBufferObject *buffer = PyObject_New(MessageBufferObject, &MessageBufferType);
        if (!buffer) {
            received_message_free(message);
            return NULL;
        }
        buffer->data = message->data;
        buffer->size = (Py_ssize_t)message->size;
        buffer->capacity = message->capacity;
        payload = PyMemoryView_FromObject((PyObject *)buffer);
        Py_DECREF(buffer);
    } else {
        payload =
            PyUnicode_DecodeUTF8((const char *)message->data, (Py_ssize_t)message->size, "strict");
        message_block_release(message->data, message->capacity);
    }
    int is_binary = message->is_binary;
    message->data = NULL; /* handed on (or released) above */
    received_message_free(message);
    if (!payload)
        return NULL;
    PyObject *result = Py_BuildValue("(ON)", is_binary ? Py_True : Py_False, payload);
    return result;
}

static PyObject *connection_set_transfer_key(ConnectionObject *self, PyObject *args,
                                             PyObject *kwargs)
{
    static char *keywords[] = {"key", "room", "epoch", NULL};
    Py_buffer key = {0};
    const char *room = "";
    Py_ssize_t room_len = 0;
    unsigned long epoch = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "z*|s#k:set_transfer_key", keywords, &key, &room,
                                     &room_len, &epoch))
        return NULL;
    struct transfer_key room_key;
    memset(&room_key, 0, sizeof room_key);
    if (key.buf) {
        if (key.len != SEALED_KEY_BYTES || room_len < 1 || room_len > 255 || epoch > UINT32_MAX) {
            PyBuffer_Release(&key);
            return PyErr_Format(PyExc_ValueError,
                                "set_transfer_key needs a %d-byte key, a room code of 1 to 255 "
                                "bytes and a 32-bit epoch",
                                SEALED_KEY_BYTES);
        }
        room_key.set = 1;
        memcpy(room_key.key, key.buf, SEALED_KEY_BYTES);
        memcpy(room_key.room, room, (size_t)room_len);
        room_key.room_len = (size_t)room_len;
        room_key.epoch = (uint32_t)epoch;
        PyBuffer_Release(&key);
    }
    struct client_connection *conn = self->conn;
    pthread_mutex_lock(&conn->lock);
    conn->room_key = room_key;
    conn->room_key_changed = 1;
    pthread_mutex_unlock(&conn->lock);
    OPENSSL_cleanse(&room_key, sizeof room_key);
    Py_RETURN_NONE;
}

static int valid_close_code(int code)
{
    return code == 1000 || code == 1001 || code == 1002 || code == 1003 ||
           (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999);
}

static PyObject *connection_close(ConnectionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"code", "reason", "timeout", NULL};
    int code = 1000;
    const char *reason = "";
    Py_ssize_t reason_size = 0;
    PyObject *timeout = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|is#O:close", keywords, &code, &reason,
                                     &reason_size, &timeout))
        return NULL;
    if (!valid_close_code(code))
        return PyErr_Format(PyExc_ValueError,
                            "close code %d is not one a client may send (1000-1003, "
                            "1007-1011, 3000-4999)",
                            code);
    if (reason_size > CLOSE_REASON_MAX_BYTES || memchr(reason, '\0', (size_t)reason_size))
        return PyErr_Format(PyExc_ValueError,
                            "reason must be at most %d bytes of UTF-8 without NUL",
                            CLOSE_REASON_MAX_BYTES);
    PyObject *default_timeout = NULL;
    if (!timeout)
        timeout = default_timeout = PyFloat_FromDouble(5.0);
    int bad;
    double deadline = deadline_after(timeout, "timeout", &bad);
    Py_XDECREF(default_timeout);
    if (bad)
        return NULL;

    struct client_connection *conn = self->conn;
    {
        PyThreadState *released = PyEval_SaveThread();
        request_close(conn, code, reason);
        PyEval_RestoreThread(released);
    }
    int waited = wait_until(conn, is_closed, NULL, deadline);
    if (waited < 0)
        return NULL;
    if (waited == 0) {
        /* The peer did not answer the Close in time: drop the socket. */
        {
            PyThreadState *released = PyEval_SaveThread();
            pthread_mutex_lock(&conn->lock);
            conn->abort_requested = 1;
            pthread_mutex_unlock(&conn->lock);
            service_notify(conn);
            PyEval_RestoreThread(released);
        }
        if (wait_until(conn, is_closed, NULL, transport_monotonic_seconds() + 2.0) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *connection_enter(ConnectionObject *self, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(self);
}

static PyObject *connection_exit(ConnectionObject *self, PyObject *args)
{
    (void)args;
    PyObject *no_arguments = PyTuple_New(0);
    PyObject *result = no_arguments ? connection_close(self, no_arguments, NULL) : NULL;
    Py_XDECREF(no_arguments);
    Py_XDECREF(result);
    return result ? Py_NewRef(Py_False) : NULL;
}

static PyObject *connection_get_close_code(ConnectionObject *self, void *unused)
{
    (void)unused;
    int code;
    {
        PyThreadState *released = PyEval_SaveThread();
        pthread_mutex_lock(&self->conn->lock);
        code = self->conn->state == CONNECTION_CLOSED ? self->conn->close_code : 0;
        pthread_mutex_unlock(&self->conn->lock);
        PyEval_RestoreThread(released);
    }
    if (!code)
        Py_RETURN_NONE;
    return PyLong_FromLong(code);
}

static PyObject *connection_get_close_reason(ConnectionObject *self, void *unused)
{
    (void)unused;
    char reason[sizeof self->conn->close_reason];
    int closed;
    {
        PyThreadState *released = PyEval_SaveThread();
        pthread_mutex_lock(&self->conn->lock);
        closed = self->conn->state == CONNECTION_CLOSED;
        memcpy(reason, self->conn->close_reason, sizeof reason);
        pthread_mutex_unlock(&self->conn->lock);
        PyEval_RestoreThread(released);
    }
    if (!closed)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(reason, strlen(reason), "replace");
}

static PyObject *connection_get_open(ConnectionObject *self, void *unused)
{
    (void)unused;
    int open;
    {
        PyThreadState *released = PyEval_SaveThread();
        pthread_mutex_lock(&self->conn->lock);
        open = self->conn->state == CONNECTION_OPEN && !self->conn->close_requested;
        pthread_mutex_unlock(&self->conn->lock);
        PyEval_RestoreThread(released);
    }
    return PyBool_FromLong(open);
}

static PyObject *connection_repr(ConnectionObject *self)
{
    PyObject *open = connection_get_open(self, NULL);
    if (!open)
        return NULL;
    PyObject *text =
        PyUnicode_FromFormat("<Connection %R %s>", self->url, open == Py_True ? "open" : "closed");
    Py_DECREF(open);
    return text;
}

static PyMethodDef connection_methods[] = {
    {"send_text", (PyCFunction)connection_send_text, METH_O,
     "send_text(text) -> None\n--\n\nSends one text message; returns once it is handed to the "
     "socket."},
    {"send_binary", (PyCFunction)connection_send_binary, METH_O,
     "send_binary(data) -> None\n--\n\nSends one binary message from any contiguous buffer, "
     "read in place (do not modify it until the call returns)."},
    {"send_chunked", (PyCFunction)(void (*)(void))connection_send_chunked,
     METH_VARARGS | METH_KEYWORDS,
     "send_chunked(kind, transfer_id, sender, recipients, data, chunk_size=16 MiB) -> int\n--\n\n"
     "Sends `data` as self-describing binary messages of at most chunk_size bytes each, frame "
     "header included. Returns the number of messages."},
    {"recv", (PyCFunction)(void (*)(void))connection_recv, METH_VARARGS | METH_KEYWORDS,
     "recv(timeout=None) -> (is_binary, data)\n--\n\nThe next message: (False, str) or (True, "
     "memoryview). Raises TimeoutError, or ConnectionClosed once closed and drained."},
    {"set_transfer_key", (PyCFunction)(void (*)(void))connection_set_transfer_key,
     METH_VARARGS | METH_KEYWORDS,
     "set_transfer_key(key, room='', epoch=0) -> None\n--\n\nPrivate rooms, with "
     "reassemble_transfers: transfers starting from now are opened with this group key (32 "
     "bytes; room: the routing code; epoch: the key's) segment by segment as their chunks land, "
     "so the decryption is the reassembly copy (see Transfer.opened). None: received as sent."},
    {"close", (PyCFunction)(void (*)(void))connection_close, METH_VARARGS | METH_KEYWORDS,
     "close(code=1000, reason='', timeout=5.0) -> None\n--\n\nCloses and waits for the closing "
     "handshake (at most `timeout`, then drops the socket)."},
    {"__enter__", (PyCFunction)connection_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)connection_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef connection_members[] = {
    {"url", T_OBJECT_EX, offsetof(ConnectionObject, url), READONLY, "The URL connected to."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef connection_getset[] = {
    {"close_code", (getter)connection_get_close_code, NULL,
     "The close code once closed (1006: no Close frame, e.g. the peer vanished), else None.", NULL},
    {"close_reason", (getter)connection_get_close_reason, NULL,
     "The close reason once closed, else None.", NULL},
    {"open", (getter)connection_get_open, NULL, "True while messages can be sent.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConnectionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "segmentation_suite.network._relayclient.Connection",
    .tp_basicsize = sizeof(ConnectionObject),
    .tp_dealloc = (destructor)connection_dealloc,
    .tp_repr = (reprfunc)connection_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A WebSocket client connection, made by connect(). Thread-safe.",
    .tp_methods = connection_methods,
    .tp_members = connection_members,
    .tp_getset = connection_getset,
};

/* ---- connect() ---------------------------------------------------------------------------- */

static char *utf8_copy(PyObject *text, const char *what)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what, Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (!utf8)
        return NULL;
    if (memchr(utf8, '\0', (size_t)size)) {
        PyErr_Format(PyExc_ValueError, "%s must not contain NUL", what);
        return NULL;
    }
    char *copy = strdup(utf8);
    if (!copy)
        PyErr_NoMemory();
    return copy;
}

static int is_token_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Copies extra handshake headers (a mapping or pairs of str) into `conn`. */
static int parse_headers(struct client_connection *conn, PyObject *headers)
{
    if (headers == Py_None)
        return 0;
    PyObject *items = PyMapping_Check(headers) && !PySequence_Check(headers)
                          ? PyMapping_Items(headers)
                          : PySequence_List(headers);
    if (!items)
        return -1;
    Py_ssize_t count = PyList_GET_SIZE(items);
    conn->headers = calloc(count ? (size_t)count : 1, sizeof *conn->headers);
    if (!conn->headers) {
        Py_DECREF(items);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name, *value;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i),
                              "UU;each header must be a (name, value) "
                              "pair of str",
                              &name, &value))
            goto fail;
        char *name_text = utf8_copy(name, "a header name");
        if (!name_text)
            goto fail;
        struct header_pair *pair = &conn->headers[conn->header_count++];
        pair->name = realloc(name_text, strlen(name_text) + 2);
        if (!pair->name) {
            free(name_text);
            PyErr_NoMemory();
            goto fail;
        }
        pair->value = utf8_copy(value, "a header value");
        if (!pair->value)
            goto fail;
        size_t name_length = strlen(pair->name);
        for (size_t k = 0; k < name_length; k++)
            if (!is_token_char((unsigned char)pair->name[k]))
                name_length = 0;
        if (name_length == 0) {
            PyErr_Format(PyExc_ValueError, "invalid header name %R", name);
            goto fail;
        }
        if (strpbrk(pair->value, "\r\n")) {
            PyErr_Format(PyExc_ValueError, "header %R has a line break in its value", name);
            goto fail;
        }
        strcat(pair->name, ":");
    }
    Py_DECREF(items);
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

/* Splits a ws:// or wss:// URL into the connection's address, port, path and Host header. */
static int parse_url(struct client_connection *conn, PyObject *url, PyObject *server_hostname)
{
    char *copy = utf8_copy(url, "url");
    if (!copy)
        return -1;
    size_t copy_length = strlen(copy);
    const char *scheme, *address, *path;
    int port = 0;
    int bad = lws_parse_uri(copy, &scheme, &address, &port, &path) != 0;
    if (!bad) {
        conn->use_tls = strcmp(scheme, "wss") == 0;
        bad = (!conn->use_tls && strcmp(scheme, "ws") != 0) || !address[0] || address[0] == '+' ||
              port <= 0 || port > 65535 || strpbrk(address, "/?#@ ");
    }
    if (bad) {
        free(copy);
        PyErr_Format(PyExc_ValueError,
                     "url must look like ws://host[:port]/path or wss://host[:port]/path, "
                     "got %R",
                     url);
        return -1;
    }
    conn->port = port;
    conn->address = strdup(address);
    /* lws drops the path's leading '/', and gives a literal "/" when there is no path. */
    int path_in_copy = path >= copy && path < copy + copy_length;
    size_t path_length = path_in_copy ? strlen(path) : 0;
    conn->path = malloc(path_length + 2);
    if (conn->path)
        snprintf(conn->path, path_length + 2, "/%s", path_in_copy ? path : "");

    char *host = NULL;
    if (server_hostname != Py_None) {
        host = utf8_copy(server_hostname, "server_hostname");
        if (!host) {
            free(copy);
            return -1;
        }
    }
    const char *name = host ? host : address;
    conn->server_name = strdup(name); /* what the certificate must name (and SNI) */
    int default_port = port == (conn->use_tls ? 443 : 80);
    size_t host_size = strlen(name) + 8;
    conn->host_header = malloc(host_size);
    /* lws strips ":port" before using the Host value for SNI and the certificate check. An
     * IPv6 literal would be cut at its first ':', so it is sent bare. */
    if (conn->host_header) {
        if (default_port || strchr(name, ':'))
            snprintf(conn->host_header, host_size, "%s", name);
        else
            snprintf(conn->host_header, host_size, "%s:%d", name, port);
    }
    free(host);
    free(copy);
    if (!conn->address || !conn->path || !conn->host_header || !conn->server_name) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int size_argument(PyObject *value, const char *name, size_t *out)
{
    unsigned long long size = PyLong_AsUnsignedLongLong(value);
    if (size == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "%s must be a positive int", name);
        return -1;
    }
    if (size == 0 || size > SIZE_MAX / 2) {
        PyErr_Format(PyExc_ValueError, "%s must be between 1 and %zu", name, SIZE_MAX / 2);
        return -1;
    }
    *out = (size_t)size;
    return 0;
}

/* ping_interval=None turns keepalive off; otherwise a ping goes out after `ping_interval`
 * seconds without a pong, and the connection is dropped `ping_timeout` seconds later. */
static int keepalive_arguments(struct client_connection *conn, PyObject *interval, double timeout)
{
    if (interval == Py_None)
        return 0;
    double seconds = PyFloat_AsDouble(interval);
    if (seconds == -1 && PyErr_Occurred())
        return -1;
    if (!(seconds > 0 && seconds <= 30000) || !(timeout > 0 && timeout <= 30000)) {
        PyErr_SetString(PyExc_ValueError,
                        "ping_interval and ping_timeout must be between 0 and 30000 seconds "
                        "(ping_interval=None disables pings)");
        return -1;
    }
    conn->keepalive_enabled = 1;
    conn->keepalive.secs_since_valid_ping = (uint16_t)ceil(seconds);
    conn->keepalive.secs_since_valid_hangup = (uint16_t)ceil(seconds + timeout);
    return 0;
}

static PyObject *transport_connect(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"url",
                               "engine",
                               "headers",
                               "proxy",
                               "ca_file",
                               "server_hostname",
                               "connect_timeout",
                               "ping_interval",
                               "ping_timeout",
                               "max_message_size",
                               "receive_queue_size",
                               "reassemble_transfers",
                               NULL};
    const char *engine_name = NULL;
    PyObject *url, *headers = Py_None, *proxy = Py_None, *ca_file = Py_None;
    PyObject *server_hostname = Py_None, *connect_timeout = NULL, *ping_interval = NULL;
    double ping_timeout = 30.0;
    PyObject *max_message_size = NULL, *receive_queue_size = NULL;
    int reassemble_transfers = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|$sOOOOOOdOOp:connect", keywords, &url,
                                     &engine_name, &headers, &proxy, &ca_file, &server_hostname,
                                     &connect_timeout, &ping_interval, &ping_timeout,
                                     &max_message_size, &receive_queue_size, &reassemble_transfers))
        return NULL;

    if (!engine_name) /* the default is Python's to choose: transport.default_engine() */
        return PyErr_Format(PyExc_TypeError, "connect() needs engine='raw' or engine='lws'");
    const struct transport_engine *engine = service_engine_named(engine_name);
    if (!engine)
        return PyErr_Format(PyExc_ValueError, "engine must be 'raw' or 'lws', got '%s'",
                            engine_name);
    struct client_connection *conn = connection_new();
    if (!conn)
        return PyErr_NoMemory();
    conn->engine = engine;
    conn->reassemble_transfers = reassemble_transfers;
    conn->max_message_size = DEFAULT_MAX_MESSAGE_SIZE;
    conn->receive_queue_limit = DEFAULT_RECEIVE_QUEUE_SIZE;
    PyObject *default_interval = NULL, *default_timeout = NULL;
    if (!ping_interval)
        ping_interval = default_interval = PyFloat_FromDouble(30.0);
    if (!connect_timeout)
        connect_timeout = default_timeout = PyFloat_FromDouble(10.0);
    int bad = 0;
    double deadline = 0;
    if (!ping_interval || !connect_timeout || parse_url(conn, url, server_hostname) < 0 ||
        parse_headers(conn, headers) < 0 ||
        keepalive_arguments(conn, ping_interval, ping_timeout) < 0 ||
        (max_message_size &&
         size_argument(max_message_size, "max_message_size", &conn->max_message_size) < 0) ||
        (receive_queue_size &&
         size_argument(receive_queue_size, "receive_queue_size", &conn->receive_queue_limit) < 0) ||
        (proxy != Py_None && !(conn->proxy = utf8_copy(proxy, "proxy"))) ||
        (ca_file != Py_None && !(conn->ca_file = utf8_copy(ca_file, "ca_file"))))
        bad = 1;
    if (!bad)
        deadline = deadline_after(connect_timeout, "connect_timeout", &bad);
    Py_XDECREF(default_interval);
    Py_XDECREF(default_timeout);
    if (bad) {
        connection_release(conn);
        return NULL;
    }
    if ((conn->use_tls && !engine->does_tls) || (conn->proxy && !engine->does_proxy)) {
        PyErr_Format(PyExc_ValueError, "the %s engine cannot run %s", engine->name,
                     conn->use_tls ? "wss:// (TLS)" : "through an HTTP proxy");
        connection_release(conn);
        return NULL;
    }
    if (conn->ca_file && access(conn->ca_file, R_OK) != 0) {
        PyErr_Format(PyExc_FileNotFoundError, "ca_file %R cannot be read", ca_file);
        connection_release(conn);
        return NULL;
    }

    ConnectionObject *self = PyObject_New(ConnectionObject, &ConnectionType);
    if (!self) {
        connection_release(conn);
        return NULL;
    }
    self->conn = conn;
    self->url = Py_NewRef(url);

    char error[256];
    int started;
    {
        PyThreadState *released = PyEval_SaveThread();
        started = service_start(error, sizeof error) == 0;
        if (started) {
            pthread_mutex_lock(&conn->lock);
            conn->connect_requested = 1;
            pthread_mutex_unlock(&conn->lock);
            service_notify(conn);
        }
        PyEval_RestoreThread(released);
    }
    if (!started) {
        conn->state = CONNECTION_CLOSED;
        Py_DECREF(self);
        return PyErr_Format(PyExc_RuntimeError, "%s", error);
    }

    int waited = wait_until(conn, is_not_connecting, NULL, deadline);
    if (waited <= 0) {
        {
            PyThreadState *released = PyEval_SaveThread();
            request_close(conn, LWS_CLOSE_STATUS_GOINGAWAY, "");
            PyEval_RestoreThread(released);
        }
        if (waited == 0)
            PyErr_Format(PyExc_TimeoutError, "could not connect to %U within the timeout", url);
        Py_DECREF(self);
        return NULL;
    }
    if (conn->failed_to_open) {
        PyErr_Format(PyExc_ConnectionError, "could not connect to %U: %s", url, conn->error);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* ---- frame headers ------------------------------------------------------------------------ */

static PyStructSequence_Field frame_header_fields[] = {
    {"kind", "FRAME_KIND_* value"},
    {"transfer_id", "chosen by the sender, unique among its transfers"},
    {"chunk_index", "0-based"},
    {"chunk_count", "at least 1"},
    {"total_size", "payload bytes of the whole transfer"},
    {"sender", "the sender's user_id"},
    {"recipients", "tuple of user_ids; empty means every other member"},
    {"header_size", "where this chunk's payload starts"},
    {NULL, NULL},
};

static PyStructSequence_Desc frame_header_description = {
    "segmentation_suite.network._relayclient.FrameHeader",
    "The self-describing header at the start of a binary message (docs/protocol.md).",
    frame_header_fields,
    8,
};

static PyTypeObject *FrameHeaderType;

static PyObject *decode_frame_id(struct frame_id id)
{
    return PyUnicode_DecodeUTF8(id.bytes, id.length, "strict");
}

static PyObject *transport_parse_frame_header(PyObject *module, PyObject *data)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    struct frame_header header;
    size_t needed = 0;
    const char *error = NULL;
    PyObject *result = NULL, *recipients = NULL;
    switch (frame_header_parse(view.buf, (size_t)view.len, &header, &needed, &error)) {
    case FRAME_NOT_OURS:
        result = Py_NewRef(Py_None);
        goto done;
    case FRAME_NEED_MORE:
        /* A whole message shorter than the magic cannot start with it: a v1 payload. */
        if (view.len < FRAME_MAGIC_SIZE) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyErr_Format(PyExc_ValueError, "frame header truncated: %zd bytes, at least %zu needed",
                     view.len, needed);
        goto done;
    case FRAME_MALFORMED:
        PyErr_Format(PyExc_ValueError, "malformed frame header: %s", error);
        goto done;
    case FRAME_OK:
        break;
    }
    recipients = PyTuple_New(header.recipient_count);
    if (!recipients)
        goto done;
    size_t cursor = 0;
    struct frame_id recipient;
    for (Py_ssize_t i = 0; frame_header_next_recipient(&header, &cursor, &recipient); i++) {
        PyObject *name = decode_frame_id(recipient);
        if (!name)
            goto done;
        PyTuple_SET_ITEM(recipients, i, name);
    }
    PyObject *sender = decode_frame_id(header.sender);
    if (!sender)
        goto done;
    result = PyStructSequence_New(FrameHeaderType);
    if (!result) {
        Py_DECREF(sender);
        goto done;
    }
    PyStructSequence_SET_ITEM(result, 0, PyLong_FromLong(header.kind));
    PyStructSequence_SET_ITEM(result, 1, PyLong_FromUnsignedLongLong(header.transfer_id));
    PyStructSequence_SET_ITEM(result, 2, PyLong_FromUnsignedLong(header.chunk_index));
    PyStructSequence_SET_ITEM(result, 3, PyLong_FromUnsignedLong(header.chunk_count));
    PyStructSequence_SET_ITEM(result, 4, PyLong_FromUnsignedLongLong(header.total_size));
    PyStructSequence_SET_ITEM(result, 5, sender);
    PyStructSequence_SET_ITEM(result, 6, Py_NewRef(recipients));
    PyStructSequence_SET_ITEM(result, 7, PyLong_FromLong(header.header_size));
    for (int i = 0; i < 8; i++)
        if (!PyStructSequence_GET_ITEM(result, i))
            Py_CLEAR(result);
done:
    Py_XDECREF(recipients);
    PyBuffer_Release(&view);
    return result;
}

/* ---- the chunk plan ---------------------------------------------------------------------- */

/* The number of messages send_chunked() cuts `total_size` bytes into: framing.c's plan, so
 * that an announcement made before sending says what the send will do. */
static PyObject *transport_chunk_count(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"sender", "recipients", "total_size", "chunk_size", NULL};
    PyObject *sender, *recipients;
    unsigned long long total_size;
    Py_ssize_t chunk_size = FRAMING_DEFAULT_MESSAGE_SIZE;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UOK|n:chunk_count", keywords, &sender,
                                     &recipients, &total_size, &chunk_size))
        return NULL;
    struct plan_ids ids;
    if (plan_ids_read(&ids, sender, recipients, chunk_size) < 0)
        return NULL;
    struct chunk_plan plan;
    PyObject *result = NULL;
    if (plan_chunks(&plan, FRAME_KIND_WEIGHTS, 0, &ids, total_size, chunk_size) == 0)
        result = PyLong_FromUnsignedLong(plan.chunk_count);
    plan_ids_release(&ids);
    return result;
}

static PyObject *transport_set_lws_log_mask(PyObject *module, PyObject *mask)
{
    (void)module;
    long value = PyLong_AsLong(mask);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    service_set_log_mask((int)value);
    Py_RETURN_NONE;
}

/* ---- exit --------------------------------------------------------------------------------- */

static PyObject *transport_shutdown(PyObject *module, PyObject *args)
{
    (void)module;
    double grace = 2.0;
    if (!PyArg_ParseTuple(args, "|d:_shutdown", &grace))
        return NULL;
    shutdown_thread = PyThread_get_thread_ident(); /* before service_shutdown's flag */
    {
        PyThreadState *released = PyEval_SaveThread();
        service_shutdown(grace);
        PyEval_RestoreThread(released);
    }
    Py_RETURN_NONE;
}

static PyMethodDef transport_functions[] = {
    {"connect", (PyCFunction)(void (*)(void))transport_connect, METH_VARARGS | METH_KEYWORDS,
     "connect(url, *, engine, headers=None, proxy=None, ca_file=None, server_hostname=None, "
     "connect_timeout=10.0, ping_interval=30.0, ping_timeout=30.0, max_message_size=256 MiB, "
     "receive_queue_size=64 MiB, reassemble_transfers=False) -> Connection\n--\n\n"
     "Opens a ws:// or wss:// connection and waits for the handshake (GIL released). `engine` "
     "is 'raw' (our own WebSocket client) or 'lws' (libwebsockets'); transport.py chooses it. "
     "`proxy` is an HTTP CONNECT proxy as host:port (no environment lookup here). With "
     "reassemble_transfers, recv() gives one Transfer per completed chunked transfer instead of "
     "its chunks."},
    {"parse_frame_header", (PyCFunction)transport_parse_frame_header, METH_O,
     "parse_frame_header(data) -> FrameHeader | None\n--\n\n"
     "Reads the frame header at the start of a binary message; None when the message has none "
     "(a v1 peer's); ValueError when it is malformed or truncated."},
    {"chunk_count", (PyCFunction)(void (*)(void))transport_chunk_count,
     METH_VARARGS | METH_KEYWORDS,
     "chunk_count(sender, recipients, total_size, chunk_size=16 MiB) -> int\n--\n\n"
     "How many messages send_chunked() sends for `total_size` payload bytes (framing.c's plan)."},
    {"_set_lws_log_mask", (PyCFunction)transport_set_lws_log_mask, METH_O,
     "_set_lws_log_mask(mask)\n--\n\nlibwebsockets' log levels for the service thread, "
     "applied when it starts (transport.py passes $SEGMENTATION_SUITE_LWS_LOG)."},
    {"_shutdown", (PyCFunction)transport_shutdown, METH_VARARGS,
     "_shutdown(grace=2.0)\n--\n\nCloses every connection and stops the transport thread "
     "(registered with atexit)."},
    {NULL, NULL, 0, NULL},
};

int transport_module_init(PyObject *module)
{
    if (PyType_Ready(&ConnectionType) < 0 || PyType_Ready(&MessageBufferType) < 0 ||
        PyType_Ready(&TransferType) < 0)
        return -1;
    FrameHeaderType = PyStructSequence_NewType(&frame_header_description);
    if (!FrameHeaderType)
        return -1;
    ConnectionClosed = PyErr_NewExceptionWithDoc(
        "segmentation_suite.network._relayclient.ConnectionClosed",
        "The connection is closed; `code` and `reason` say how it ended (code 1006: without a "
        "Close frame).",
        PyExc_ConnectionError, NULL);
    if (!ConnectionClosed || PyModule_AddFunctions(module, transport_functions) < 0 ||
        PyModule_AddObjectRef(module, "ConnectionClosed", ConnectionClosed) < 0 ||
        PyModule_AddObjectRef(module, "Connection", (PyObject *)&ConnectionType) < 0 ||
        PyModule_AddObjectRef(module, "MessageBuffer", (PyObject *)&MessageBufferType) < 0 ||
        PyModule_AddObjectRef(module, "Transfer", (PyObject *)&TransferType) < 0 ||
        PyModule_AddObjectRef(module, "FrameHeader", (PyObject *)FrameHeaderType) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_KIND_WEIGHTS", FRAME_KIND_WEIGHTS) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_KIND_GLOBAL_MODEL", FRAME_KIND_GLOBAL_MODEL) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_KIND_TRAINING_IMAGE", FRAME_KIND_TRAINING_IMAGE) <
            0 ||
        PyModule_AddIntConstant(module, "FRAME_KIND_TRAINING_MASK", FRAME_KIND_TRAINING_MASK) < 0 ||
        PyModule_AddIntConstant(module, "FRAME_KIND_OTHER", FRAME_KIND_OTHER) < 0 ||
        PyModule_AddIntConstant(module, "DEFAULT_CHUNK_SIZE", FRAMING_DEFAULT_MESSAGE_SIZE) < 0)
        return -1;

    /* Close connections before the interpreter goes away, so the transport thread never
     * outlives it and no socket is left half-closed. */
    PyObject *atexit = PyImport_ImportModule("atexit");
    if (!atexit)
        return -1;
    PyObject *shutdown = PyObject_GetAttrString(module, "_shutdown");
    PyObject *registered = shutdown ? PyObject_CallMethod(atexit, "register", "O", shutdown) : NULL;
    Py_XDECREF(shutdown);
    Py_DECREF(atexit);
    if (!registered)
        return -1;
    Py_DECREF(registered);
    return 0;
}
