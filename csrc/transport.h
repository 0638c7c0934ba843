/* transport.h — the WebSocket transport half of the _relayclient extension: the Connection type,
 * connect(), parse_frame_header() and the exit hook. module.c calls transport_module_init() once
 * while it builds the module. */
#ifndef TRANSPORT_H
#define TRANSPORT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Adds the transport's types, functions and constants to `module`; returns 0, or -1 with a
 * Python exception set. */
int transport_module_init(PyObject *module);

#endif
