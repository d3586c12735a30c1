/*
 * proxy.wire._scan: the compiled header walk of the server->client stream.
 *
 * skip(data, pos, stop, count_copy) -> (pos, copy_bytes)
 *
 * The same function as proxy.wire.server_stream.skip_messages_py, which is
 * the reference (and the fallback when this module was not built): starting
 * at byte offset pos of data (any buffer), step over whole messages by their
 * 5-byte headers (type byte, big-endian int32 length counting itself) and
 * stop at the first message that needs Python's attention:
 *
 *   - fewer than 5 bytes left (a header split across chunks),
 *   - a length below 4 (the caller raises the protocol error),
 *   - a type whose byte in the 256-byte table stop is not zero,
 *   - a message that does not end inside data.
 *
 * Returns the offset reached and, when count_copy is true, the payload bytes
 * of the CopyData ('d') messages stepped over.  Never reads past data, never
 * copies, never raises on the stream's content.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *
scan_skip(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, stop;
    Py_ssize_t pos, n;
    long long copy = 0;
    int count_copy;
    const unsigned char *p, *table;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "skip(data, pos, stop, count_copy) takes 4 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    count_copy = PyObject_IsTrue(args[3]);
    if (count_copy < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &stop, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (stop.len != 256) {
        PyBuffer_Release(&stop);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "stop must be 256 bytes long");
        return NULL;
    }
    if (pos < 0) {
        PyBuffer_Release(&stop);
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "pos must not be negative");
        return NULL;
    }
    p = (const unsigned char *) data.buf;
    table = (const unsigned char *) stop.buf;
    n = data.len;

    while (n - pos >= 5) {
        unsigned char type = p[pos];
        int32_t length;
        Py_ssize_t end;

        if (table[type])
            break;
        length = (int32_t) (((uint32_t) p[pos + 1] << 24) | ((uint32_t) p[pos + 2] << 16) |
                            ((uint32_t) p[pos + 3] << 8) | (uint32_t) p[pos + 4]);
        if (length < 4)
            break;
        end = pos + 1 + (Py_ssize_t) length;
        if (end > n)
            break;
        if (count_copy && type == 'd')
            copy += length - 4;
        pos = end;
    }
    PyBuffer_Release(&stop);
    PyBuffer_Release(&data);
    return Py_BuildValue("(nL)", pos, copy);
}

static PyMethodDef scan_methods[] = {
    {"skip", (PyCFunction) (void (*)(void)) scan_skip, METH_FASTCALL,
     "skip(data, pos, stop, count_copy) -> (pos, copy_bytes): step over whole messages that need nothing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Compiled header walk of the server->client stream (see proxy.wire.server_stream).", -1, scan_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&scan_module);
}
