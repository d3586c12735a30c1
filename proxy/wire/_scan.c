/*
 * proxy.wire._scan: the compiled hot-path helpers of proxy.wire.  Each has a
 * pure-Python reference, which is also the fallback when this module was not
 * built; the tests run both and compare them.
 *
 * skip(data, pos, stop, count_copy) -> (pos, copy_bytes)
 *
 * The header walk of the server->client stream: the same function as
 * proxy.wire.server_stream.skip_messages_py, the reference.  Starting at
 * byte offset pos of data (any buffer), step over whole messages by their
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
 *
 * decode_bind(buf, start, end) -> (portal, statement, params) or None
 *
 * The Bind body in buf[start:end] (any buffer; the relay passes its
 * bytearray), decoded for the session recording: the same tuple as
 * proxy.wire.decode.decode_bind_py, the reference, with equal values and
 * types: two str, and a list of (bytes, or None for NULL; binary? as bool).
 * Names are decoded with the codec the reference's _cstring uses (strict
 * UTF-8), so non-ASCII names match it too.
 *
 * It accepts only a Bind PostgreSQL itself would decode, and returns None
 * (raising nothing) for anything else; the wrapper decode.decode_bind then
 * runs the reference, which raises the ClientProtocolError, or answers
 * where it is more lenient than PostgreSQL.  Refused:
 *
 *   - start or end not an int, start < 0, start >= end, end > len(buf),
 *   - a name without its NUL before end, or not valid UTF-8,
 *   - a count, format code, length or value running past end,
 *   - a parameter format count other than 0, 1 or the parameter count,
 *     a format code (parameter or result) other than 0 or 1,
 *   - a parameter length below -1 (-1 is NULL),
 *   - a result-format list that does not end exactly at end.
 *
 * Reads only inside [start, end); copies only the values and names it
 * returns.  A wrong argument count or a buf that is not a buffer raises
 * TypeError.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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

static inline unsigned int
read_u16(const unsigned char *p)
{
    return ((unsigned int) p[0] << 8) | (unsigned int) p[1];
}

static inline int32_t
read_i32(const unsigned char *p)
{
    return (int32_t) (((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | (uint32_t) p[3]);
}

/*
 * The NUL-terminated name at p[*pos], the NUL before end, decoded as
 * strict UTF-8 like the reference's _cstring; *pos moves past the NUL.
 * NULL with no exception set means "refuse" (no NUL, or not UTF-8); NULL
 * with one set is a real error (memory).
 */
static PyObject *
bind_name(const unsigned char *p, Py_ssize_t *pos, Py_ssize_t end)
{
    const unsigned char *s = p + *pos;
    const unsigned char *nul = memchr(s, 0, (size_t) (end - *pos));
    PyObject *name;

    if (nul == NULL)
        return NULL;
    name = PyUnicode_DecodeUTF8((const char *) s, nul - s, NULL);
    if (name == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear();
        return NULL;
    }
    *pos = (nul - p) + 1;
    return name;
}

static PyObject *
scan_decode_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t start, end, pos;
    const unsigned char *p, *fmts;
    PyObject *portal = NULL, *statement = NULL, *params = NULL, *result;
    unsigned int nfmt, nparams, nres, i;
    int fmt_all;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode_bind(buf, start, end) takes 3 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    /* Offsets: exact ints only (anything else is the reference's to judge). */
    if (!PyLong_CheckExact(args[1]) || !PyLong_CheckExact(args[2]))
        goto refuse;
    start = PyLong_AsSsize_t(args[1]);
    end = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || end == -1) && PyErr_Occurred()) {      /* OverflowError */
        PyErr_Clear();
        goto refuse;
    }
    if (start < 0 || start >= end || end > view.len)    /* an empty body has no portal name */
        goto refuse;
    p = (const unsigned char *) view.buf;
    pos = start;

    if ((portal = bind_name(p, &pos, end)) == NULL)
        goto refuse_or_error;
    if ((statement = bind_name(p, &pos, end)) == NULL)
        goto refuse_or_error;

    /* Parameter format codes: none (all text), one for all, or one each. */
    if (end - pos < 2)
        goto refuse;
    nfmt = read_u16(p + pos);
    pos += 2;
    if (end - pos < 2 * (Py_ssize_t) nfmt)
        goto refuse;
    fmts = p + pos;
    for (i = 0; i < nfmt; i++)
        if (read_u16(fmts + 2 * i) > 1)
            goto refuse;
    pos += 2 * (Py_ssize_t) nfmt;
    if (end - pos < 2)
        goto refuse;
    nparams = read_u16(p + pos);
    pos += 2;
    if (nfmt > 1 && nfmt != nparams)
        goto refuse;
    fmt_all = nfmt == 0 ? 0 : nfmt == 1 ? (int) read_u16(fmts) : -1;
    /* Room for every length word at least, before allocating the list. */
    if (end - pos < 4 * (Py_ssize_t) nparams)
        goto refuse;
    if ((params = PyList_New(nparams)) == NULL)
        goto error;
    for (i = 0; i < nparams; i++) {
        int32_t size;
        PyObject *value, *binary, *item;

        if (end - pos < 4)
            goto refuse;
        size = read_i32(p + pos);
        pos += 4;
        if (size == -1) {
            value = Py_None;
            Py_INCREF(value);
        }
        else if (size < 0 || (Py_ssize_t) size > end - pos)
            goto refuse;
        else {
            value = PyBytes_FromStringAndSize((const char *) p + pos, size);
            if (value == NULL)
                goto error;
            pos += size;
        }
        binary = (fmt_all >= 0 ? fmt_all : (int) read_u16(fmts + 2 * i)) ? Py_True : Py_False;
        if ((item = PyTuple_New(2)) == NULL) {
            Py_DECREF(value);
            goto error;
        }
        Py_INCREF(binary);
        PyTuple_SET_ITEM(item, 0, value);
        PyTuple_SET_ITEM(item, 1, binary);
        PyList_SET_ITEM(params, i, item);
    }

    /* Result format codes: not returned, but they must fill the rest exactly. */
    if (end - pos < 2)
        goto refuse;
    nres = read_u16(p + pos);
    pos += 2;
    if (end - pos != 2 * (Py_ssize_t) nres)
        goto refuse;
    for (i = 0; i < nres; i++)
        if (read_u16(p + pos + 2 * i) > 1)
            goto refuse;

    if ((result = PyTuple_New(3)) == NULL)
        goto error;
    PyTuple_SET_ITEM(result, 0, portal);
    PyTuple_SET_ITEM(result, 1, statement);
    PyTuple_SET_ITEM(result, 2, params);
    PyBuffer_Release(&view);
    return result;

refuse_or_error:
    if (PyErr_Occurred())
        goto error;
refuse:
    Py_XDECREF(params);             /* slots not yet filled are NULL: fine for the list */
    Py_XDECREF(statement);
    Py_XDECREF(portal);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;

error:
    Py_XDECREF(params);
    Py_XDECREF(statement);
    Py_XDECREF(portal);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef scan_methods[] = {
    {"skip", (PyCFunction) (void (*)(void)) scan_skip, METH_FASTCALL,
     "skip(data, pos, stop, count_copy) -> (pos, copy_bytes): step over whole messages that need nothing."},
    {"decode_bind", (PyCFunction) (void (*)(void)) scan_decode_bind, METH_FASTCALL,
     "decode_bind(buf, start, end) -> (portal, statement, params), or None where the reference must decode it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Compiled hot-path helpers of proxy.wire: the server stream's header walk, Bind decoding.", -1, scan_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&scan_module);
}
