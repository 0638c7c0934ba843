/* fedavg.c — the one hot loop of federated averaging (aggregator.py): a push added to the
 * running float32/float64 sums, weighted, in place, in one pass with the GIL released once
 * (numpy needs a model-sized temporary, or a chunked loop retaking the GIL a thousand times);
 * optionally rounded to float16 on the way, as a float16 wire would deliver the values (the
 * host's own push, which never leaves the process, so is neither encoded nor decoded). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "fp16.h"

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

/* sums = weight * values (first) or sums += weight * values, element by element, over `count`
 * elements from `sums` and `values`. The product is rounded to the sums' type before the
 * addition, as numpy's multiply-then-add does. */
#define ACCUMULATE(SUM_T, VALUE_T, SUMS, VALUES, COUNT)                                            \
    do {                                                                                           \
        SUM_T *sums_ = (SUM_T *)(SUMS);                                                            \
        const VALUE_T *values_ = (const VALUE_T *)(VALUES);                                        \
        const SUM_T w = (SUM_T)weight;                                                             \
        if (first) {                                                                               \
            for (Py_ssize_t i = 0; i < (COUNT); i++)                                               \
                sums_[i] = w * (SUM_T)values_[i];                                                  \
        } else {                                                                                   \
            for (Py_ssize_t i = 0; i < (COUNT); i++) {                                             \
                SUM_T product = w * (SUM_T)values_[i];                                             \
                sums_[i] += product;                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void accumulate(void *sums, char sums_kind, const void *values, char values_kind,
                       Py_ssize_t count, double weight, bool first)
{
    if (sums_kind == 'f' && values_kind == 'f')
        ACCUMULATE(float, float, sums, values, count);
    else if (sums_kind == 'f')
        ACCUMULATE(float, double, sums, values, count);
    else if (values_kind == 'f')
        ACCUMULATE(double, float, sums, values, count);
    else
        ACCUMULATE(double, double, sums, values, count);
}

/* Elements rounded per step: the float16 and widened copies of a block stay in L1, so the
 * model's values are still read from memory once. */
enum { ROUNDED_BLOCK = 2048 };

/* The additions below run on a block in L1, where -O2's scalar loop would be the bottleneck
 * (memory is, for accumulate: twice as slow measured on the U-Net): GCC vectorizes this one. */
#if defined(__GNUC__) && !defined(__clang__)
#define VECTORIZED __attribute__((optimize("tree-vectorize")))
#else
#define VECTORIZED
#endif

/* As accumulate, with each value first rounded to float16 and widened to the sums' type: the
 * same bits as encoding the values as float16 and decoding them (fp16.c is the codec's). */
VECTORIZED static void accumulate_float16_values(void *sums, char sums_kind, const void *values,
                                                 char values_kind, Py_ssize_t count, double weight,
                                                 bool first)
{
    uint16_t halves[ROUNDED_BLOCK];
    union {
        float f[ROUNDED_BLOCK];
        double d[ROUNDED_BLOCK];
    } rounded;
    size_t sum_size = sums_kind == 'f' ? sizeof(float) : sizeof(double);
    size_t value_size = values_kind == 'f' ? sizeof(float) : sizeof(double);
    for (Py_ssize_t start = 0; start < count; start += ROUNDED_BLOCK) {
        Py_ssize_t n = count - start < ROUNDED_BLOCK ? count - start : ROUNDED_BLOCK;
        const char *source = (const char *)values + (size_t)start * value_size;
        char *target = (char *)sums + (size_t)start * sum_size;
        if (values_kind == 'f')
            fp16_from_float32(halves, source, (size_t)n);
        else
            fp16_from_float64(halves, source, (size_t)n);
        if (sums_kind == 'f') {
            fp16_to_float32(rounded.f, halves, (size_t)n);
            ACCUMULATE(float, float, target, rounded.f, n);
        } else {
            fp16_to_float64(rounded.d, halves, (size_t)n);
            ACCUMULATE(double, double, target, rounded.d, n);
        }
    }
}

PyDoc_STRVAR(accumulate_doc,
             "_fedavg_accumulate(sums, values, weight, first, float16_values=False)\n\n"
             "sums = weight * values (first true) or sums += weight * values, in place. sums: a "
             "writable C-contiguous float32 or float64 buffer; values: a C-contiguous float32 or "
             "float64 buffer of as many elements. The arithmetic is in the sums' type. "
             "float16_values: each value is first rounded to float16 (as numpy's astype rounds). "
             "ValueError or TypeError on anything else; sums is then unchanged.");

static PyObject *fedavg_accumulate(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *sums_object, *values_object;
    double weight;
    int first, float16_values = 0;
    if (!PyArg_ParseTuple(args, "OOdp|p:_fedavg_accumulate", &sums_object, &values_object, &weight,
                          &first, &float16_values))
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
    if (float16_values)
        accumulate_float16_values(sums_view.buf, sums_kind, values_view.buf, values_kind, count,
                                  weight, first != 0);
    else
        accumulate(sums_view.buf, sums_kind, values_view.buf, values_kind, count, weight,
                   first != 0);
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
