/* fedavg.c — the one hot loop of federated averaging (aggregator.py): a push added to the
 * running float32/float64 sums, weighted, in place, in one pass and with the GIL released
 * once. numpy needs a temporary of the model's size or a chunked loop that takes the GIL back
 * a thousand times per model (slow whenever another Python thread runs). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define NATIVE_ORDER '>'
#else
#define NATIVE_ORDER '<'
#endif

/* The element type of a buffer format ("f", "<f", "=f", "d"...): 'f', 'd', or 0 for any other
 * (a byte-swapped format is another). */
static char float_kind(const char *format)
{
    if (format == NULL)
        return 0;
    if (format[0] == NATIVE_ORDER || format[0] == '=' || format[0] == '@')
        format++;
    if ((format[0] == 'f' || format[0] == 'd') && format[1] == '\0')
        return format[0];
    return 0;
}

/* sums = weight * values (first) or sums += weight * values, element by element. The product
 * is rounded to the sums' type before the addition, as numpy's multiply-then-add does. */
#define ACCUMULATE(SUM_T, VALUE_T)                                                                 \
    do {                                                                                           \
        SUM_T *sums = (SUM_T *)sums_view->buf;                                                     \
        const VALUE_T *values = (const VALUE_T *)values_view->buf;                                 \
        const SUM_T w = (SUM_T)weight;                                                             \
        if (first) {                                                                               \
            for (Py_ssize_t i = 0; i < count; i++)                                                 \
                sums[i] = w * (SUM_T)values[i];                                                    \
        } else {                                                                                   \
            for (Py_ssize_t i = 0; i < count; i++) {                                               \
                SUM_T product = w * (SUM_T)values[i];                                              \
                sums[i] += product;                                                                \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void accumulate(Py_buffer *sums_view, char sums_kind, const Py_buffer *values_view,
                       char values_kind, Py_ssize_t count, double weight, bool first)
{
    if (sums_kind == 'f' && values_kind == 'f')
        ACCUMULATE(float, float);
    else if (sums_kind == 'f')
        ACCUMULATE(float, double);
    else if (values_kind == 'f')
        ACCUMULATE(double, float);
    else
        ACCUMULATE(double, double);
}

PyDoc_STRVAR(accumulate_doc,
             "_fedavg_accumulate(sums, values, weight, first)\n\n"
             "sums = weight * values (first true) or sums += weight * values, in place. sums: a "
             "writable C-contiguous float32 or float64 buffer; values: a C-contiguous float32 or "
             "float64 buffer of as many elements. The arithmetic is in the sums' type. "
             "ValueError or TypeError on anything else; sums is then unchanged.");

static PyObject *fedavg_accumulate(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *sums_object, *values_object;
    double weight;
    int first;
    if (!PyArg_ParseTuple(args, "OOdp:_fedavg_accumulate", &sums_object, &values_object, &weight,
                          &first))
        return NULL;
    Py_buffer sums_view, values_view;
    if (PyObject_GetBuffer(sums_object, &sums_view,
                           PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) != 0)
        return NULL;
    if (PyObject_GetBuffer(values_object, &values_view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyBuffer_Release(&sums_view);
        return NULL;
    }
    PyObject *result = NULL;
    char sums_kind = float_kind(sums_view.format);
    char values_kind = float_kind(values_view.format);
    if (sums_kind == 0 || values_kind == 0) {
        PyErr_Format(PyExc_TypeError, "sums and values must be float32 or float64, not %s and %s",
                     sums_view.format, values_view.format);
        goto done;
    }
    Py_ssize_t count = sums_view.len / sums_view.itemsize;
    if (values_view.len / values_view.itemsize != count) {
        PyErr_Format(PyExc_ValueError, "sums has %zd elements, values %zd", count,
                     values_view.len / values_view.itemsize);
        goto done;
    }
    PyThreadState *thread_state = PyEval_SaveThread();
    accumulate(&sums_view, sums_kind, &values_view, values_kind, count, weight, first != 0);
    PyEval_RestoreThread(thread_state);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&values_view);
    PyBuffer_Release(&sums_view);
    return result;
}

static PyMethodDef fedavg_methods[] = {
    {"_fedavg_accumulate", fedavg_accumulate, METH_VARARGS, accumulate_doc}, {NULL, NULL, 0, NULL}};

int fedavg_module_init(PyObject *module)
{
    return PyModule_AddFunctions(module, fedavg_methods);
}
