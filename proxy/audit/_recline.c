/*
 * proxy.audit._recline: a recording's statement line, built in C.
 *
 * statement_line(seq, prev, now, text, cls, decision, rule, started, duration_ms, via,
 *                params, tag, rows, sqlstate, message, introspection)
 *     -> (line: bytes, digest: str) | None
 *
 * The reference is the Python path it stands in for, and falls back to:
 * proxy.audit.record.Chain.line(STATEMENT, now, fields) on a chain at
 * seq - 1 with that prev, fields being the dict SessionRecorder.statement()
 * builds ({text, class, decision, rule, started: iso_ts(started),
 * duration_ms, via} plus params, tag, rows, sqlstate, message when not None
 * and introspection: true when true).  line is canonical(fields) + "\n"
 * (orjson, OPT_SORT_KEYS) byte for byte; digest is hashlib.sha256(line
 * without its newline).hexdigest(), computed by Python's hashlib (OpenSSL),
 * never here.  The chain itself is not touched: the caller advances it.
 *
 * It returns None, with no exception set, whenever it cannot vouch for the
 * bytes, and the caller then takes the Python path:
 *
 *   - a str argument (text, decision, via, prev, and cls, rule, tag,
 *     sqlstate, message, params items when not None) that is not a str
 *     (subclasses are read as their UTF-8 data, as orjson does) or is not
 *     valid UTF-8 (lone surrogates: canonical() escapes those instead),
 *   - params that is not None nor a list or tuple of str / None (bytes are
 *     recorded as {"b64": ...}: Python's job),
 *   - seq or rows not an int (bool included) or outside int64,
 *   - now or started not a float or int, or outside 0 <= t < 253402300800
 *     (year 10000), NaN included,
 *   - duration_ms not a float, or one whose repr has an exponent or is not
 *     finite (orjson writes 1e-05 as 0.00001: only the plain-decimal range,
 *     where orjson and repr print the same digits, is produced here),
 *   - introspection not True or False,
 *   - any internal failure (memory, the hash call).
 *
 * A wrong argument count is a programming error: TypeError.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <time.h>

#define MAX_EPOCH 253402300800LL          /* 10000-01-01T00:00:00Z: iso_ts's %04d year stops before */
#define STACK_BYTES 4096                  /* most statement lines fit: no heap buffer */
#define FIXED_BYTES 512                   /* keys, punctuation, numbers, timestamps: ~330 at most */

static PyObject *sha256 = NULL;           /* hashlib.sha256 */
static PyObject *str_hexdigest = NULL;    /* "hexdigest" */

/* How orjson escapes a byte inside a JSON string: 0 raw, 'u' as \u00xx
 * (lowercase hex), anything else as backslash + that character. */
static char escape[256];
static const char hex[] = "0123456789abcdef";

static void
init_escape(void)
{
    int c;

    for (c = 0; c < 0x20; c++)
        escape[c] = 'u';
    escape['"'] = '"';
    escape['\\'] = '\\';
    escape['\b'] = 'b';
    escape['\t'] = 't';
    escape['\n'] = 'n';
    escape['\f'] = 'f';
    escape['\r'] = 'r';
}

typedef struct {
    const char *s;      /* UTF-8, NULL for None */
    Py_ssize_t n;
} Utf8;

