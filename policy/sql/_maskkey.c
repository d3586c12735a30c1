/*
 * policy.sql._maskkey: the masked-literal key, built in C.
 *
 * The same function as policy.sql.masked.masked_key_portable (the reference,
 * and the fallback when this module was not built or does not pass its
 * self-test): the UTF-8 text cut at literal and comment tokens, each cut
 * replaced by the token's kind, the pieces joined with NUL.  The tokens come
 * from PostgreSQL's own scanner as compiled into pglast
 * (libpg_query's pg_query_scan_tokens); Python hands over the function
 * addresses and token numbers once, with bind().
 *
 *   bind(scan_addr, free_addr, marks, uescape, float_kw, lparen, iconst, comment_a, comment_b)
 *       marks: {token number: marker bytes} for the literal and comment tokens
 *   key(text: bytes) -> bytes | None
 *       None when the scanner rejects the text or it contains UESCAPE.
 *
 * The ICONST in "float ( n )" is kept, not masked: the grammar reads it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int start;          /* byte offset of the token */
    int end;            /* byte offset just past it */
    int token;          /* grammar token number */
    int keyword_kind;
} ScanToken;

typedef struct {
    ScanToken *tokens;
    int n_tokens;
    void *error;
} ScanResult;

typedef ScanResult (*scan_fn_t)(const char *);
typedef void (*free_fn_t)(ScanResult);

#define MAX_MARKS 16

static scan_fn_t scan_fn = NULL;
static free_fn_t free_fn = NULL;
static int mark_token[MAX_MARKS];
static PyObject *mark_bytes[MAX_MARKS];
static int n_marks = 0;
static int tok_uescape = -1, tok_float = -1, tok_lparen = -1, tok_iconst = -1;
static int tok_comment_a = -1, tok_comment_b = -1;

static PyObject *
maskkey_bind(PyObject *module, PyObject *args)
{
    unsigned long long scan_addr, free_addr;
    PyObject *marks, *k, *v;
    Py_ssize_t pos = 0;
    int i;

    if (!PyArg_ParseTuple(args, "KKO!iiiiii", &scan_addr, &free_addr, &PyDict_Type, &marks,
                          &tok_uescape, &tok_float, &tok_lparen, &tok_iconst, &tok_comment_a, &tok_comment_b))
        return NULL;
    if (PyDict_Size(marks) > MAX_MARKS) {
        PyErr_SetString(PyExc_ValueError, "too many marked tokens");
        return NULL;
    }
    for (i = 0; i < n_marks; i++)
        Py_CLEAR(mark_bytes[i]);
    n_marks = 0;
    while (PyDict_Next(marks, &pos, &k, &v)) {
        long t = PyLong_AsLong(k);
        if (t == -1 && PyErr_Occurred())
            return NULL;
        if (!PyBytes_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "markers must be bytes");
            return NULL;
        }
        mark_token[n_marks] = (int) t;
        Py_INCREF(v);
        mark_bytes[n_marks] = v;
        n_marks++;
    }
    scan_fn = (scan_fn_t) (uintptr_t) scan_addr;
    free_fn = (free_fn_t) (uintptr_t) free_addr;
    Py_RETURN_NONE;
}

static int
mark_of(int token)
{
    int i;
    for (i = 0; i < n_marks; i++)
        if (mark_token[i] == token)
            return i;
    return -1;
}

static PyObject *
maskkey_key(PyObject *module, PyObject *arg)
{
    const char *text;
    Py_ssize_t len, size, pos;
    ScanResult r;
    int i, before = -1, last = -1, n_cuts = 0, cut_end = 0;
    PyObject *out;
    char *w;

    if (scan_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind() first");
        return NULL;
    }
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "key() takes bytes");
        return NULL;
    }
    text = PyBytes_AS_STRING(arg);
    len = PyBytes_GET_SIZE(arg);
    if ((Py_ssize_t) strlen(text) != len)      /* a NUL inside: the scanner would stop there */
        Py_RETURN_NONE;

    r = scan_fn(text);
    if (r.error != NULL) {
        free_fn(r);
        Py_RETURN_NONE;
    }
    /* pass 1: which tokens are cut, and the size of the key */
    size = len;
    for (i = 0; i < r.n_tokens; i++) {
        ScanToken *t = &r.tokens[i];
        int m;
        if (t->token == tok_uescape) {
            free_fn(r);
            Py_RETURN_NONE;
        }
        m = mark_of(t->token);
        if (m >= 0 && !(t->token == tok_iconst && last == tok_lparen && before == tok_float)) {
            if (t->start < cut_end || t->end < t->start || t->end > len) {   /* never trust offsets blindly */
                free_fn(r);
                Py_RETURN_NONE;
            }
            size += 2 + PyBytes_GET_SIZE(mark_bytes[m]) - (t->end - t->start);
            t->keyword_kind = m + 1;          /* remember the cut (our copy of the array) */
            cut_end = t->end;
            n_cuts++;
        } else {
            t->keyword_kind = 0;
        }
        if (t->token != tok_comment_a && t->token != tok_comment_b) {
            /* comments do not move the "float (" window; every other token does */
            before = last;
            last = t->token;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) {
        free_fn(r);
        return NULL;
    }
    /* pass 2: copy */
    w = PyBytes_AS_STRING(out);
    pos = 0;
    for (i = 0; i < r.n_tokens && n_cuts; i++) {
        ScanToken *t = &r.tokens[i];
        PyObject *mb;
        if (!t->keyword_kind)
            continue;
        mb = mark_bytes[t->keyword_kind - 1];
        memcpy(w, text + pos, t->start - pos);
        w += t->start - pos;
        *w++ = '\0';
        memcpy(w, PyBytes_AS_STRING(mb), PyBytes_GET_SIZE(mb));
        w += PyBytes_GET_SIZE(mb);
        *w++ = '\0';
        pos = t->end;
    }
    memcpy(w, text + pos, len - pos);
    free_fn(r);
    return out;
}

static PyMethodDef maskkey_methods[] = {
    {"bind", maskkey_bind, METH_VARARGS,
     "bind(scan_addr, free_addr, marks, uescape, float_kw, lparen, iconst, comment_a, comment_b)."},
    {"key", maskkey_key, METH_O, "key(text: bytes) -> bytes | None: the masked-literal key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef maskkey_module = {
    PyModuleDef_HEAD_INIT, "_maskkey", "The masked-literal key in C (see policy.sql.masked).", -1,
    maskkey_methods,
};

PyMODINIT_FUNC
PyInit__maskkey(void)
{
    return PyModule_Create(&maskkey_module);
}
