/* Entry point of segmentation_suite.network._relayclient: creates the module and lets each
 * part (the weight codec, the WebSocket transport, the private-room crypto) add its functions
 * and types to it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

int codec_module_init(PyObject *module);
int transport_module_init(PyObject *module); /* transport.h */
int crypto_module_init(PyObject *module);    /* crypto_binding.c */
int fedavg_module_init(PyObject *module);    /* fedavg.c */

static struct PyModuleDef relayclient_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "segmentation_suite.network._relayclient",
    .m_doc = "C core of the Segmentation Suite client: weight codec and WebSocket transport.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__relayclient(void)
{
    PyObject *module = PyModule_Create(&relayclient_module);
    if (module == NULL)
        return NULL;
    if (codec_module_init(module) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (transport_module_init(module) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (crypto_module_init(module) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (fedavg_module_init(module) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