/* 1 and the UTF-8 of a str; 0 (no exception) for anything else or invalid UTF-8. */
static int
utf8(PyObject *o, Utf8 *out)
{
    if (!PyUnicode_Check(o))
        return 0;
    out->s = PyUnicode_AsUTF8AndSize(o, &out->n);
    if (out->s == NULL) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static int
utf8_or_none(PyObject *o, Utf8 *out)
{
    if (o == Py_None) {
        out->s = NULL;
        out->n = 0;
        return 1;
    }
    return utf8(o, out);
}

/* 1 and the value of an exact int that fits int64; 0 (no exception) otherwise. */
static int
int64(PyObject *o, long long *out)
{
    int overflow;

    if (!PyLong_CheckExact(o))
        return 0;
    *out = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
        return 0;
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* v (0 <= v < 10**width) in width decimal digits, zero-padded. */
static void
digits(char *out, long v, int width)
{
    while (width--) {
        out[width] = (char) ('0' + v % 10);
        v /= 10;
    }
}

/* The last whole second formatted, as record.iso_ts keeps it: statements
 * come many to a second (the GIL serialises callers). */
static long long cached_sec = -1;
static char cached_prefix[19];           /* "YYYY-MM-DDTHH:MM:SS" */

/* Epoch seconds as record.iso_ts writes them, "YYYY-MM-DDTHH:MM:SS.ffffffZ"
 * (27 bytes, no NUL) into out: floor for the second, round-half-even
 * microseconds (nearbyint in the default rounding mode, as Python's
 * round()), a carry into the next second, gmtime_r as time.gmtime.  0 when
 * t is not a float or int in range. */
static int
iso_ts(PyObject *o, char *out)
{
    double t, whole, micro;
    long long sec;
    long us;
    time_t tt;
    struct tm g;

    if (PyFloat_CheckExact(o))
        t = PyFloat_AS_DOUBLE(o);
    else if (PyLong_CheckExact(o)) {
        t = PyLong_AsDouble(o);           /* exact below 2**53, which covers the range */
        if (t == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    }
    else
        return 0;
    if (!(t >= 0.0 && t < (double) MAX_EPOCH))
        return 0;
    whole = floor(t);
    micro = nearbyint((t - whole) * 1e6);  /* t - whole is exact; * 1e6 rounds as Python's does */
    sec = (long long) whole;
    us = (long) micro;
    if (us >= 1000000) {
        sec += 1;
        us -= 1000000;
    }
    if (sec >= MAX_EPOCH)
        return 0;
    if (sec != cached_sec) {
        tt = (time_t) sec;
        if (gmtime_r(&tt, &g) == NULL)
            return 0;
        digits(cached_prefix, g.tm_year + 1900, 4);
        cached_prefix[4] = '-';
        digits(cached_prefix + 5, g.tm_mon + 1, 2);
        cached_prefix[7] = '-';
        digits(cached_prefix + 8, g.tm_mday, 2);
        cached_prefix[10] = 'T';
        digits(cached_prefix + 11, g.tm_hour, 2);
        cached_prefix[13] = ':';
        digits(cached_prefix + 14, g.tm_min, 2);
        cached_prefix[16] = ':';
        digits(cached_prefix + 17, g.tm_sec, 2);
        cached_sec = sec;
    }
    memcpy(out, cached_prefix, 19);
    out[19] = '.';
    digits(out + 20, us, 6);
    out[26] = 'Z';
    return 1;
}

#define PUT(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) += sizeof(lit) - 1)

/* s as a JSON string, escaped as orjson does; at most 2 + 6 * n bytes. */
static char *
put_str(char *p, const char *s, Py_ssize_t n)
{
    Py_ssize_t i, run = 0;

    *p++ = '"';
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        char e = escape[c];

        if (!e)
            continue;
        memcpy(p, s + run, i - run);
        p += i - run;
        run = i + 1;
        *p++ = '\\';
        if (e == 'u') {
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        }
        else
            *p++ = e;
    }
    memcpy(p, s + run, n - run);
    p += n - run;
    *p++ = '"';
    return p;
}

static char *
put_str_or_null(char *p, const Utf8 *u)
{
    if (u->s == NULL) {
        PUT(p, "null");
        return p;
    }
    return put_str(p, u->s, u->n);
}

static char *
put_int(char *p, long long v)
{
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long) v : (unsigned long long) v;

    do {
        digits[n++] = (char) ('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *p++ = '-';
    while (n)
        *p++ = digits[--n];
    return p;
}

/* The bytes u can take as JSON (4 for null); -1 past PY_SSIZE_T_MAX / 8. */
static Py_ssize_t
bound(const Utf8 *u)
{
    if (u->s == NULL)
        return 4;
    if (u->n > PY_SSIZE_T_MAX / 8)
        return -1;
    return 2 + 6 * u->n;
}

static PyObject *
statement_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *params, *item, *line = NULL, *view = NULL, *hash = NULL, *digest = NULL, *result = NULL;
    Utf8 text, cls, decision, rule, via, prev, tag, sqlstate, message, u;
    long long seq, rows = 0;
    int has_rows, introspection;
    char ts[27], started[27], stack[STACK_BYTES];
    char *duration = NULL, *buf = stack, *p;
    Py_ssize_t need = FIXED_BYTES, i, n_params = 0, b, n;

    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError,
                        "statement_line(seq, prev, now, text, cls, decision, rule, started, duration_ms, via, "
                        "params, tag, rows, sqlstate, message, introspection) takes 16 arguments");
        return NULL;
    }
    /* Check every argument before writing anything. */
    if (!int64(args[0], &seq) || !utf8(args[1], &prev) || !iso_ts(args[2], ts) || !utf8(args[3], &text)
        || !utf8_or_none(args[4], &cls) || !utf8(args[5], &decision) || !utf8_or_none(args[6], &rule)
        || !iso_ts(args[7], started) || !PyFloat_CheckExact(args[8]) || !utf8(args[9], &via)
        || !utf8_or_none(args[11], &tag) || !utf8_or_none(args[13], &sqlstate)
        || !utf8_or_none(args[14], &message))
        Py_RETURN_NONE;
    has_rows = args[12] != Py_None;
    if (has_rows && !int64(args[12], &rows))
        Py_RETURN_NONE;
    if (args[15] == Py_True)
        introspection = 1;
    else if (args[15] == Py_False)
        introspection = 0;
    else
        Py_RETURN_NONE;
    params = args[10];
    if (params != Py_None) {
        if (!PyList_CheckExact(params) && !PyTuple_CheckExact(params))
            Py_RETURN_NONE;
        n_params = PySequence_Fast_GET_SIZE(params);
        for (i = 0; i < n_params; i++) {
            if (!utf8_or_none(PySequence_Fast_GET_ITEM(params, i), &u))
                Py_RETURN_NONE;
            b = bound(&u);
            if (b < 0 || need > PY_SSIZE_T_MAX / 2 - b)
                Py_RETURN_NONE;
            need += b + 1;
        }
    }
    {
        const Utf8 *strs[] = {&prev, &text, &cls, &decision, &rule, &via, &tag, &sqlstate, &message};
        for (i = 0; i < (Py_ssize_t) (sizeof(strs) / sizeof(strs[0])); i++) {
            b = bound(strs[i]);
            if (b < 0 || need > PY_SSIZE_T_MAX / 2 - b)
                Py_RETURN_NONE;
            need += b;
        }
    }
    duration = PyOS_double_to_string(PyFloat_AS_DOUBLE(args[8]), 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (duration == NULL)
        goto refuse;
    if (strpbrk(duration, "eni") != NULL || strlen(duration) > 32)
        goto refuse;
    if (need > STACK_BYTES) {
        buf = PyMem_Malloc(need);
        if (buf == NULL)
            goto refuse;
    }

    /* The keys in sorted order (orjson OPT_SORT_KEYS, all ASCII). */
    p = buf;
    PUT(p, "{\"class\":");
    p = put_str_or_null(p, &cls);
    PUT(p, ",\"decision\":");
    p = put_str(p, decision.s, decision.n);
    PUT(p, ",\"duration_ms\":");
    n = (Py_ssize_t) strlen(duration);
    memcpy(p, duration, n);
    p += n;
    if (introspection)
        PUT(p, ",\"introspection\":true");
    if (message.s != NULL) {
        PUT(p, ",\"message\":");
        p = put_str(p, message.s, message.n);
    }
    if (params != Py_None) {
        PUT(p, ",\"params\":[");
        /* Nothing since the sizing pass can have run Python code (no object was
         * allocated), so the items are the ones measured; checked again anyway. */
        if (PySequence_Fast_GET_SIZE(params) != n_params)
            goto refuse;
        for (i = 0; i < n_params; i++) {
            item = PySequence_Fast_GET_ITEM(params, i);
            if (!utf8_or_none(item, &u))
                goto refuse;
            if (i)
                *p++ = ',';
            p = put_str_or_null(p, &u);
        }
        *p++ = ']';
    }
    PUT(p, ",\"prev\":");
    p = put_str(p, prev.s, prev.n);
    if (has_rows) {
        PUT(p, ",\"rows\":");
        p = put_int(p, rows);
    }
    PUT(p, ",\"rule\":");
    p = put_str_or_null(p, &rule);
    PUT(p, ",\"seq\":");
    p = put_int(p, seq);
    if (sqlstate.s != NULL) {
        PUT(p, ",\"sqlstate\":");
        p = put_str(p, sqlstate.s, sqlstate.n);
    }
    PUT(p, ",\"started\":\"");
    memcpy(p, started, 27);
    p += 27;
    *p++ = '"';
    if (tag.s != NULL) {
        PUT(p, ",\"tag\":");
        p = put_str(p, tag.s, tag.n);
    }
    PUT(p, ",\"text\":");
    p = put_str(p, text.s, text.n);
    PUT(p, ",\"ts\":\"");
    memcpy(p, ts, 27);
    p += 27;
    PUT(p, "\",\"type\":\"statement\",\"via\":");
    p = put_str(p, via.s, via.n);
    *p++ = '}';
    *p++ = '\n';
    n = p - buf;

    line = PyBytes_FromStringAndSize(buf, n);
    if (line == NULL)
        goto refuse;
    /* The digest covers the line without its newline: a view on the bytes just made. */
    view = PyMemoryView_FromMemory(PyBytes_AS_STRING(line), n - 1, PyBUF_READ);
    if (view == NULL)
        goto refuse;
    hash = PyObject_CallOneArg(sha256, view);
    if (hash == NULL)
        goto refuse;
    digest = PyObject_CallMethodNoArgs(hash, str_hexdigest);
    if (digest == NULL || !PyUnicode_CheckExact(digest))
        goto refuse;
    result = PyTuple_Pack(2, line, digest);
    if (result == NULL)
        goto refuse;
    goto done;

refuse:
    PyErr_Clear();
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(digest);
    Py_XDECREF(hash);
    Py_XDECREF(view);
    Py_XDECREF(line);
    if (buf != stack)
        PyMem_Free(buf);
    if (duration != NULL)
        PyMem_Free(duration);
    return result;
}

static PyMethodDef recline_methods[] = {
    {"statement_line", (PyCFunction) (void (*)(void)) statement_line, METH_FASTCALL,
     "statement_line(seq, prev, now, text, cls, decision, rule, started, duration_ms, via, params, tag, rows, "
     "sqlstate, message, introspection) -> (line, digest) | None: a statement record's exact bytes "
     "and hash, or None when only the Python path can vouch for them."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef recline_module = {
    PyModuleDef_HEAD_INIT, "_recline",
    "A recording's statement line built in C (see proxy.audit.record and proxy.audit.writer).", -1,
    recline_methods,
};

PyMODINIT_FUNC
PyInit__recline(void)
{
    PyObject *hashlib;

    init_escape();
    if (sha256 == NULL) {
        hashlib = PyImport_ImportModule("hashlib");
        if (hashlib == NULL)
            return NULL;
        sha256 = PyObject_GetAttrString(hashlib, "sha256");
        Py_DECREF(hashlib);
        if (sha256 == NULL)
            return NULL;
    }
    if (str_hexdigest == NULL) {
        str_hexdigest = PyUnicode_InternFromString("hexdigest");
        if (str_hexdigest == NULL)
            return NULL;
    }
    return PyModule_Create(&recline_module);
}
