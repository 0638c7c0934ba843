/* sealing_transfer.h — a private room's transfer that is sealed while it is sent: the Python
 * type SealingTransfer (`seal_while_sending`), which send_chunked() seals chunk by chunk ahead
 * of the socket, so the first chunk leaves while the rest is still being encrypted. */
#ifndef SEALING_TRANSFER_H
#define SEALING_TRANSFER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Adds the type and seal_while_sending() to `module`; 0, or -1 with an exception set. */
int sealing_transfer_init(PyObject *module);

/* When `data` is a SealingTransfer: its sealed buffer (final size) and a handle for
 * sealing_transfer_through(), and 1; else 0. The caller holds a reference to `data`. */
int sealing_transfer_view(PyObject *data, const unsigned char **bytes, size_t *size, void **handle);

/* Seals every segment that starts before byte `wire_end` of the sealed transfer (without the
 * GIL; thread-safe). Returns 0, or -1 with `error` (the cipher failed). */
int sealing_transfer_through(void *handle, uint64_t wire_end, const char **error);

#endif
