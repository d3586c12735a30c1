/*
 * proxy.audit._recline: a recording's statement line, and the whole
 * per-statement record (the statement sink), built in C.
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
 * without its newline).hexdigest(), computed by OpenSSL, never here: by
 * the libcrypto Python's hashlib is linked with, called directly
 * (SHA256_Init/Update/Final, found with dlsym in the already loaded
 * library at import: DIGEST_IMPL "libcrypto"), which skips hashlib's
 * per-call EVP fetch and context copies (0.8 to 0.2 us a line); or, when
 * those are not found, through hashlib itself (DIGEST_IMPL "hashlib").
 * The chain itself is not touched: the caller advances it.
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
 *
 *
 * write_statement(fallback, rec, st) -> True | False | fallback's result
 *
 * The statement tracker's emit (proxy.audit.writer.statement_sink, bound by
 * ClientConn._start_recording as partial(write_statement, _write_statement,
 * rec)): records the tracker's finished Statement st on the SessionRecorder
 * rec exactly as the reference fallback(rec, st) would, fallback being
 * proxy.net.client_conn._write_statement, which calls rec.statement(), which
 * settles the fields and calls _record(), _emit(), Chain.advance() and
 * _append().  It returns what rec.statement() would (True written, False
 * not), or fallback's result (None) when it hands over.
 *
 * 1. Checks, before anything is changed or the clock read (attribute reads
 *    only, no Python code runs).  Unless all of these hold it returns
 *    fallback(rec, st): st.verdict is not None, of a type without __bool__
 *    or __len__ (so "if v" is true), with allowed exactly True or False,
 *    statement_class an exact str and rule an exact str or None;
 *    st.skipped is False; st.copy_direction and st.sample are None;
 *    st.started and st.ended are exact floats; st's text, params, tag,
 *    rows, sqlstate, message and via can be read; rec.ended and rec.failed
 *    are False; rec._chain.sealed is False and its seq an int in 1..2**63-1;
 *    rec._fd an int in 0..INT_MAX (the file is open); rec._fsync an exact
 *    str other than "statement"; rec._capture_params exactly True or False;
 *    proxy.audit.record and proxy.audit.writer can be imported.
 * 2. statement()'s settling, in its order: now = rec._clock() (called:
 *    any clock); decision "denied" if not allowed else "allowed"; cls =
 *    statement_class (str() of an exact str is itself); duration_ms =
 *    builtins.round((ended - started) * 1000.0, 3) (the same double
 *    arithmetic; Python's own round, or round3's exact shortcut for it);
 *    params = st.params, or None when rec._capture_params is False; rows =
 *    st.rows, or record.rows_from_tag(tag) when tag is not None and rows
 *    is None; introspection = writer.is_introspection(text) (both looked up
 *    on their modules at each call, so monkeypatching applies; when it is
 *    introspection.is_introspection itself and the text names no catalog,
 *    False without the call, as its first test answers).  Attribute reads
 *    and the counters' writes go through peek/get/poke: a __slots__ entry
 *    at its offset once found, while its type is unchanged.  An exception
 *    from any of these propagates, as it would out of statement(), with
 *    nothing written or counted.
 * 3. When record.LINE_IMPL == "c" and record.statement_line_c is this
 *    module's statement_line, the line is built by the code statement_line
 *    runs (build_line) for rec._chain.seq + 1 and rec._chain.prev, read at
 *    that point as the reference does.  Otherwise, or when it refuses the
 *    record (surrogates, bytes params, ...), it returns rec._record(now,
 *    text, params, cls, decision, rule, started, duration_ms, tag, rows,
 *    sqlstate, message, introspection, via, None): the rest of statement()
 *    with the clock's reading (never fallback: the clock was read).
 * 4. The counters, as statement() does them: _n_rows += rows when rows is
 *    not None, _n_introspection += 1 when introspection is true,
 *    _n_statements += 1, then _n_denied += 1 when denied, else _n_errors +=
 *    1 when sqlstate is not None (Python's in-place add, by attribute).
 * 5. _emit: when rec.failed is False, rec._fd still an open-looking int,
 *    rec._fsync still not "statement" and the chain still not sealed (all
 *    read again: Python code ran since step 1) and rec._held None or an
 *    exact list (read before the advance; the reference reads it after,
 *    with no Python code in between), Chain.advance (seq += 1, prev =
 *    digest) and _append: held, the line appended to the list; else
 *    write(2) of the whole line, a short write
 *    continued with the rest, a write that took 0 bytes an
 *    OSError(EIO, "the recording's file took no bytes"), EINTR retried
 *    after PyErr_CheckSignals() as os.write does; any Exception there (the
 *    OSError os.write would raise, made by PyErr_SetFromErrno, or a
 *    signal handler's) goes to rec._fail(exc) and the result is False,
 *    nothing raising into the tracker; a BaseException that is not an
 *    Exception (KeyboardInterrupt from a handler) propagates, as out of
 *    _emit.  Anything else by then: rec._emit("statement", None, now,
 *    (line, digest)), the reference's own.
 *
 * The GIL is held throughout, write(2) included (os.write releases it; a
 * few hundred bytes to the page cache do not need that, and holding it is
 * simpler).  Differences from the reference, none reachable from the
 * proxy: the exception given to _fail has no traceback frames of
 * _append/os.write; builtins.round is the one found when the module was
 * loaded; rec._chain is read once, in step 1 (nothing assigns it after
 * __init__); rec._fsync is read before the write instead of after it (only
 * a signal handler run by an EINTR retry could change it in between).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"
#include <math.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <limits.h>
#include <unistd.h>
#include <dlfcn.h>

#define MAX_EPOCH 253402300800LL          /* 10000-01-01T00:00:00Z: iso_ts's %04d year stops before */
#define STACK_BYTES 4096                  /* most statement lines fit: no heap buffer */
#define FIXED_BYTES 512                   /* keys, punctuation, numbers, timestamps: ~330 at most */

static const char hex[] = "0123456789abcdef";
static PyObject *sha256 = NULL;           /* hashlib.sha256 */
static PyObject *str_hexdigest = NULL;    /* "hexdigest" */

/* libcrypto's SHA-256, from the copy of the library hashlib loaded (see the top comment).  The
 * context is opaque here: SHA256_CTX is 112 bytes in OpenSSL 1.1 and 3.x, given room to spare. */
typedef struct { _Alignas(16) unsigned char opaque[256]; } Sha256Ctx;
static int (*sha256_init)(Sha256Ctx *) = NULL;
static int (*sha256_update)(Sha256Ctx *, const void *, size_t) = NULL;
static int (*sha256_final)(unsigned char *, Sha256Ctx *) = NULL;
static int use_libcrypto = 0;

static void
find_libcrypto(void)
{
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so.1.1", NULL};

    for (int i = 0; names[i] != NULL && !use_libcrypto; i++) {
        void *lib = dlopen(names[i], RTLD_LAZY | RTLD_NOLOAD);   /* only the one already in this process */

        if (lib == NULL)
            continue;
        *(void **) &sha256_init = dlsym(lib, "SHA256_Init");
        *(void **) &sha256_update = dlsym(lib, "SHA256_Update");
        *(void **) &sha256_final = dlsym(lib, "SHA256_Final");
        use_libcrypto = sha256_init != NULL && sha256_update != NULL && sha256_final != NULL;
    }
}

/* hashlib.sha256(data[:n]).hexdigest() through libcrypto: a new str, or NULL with an exception set. */
static PyObject *
hex_sha256(const char *data, Py_ssize_t n)
{
    Sha256Ctx ctx;
    unsigned char md[32];
    PyObject *out;
    Py_UCS1 *q;

    if (sha256_init(&ctx) != 1 || sha256_update(&ctx, data, (size_t) n) != 1 || sha256_final(md, &ctx) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto SHA-256 failed");
        return NULL;
    }
    out = PyUnicode_New(64, 127);
    if (out == NULL)
        return NULL;
    q = PyUnicode_1BYTE_DATA(out);
    for (int i = 0; i < 32; i++) {
        q[2 * i] = (Py_UCS1) hex[md[i] >> 4];
        q[2 * i + 1] = (Py_UCS1) hex[md[i] & 15];
    }
    return out;
}

/* How orjson escapes a byte inside a JSON string: 0 raw, 'u' as \u00xx
 * (lowercase hex), anything else as backslash + that character. */
static char escape[256];

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

/* statement_line's work on its 16 arguments (the sink shares it): a new
 * reference to (line, digest) or to None; never NULL. */
static PyObject *
build_line(PyObject *const *args)
{
    PyObject *params, *item, *line = NULL, *view = NULL, *hash = NULL, *digest = NULL, *result = NULL;
    Utf8 text, cls, decision, rule, via, prev, tag, sqlstate, message, u;
    long long seq, rows = 0;
    int has_rows, introspection;
    char ts[27], started[27], stack[STACK_BYTES];
    char *duration = NULL, *buf = stack, *p;
    Py_ssize_t need = FIXED_BYTES, i, n_params = 0, b, n;

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
    /* The digest covers the line without its newline. */
    if (use_libcrypto) {
        digest = hex_sha256(PyBytes_AS_STRING(line), n - 1);
        if (digest == NULL)
            goto refuse;
    }
    else {
        view = PyMemoryView_FromMemory(PyBytes_AS_STRING(line), n - 1, PyBUF_READ);
        if (view == NULL)
            goto refuse;
        hash = PyObject_CallOneArg(sha256, view);
        if (hash == NULL)
            goto refuse;
        digest = PyObject_CallMethodNoArgs(hash, str_hexdigest);
        if (digest == NULL || !PyUnicode_CheckExact(digest))
            goto refuse;
    }
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

static PyObject *
statement_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError,
                        "statement_line(seq, prev, now, text, cls, decision, rule, started, duration_ms, via, "
                        "params, tag, rows, sqlstate, message, introspection) takes 16 arguments");
        return NULL;
    }
    return build_line(args);
}

/* ------------------------------------------------------------------ the sink */

enum {
    N_VERDICT, N_ALLOWED, N_STATEMENT_CLASS, N_RULE, N_SKIPPED, N_ENDED, N_STARTED, N_COPY_DIRECTION, N_SAMPLE,
    N_TEXT, N_PARAMS, N_TAG, N_ROWS, N_SQLSTATE, N_MESSAGE, N_VIA, N_FAILED, N_CHAIN, N_SEQ, N_PREV, N_SEALED,
    N_FD, N_FSYNC, N_CAPTURE_PARAMS, N_CLOCK, N_N_ROWS, N_N_INTROSPECTION, N_N_STATEMENTS, N_N_DENIED,
    N_N_ERRORS, N_RECORD, N_EMIT, N_FAIL, N_LINE_IMPL, N_STATEMENT_LINE_C, N_ROWS_FROM_TAG,
    N_IS_INTROSPECTION, N_HELD, N_RELEASE, V_ALLOWED, V_DENIED, V_STATEMENT, V_C, N_NAMES
};

static const char *const name_text[N_NAMES] = {
    "verdict", "allowed", "statement_class", "rule", "skipped", "ended", "started", "copy_direction", "sample",
    "text", "params", "tag", "rows", "sqlstate", "message", "via", "failed", "_chain", "seq", "prev", "sealed",
    "_fd", "_fsync", "_capture_params", "_clock", "_n_rows", "_n_introspection", "_n_statements", "_n_denied",
    "_n_errors", "_record", "_emit", "_fail", "LINE_IMPL", "statement_line_c", "rows_from_tag",
    "is_introspection", "_held", "release", "allowed", "denied", "statement", "c",
};

static PyObject *name[N_NAMES];           /* interned */
static PyObject *round_func = NULL;       /* builtins.round */
static PyObject *int_one = NULL, *int_three = NULL;
static PyObject *record_module = NULL;    /* proxy.audit.record and proxy.audit.writer, imported at the first call */
static PyObject *writer_module = NULL;
static PyObject *intro_reference = NULL;  /* proxy.audit.introspection.is_introspection (None: not found) */

/* The sink's attribute reads and writes at the attribute's offset, as CPython's own specialized
 * LOAD_ATTR_SLOT / STORE_ATTR_SLOT do: about 25 reads per statement, each otherwise a generic
 * lookup (type, descriptor, member) costing as much as building the record's line.
 *
 * An entry says: on objects of exactly this type, this name is a __slots__ entry (or a PyMemberDef
 * of T_OBJECT_EX, as proxy.session._track.Statement's) at this offset, found by looking the name up
 * in the type's MRO after a generic read had succeeded; valid while the type's version tag is the
 * one it was found under.  Any change to the type or its bases (a class attribute set or deleted,
 * __bases__ assigned) resets the tag to 0, so the next access takes the generic path and looks
 * again.  Types whose tp_getattro (tp_setattro, for writes) is not the generic one, and names that
 * are not plain object slots (properties, getsets such as Statement.tag, instance dicts), are
 * never cached: PyObject_GetAttr / PyObject_SetAttr then, as before. */
typedef struct {
    PyTypeObject *type;                     /* borrowed: compared by address only, never dereferenced */
    unsigned int version;
    Py_ssize_t offset;
    int writable;
} SlotEntry;

static SlotEntry slot_cache[N_NAMES][2];    /* two types a name (ended: Statement and SessionRecorder) */
static unsigned char slot_next[N_NAMES];

static int
version_valid(PyTypeObject *t)
{
#if PY_VERSION_HEX < 0x030C0000
    if (!PyType_HasFeature(t, Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
#endif
    return t->tp_version_tag != 0;
}

static SlotEntry *
slot_entry(PyObject *o, int n)
{
    PyTypeObject *t = Py_TYPE(o);

    for (int k = 0; k < 2; k++) {
        SlotEntry *e = &slot_cache[n][k];

        if (e->type == t && e->version == t->tp_version_tag && version_valid(t))
            return e;
    }
    return NULL;
}

/* After a generic access of o.name succeeded: remember where the slot is, or that it is none
 * (offset 0: the generic path, without looking again). */
static void
slot_learn(PyObject *o, int n)
{
    PyTypeObject *t = Py_TYPE(o);
    PyObject *mro = t->tp_mro, *descr = NULL;
    PyMemberDef *m;
    SlotEntry *e;

    if (!version_valid(t))
        return;
    e = &slot_cache[n][slot_next[n]];
    slot_next[n] ^= 1;
    e->type = t;
    e->version = t->tp_version_tag;
    e->offset = 0;
    e->writable = 0;
    if (t->tp_getattro != PyObject_GenericGetAttr || mro == NULL || !PyTuple_Check(mro))
        return;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro) && descr == NULL; i++) {
        PyObject *dict = ((PyTypeObject *) PyTuple_GET_ITEM(mro, i))->tp_dict;

        if (dict == NULL || !PyDict_Check(dict))
            return;
        descr = PyDict_GetItemWithError(dict, name[n]);
        if (descr == NULL && PyErr_Occurred()) {
            PyErr_Clear();
            return;
        }
    }
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
        return;
    m = ((PyMemberDescrObject *) descr)->d_member;
    if (m->type != T_OBJECT_EX || m->offset <= 0 || (m->flags & PY_AUDIT_READ))
        return;
    e->offset = m->offset;
    e->writable = !(m->flags & READONLY) && t->tp_setattro == PyObject_GenericSetAttr;
}

/* A new reference to o.name, or NULL with its exception set: one read, as PyObject_GetAttr. */
static PyObject *
get(PyObject *o, int n)
{
    SlotEntry *e = slot_entry(o, n);
    PyObject *v;

    if (e != NULL && e->offset) {
        v = *(PyObject **) ((char *) o + e->offset);
        if (v != NULL)
            return Py_NewRef(v);
        return PyObject_GetAttr(o, name[n]);  /* unset: the generic path raises its AttributeError */
    }
    v = PyObject_GetAttr(o, name[n]);
    if (v != NULL && e == NULL)
        slot_learn(o, n);
    return v;
}

/* A new reference to o.name, or NULL with no exception set. */
static PyObject *
peek(PyObject *o, int n)
{
    PyObject *v = get(o, n);

    if (v == NULL)
        PyErr_Clear();
    return v;
}

/* o.name = value (not stolen): 0, or -1 with an exception set. */
static int
poke(PyObject *o, int n, PyObject *value)
{
    SlotEntry *e = slot_entry(o, n);

    if (e != NULL && e->offset && e->writable) {
        PyObject **slot = (PyObject **) ((char *) o + e->offset);

        Py_XSETREF(*slot, Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(o, name[n], value);
}

/* Is o.name exactly want (an immortal-ish singleton: None, True, False)?  No exception either way. */
static int
attr_is(PyObject *o, int n, PyObject *want)
{
    PyObject *v = peek(o, n);
    int same = v == want;

    Py_XDECREF(v);
    return same;
}

/* Truth without calling Python: 1 when the type has no __bool__ / __len__ (always true). */
static int
plainly_true(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);

    return !(t->tp_as_number != NULL && t->tp_as_number->nb_bool != NULL)
        && !(t->tp_as_mapping != NULL && t->tp_as_mapping->mp_length != NULL)
        && !(t->tp_as_sequence != NULL && t->tp_as_sequence->sq_length != NULL);
}

/* 1 for an exact str equal to the interned ASCII word w; 0 otherwise (no exception). */
static int
is_word(PyObject *o, int w)
{
    return PyUnicode_CheckExact(o) && PyUnicode_Compare(o, name[w]) == 0;
}

/* o.name += delta, as the reference's "self._n_x += 1": -1 with an exception on failure. */
static int
bump(PyObject *o, int n, PyObject *delta)
{
    PyObject *v = get(o, n), *sum;
    int r;

    if (v == NULL)
        return -1;
    sum = PyNumber_InPlaceAdd(v, delta);
    Py_DECREF(v);
    if (sum == NULL)
        return -1;
    r = poke(o, n, sum);
    Py_DECREF(sum);
    return r;
}

/* The exception just raised, as the instance an "except Exception as e" would bind: a new
 * reference, or NULL (exception left set) when it is not an Exception (KeyboardInterrupt ...). */
static PyObject *
caught(void)
{
    PyObject *type, *value, *tb;

    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* The write just failed (an exception set): as the reference's "except Exception as e:
 * self._fail(e); return False" -- a new reference to False, or NULL with the exception left
 * set when it is not an Exception or _fail raised. */
static PyObject *
fail_recorder(PyObject *rec)
{
    PyObject *exc = caught(), *r;

    if (exc == NULL)
        return NULL;
    r = PyObject_CallMethodOneArg(rec, name[N_FAIL], exc);
    Py_DECREF(exc);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    return Py_NewRef(Py_False);
}

static int
modules(void)
{
    if (writer_module == NULL) {
        record_module = PyImport_ImportModule("proxy.audit.record");
        if (record_module == NULL)
            return -1;
        writer_module = PyImport_ImportModule("proxy.audit.writer");
        if (writer_module == NULL) {
            Py_CLEAR(record_module);
            return -1;
        }
    }
    if (intro_reference == NULL) {
        PyObject *m = PyImport_ImportModule("proxy.audit.introspection");

        intro_reference = m == NULL ? NULL : PyObject_GetAttrString(m, "is_introspection");
        Py_XDECREF(m);
        if (intro_reference == NULL) {
            PyErr_Clear();
            intro_reference = Py_NewRef(Py_None);
        }
    }
    return 0;
}

/* A new reference to module.name (proxy.audit.record's or writer's), or NULL with an exception set:
 * its dict first (what the generic lookup finds for these names, without the type's walk). */
static PyObject *
module_attr(PyObject *module, int n)
{
    PyObject *v = PyDict_GetItemWithError(PyModule_GetDict(module), name[n]);

    if (v != NULL)
        return Py_NewRef(v);
    return PyErr_Occurred() ? NULL : PyObject_GetAttr(module, name[n]);
}

/* round(x, 3), the record's duration_ms, as builtins.round computes it -- the double nearest to x
 * correctly rounded to three decimals, ties to even -- without its decimal conversion where that is
 * safe: x * 1000 is off the exact product by at most half an ulp (2**-22 under 2**31), so when the
 * computed product is more than 1e-6 away from a tie, the nearest integer to it is the nearest to
 * the exact product, and that integer divided by 1000.0 (IEEE division rounds correctly) is the
 * double nearest to that many thousandths: what round() returns.  A near-tie, a negative or huge
 * value, NaN or infinity goes to builtins.round. */
static PyObject *
round3(PyObject *value)
{
    double x = PyFloat_AS_DOUBLE(value), y = x * 1000.0, whole, frac;

    if (y >= 0.0 && y < 2147483648.0) {
        whole = floor(y);
        frac = y - whole;
        if (fabs(frac - 0.5) > 1e-6)
            return PyFloat_FromDouble((frac < 0.5 ? whole : whole + 1.0) / 1000.0);
    }
    {
        PyObject *round_args[2] = {value, int_three};

        return PyObject_Vectorcall(round_func, round_args, 2, NULL);
    }
}

/* proxy.audit.introspection.is_introspection's first test, in C: its answer is False when
 * ``not sql or not ("pg_" in sql or "PG_" in sql or "information_schema" in sql or
 * "INFORMATION_SCHEMA" in sql)``.  1 when text, an exact str of one-byte characters, is empty or
 * names none of the four (each has its "_" where this looks); 0 when the function must decide. */
static int
surely_not_introspection(PyObject *text)
{
    const unsigned char *p, *u, *end;
    Py_ssize_t n, i;

    if (!PyUnicode_CheckExact(text))
        return 0;
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0) {
        PyErr_Clear();
        return 0;
    }
#endif
    if (PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND)
        return 0;
    n = PyUnicode_GET_LENGTH(text);
    p = PyUnicode_1BYTE_DATA(text);
    end = p + n;
    for (u = p; (u = memchr(u, '_', (size_t) (end - u))) != NULL; u++) {
        i = u - p;
        if (i >= 2 && ((p[i - 2] == 'p' && p[i - 1] == 'g') || (p[i - 2] == 'P' && p[i - 1] == 'G')))
            return 0;
        if (i >= 11 && n - i - 1 >= 6
            && ((memcmp(p + i - 11, "information", 11) == 0 && memcmp(p + i + 1, "schema", 6) == 0)
                || (memcmp(p + i - 11, "INFORMATION", 11) == 0 && memcmp(p + i + 1, "SCHEMA", 6) == 0)))
            return 0;
    }
    return 1;
}

/* write(2) of all of line on fd as SessionRecorder._append does with os.write: 0, or -1 with an exception set. */
static int
append(int fd, PyObject *line)
{
    const char *p = PyBytes_AS_STRING(line);
    Py_ssize_t left = PyBytes_GET_SIZE(line), n;

    for (;;) {
        n = write(fd, p, (size_t) left);
        if (n < 0) {
            if (errno == EINTR) {                     /* as os.write: run the handlers, then again */
                if (PyErr_CheckSignals() < 0)
                    return -1;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (n >= left)
            return 0;
        if (n == 0) {
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", EIO, "the recording's file took no bytes");

            if (exc != NULL) {
                PyErr_SetObject((PyObject *) Py_TYPE(exc), exc);
                Py_DECREF(exc);
            }
            return -1;
        }
        p += n;
        left -= n;
    }
}

static PyObject *
write_statement(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fallback, *rec, *st;
    PyObject *verdict = NULL, *cls = NULL, *rule = NULL, *ended = NULL, *started = NULL, *text = NULL,
             *params = NULL, *tag = NULL, *rows = NULL, *sqlstate = NULL, *message = NULL, *via = NULL,
             *chain = NULL, *clock = NULL, *o = NULL, *now = NULL, *dur = NULL, *duration_ms = NULL,
             *intro = NULL, *func = NULL, *seq1 = NULL, *prev = NULL, *built = NULL, *result = NULL,
             *held = NULL;
    PyObject *line, *digest, *decision, *used_params;
    long long v;
    int denied, capture, fd, is_intro;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "write_statement(fallback, rec, st) takes 3 arguments");
        return NULL;
    }
    fallback = args[0];
    rec = args[1];
    st = args[2];

    /* 1. Is it the ordinary case?  Attribute reads only: no Python code runs, nothing changes. */
    if (modules() < 0)
        goto fall_back;
    verdict = peek(st, N_VERDICT);
    if (verdict == NULL || verdict == Py_None || !plainly_true(verdict))
        goto fall_back;
    o = peek(verdict, N_ALLOWED);
    if (o != Py_True && o != Py_False)
        goto fall_back;
    denied = o == Py_False;
    Py_CLEAR(o);
    cls = peek(verdict, N_STATEMENT_CLASS);
    rule = peek(verdict, N_RULE);
    if (cls == NULL || !PyUnicode_CheckExact(cls) || rule == NULL || (rule != Py_None && !PyUnicode_CheckExact(rule)))
        goto fall_back;
    if (!attr_is(st, N_SKIPPED, Py_False) || !attr_is(st, N_COPY_DIRECTION, Py_None)
        || !attr_is(st, N_SAMPLE, Py_None))
        goto fall_back;
    ended = peek(st, N_ENDED);
    started = peek(st, N_STARTED);
    if (ended == NULL || !PyFloat_CheckExact(ended) || started == NULL || !PyFloat_CheckExact(started))
        goto fall_back;
    text = peek(st, N_TEXT);
    params = peek(st, N_PARAMS);
    tag = peek(st, N_TAG);
    rows = peek(st, N_ROWS);
    sqlstate = peek(st, N_SQLSTATE);
    message = peek(st, N_MESSAGE);
    via = peek(st, N_VIA);
    if (text == NULL || params == NULL || tag == NULL || rows == NULL || sqlstate == NULL || message == NULL
        || via == NULL)
        goto fall_back;
    if (!attr_is(rec, N_ENDED, Py_False) || !attr_is(rec, N_FAILED, Py_False))
        goto fall_back;
    chain = peek(rec, N_CHAIN);
    if (chain == NULL || !attr_is(chain, N_SEALED, Py_False))
        goto fall_back;
    o = peek(chain, N_SEQ);
    if (o == NULL || !int64(o, &v) || v <= 0)
        goto fall_back;
    Py_CLEAR(o);
    o = peek(rec, N_FD);
    if (o == NULL || !int64(o, &v) || v < 0 || v > INT_MAX)
        goto fall_back;
    Py_CLEAR(o);
    o = peek(rec, N_FSYNC);
    if (o == NULL || !PyUnicode_CheckExact(o) || is_word(o, V_STATEMENT))
        goto fall_back;
    Py_CLEAR(o);
    o = peek(rec, N_CAPTURE_PARAMS);
    if (o != Py_True && o != Py_False)
        goto fall_back;
    capture = o == Py_True;
    Py_CLEAR(o);
    clock = peek(rec, N_CLOCK);
    if (clock == NULL)
        goto fall_back;

    /* 2. SessionRecorder.statement(), from the clock on. */
    now = PyObject_CallNoArgs(clock);
    if (now == NULL)
        goto error;
    decision = denied ? name[V_DENIED] : name[V_ALLOWED];
    dur = PyFloat_FromDouble((PyFloat_AS_DOUBLE(ended) - PyFloat_AS_DOUBLE(started)) * 1000.0);
    if (dur == NULL)
        goto error;
    duration_ms = round3(dur);
    if (duration_ms == NULL)
        goto error;
    used_params = capture ? params : Py_None;
    if (tag != Py_None && rows == Py_None) {
        func = module_attr(record_module, N_ROWS_FROM_TAG);
        if (func == NULL)
            goto error;
        Py_SETREF(rows, PyObject_CallOneArg(func, tag));
        Py_CLEAR(func);
        if (rows == NULL)
            goto error;
    }
    func = module_attr(writer_module, N_IS_INTROSPECTION);
    if (func == NULL)
        goto error;
    /* the writer's own is_introspection (not one a test put there) needs no call for most statements */
    intro = func == intro_reference && surely_not_introspection(text) ? Py_NewRef(Py_False)
                                                                       : PyObject_CallOneArg(func, text);
    Py_CLEAR(func);
    if (intro == NULL)
        goto error;
    /* The compiled line when record.LINE_IMPL == "c" and record.statement_line_c is this module's. */
    o = module_attr(record_module, N_LINE_IMPL);
    if (o == NULL)
        goto error;
    if (is_word(o, V_C)) {
        Py_CLEAR(o);
        o = module_attr(record_module, N_STATEMENT_LINE_C);
        if (o == NULL)
            goto error;
        if (PyCFunction_Check(o) && PyCFunction_GET_FUNCTION(o) == (PyCFunction) (void (*)(void)) statement_line) {
            Py_CLEAR(o);
            o = get(chain, N_SEQ);
            if (o == NULL)
                goto error;
            seq1 = PyNumber_Add(o, int_one);
            Py_CLEAR(o);
            if (seq1 == NULL)
                goto error;
            prev = get(chain, N_PREV);
            if (prev == NULL)
                goto error;
            {
                PyObject *line_args[16] = {seq1, prev, now, text, cls, decision, rule, started, duration_ms, via,
                                           used_params, tag, rows, sqlstate, message, intro};

                built = build_line(line_args);
            }
        }
    }
    Py_CLEAR(o);
    if (built == NULL || built == Py_None) {
        /* Refused (or not ours to build): the rest of the reference, with the clock already read. */
        PyObject *record_args[16] = {rec, now, text, used_params, cls, decision, rule, started, duration_ms,
                                     tag, rows, sqlstate, message, intro, via, Py_None};

        result = PyObject_VectorcallMethod(name[N_RECORD], record_args, 16 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                           NULL);
        goto done;
    }

    /* 3. The counters, in the reference's order. */
    if (rows != Py_None && bump(rec, N_N_ROWS, rows) < 0)
        goto error;
    is_intro = PyObject_IsTrue(intro);
    if (is_intro < 0 || (is_intro && bump(rec, N_N_INTROSPECTION, int_one) < 0))
        goto error;
    if (bump(rec, N_N_STATEMENTS, int_one) < 0)
        goto error;
    if (denied) {
        if (bump(rec, N_N_DENIED, int_one) < 0)
            goto error;
    }
    else if (sqlstate != Py_None && bump(rec, N_N_ERRORS, int_one) < 0)
        goto error;

    /* 4. _emit: anything unusual by now goes to the reference's own _emit with the built line. */
    o = get(rec, N_FAILED);
    if (o == NULL)
        goto error;
    if (o == Py_False) {
        Py_CLEAR(o);
        o = peek(rec, N_FD);
        fd = -1;
        if (o != NULL && int64(o, &v) && v >= 0 && v <= INT_MAX)
            fd = (int) v;
        Py_CLEAR(o);
        o = peek(rec, N_FSYNC);
        held = peek(rec, N_HELD);
        if (fd >= 0 && o != NULL && PyUnicode_CheckExact(o) && !is_word(o, V_STATEMENT)
            && held != NULL && (held == Py_None || PyList_CheckExact(held)) && attr_is(chain, N_SEALED, Py_False)) {
            Py_CLEAR(o);
            line = PyTuple_GET_ITEM(built, 0);
            digest = PyTuple_GET_ITEM(built, 1);
            /* Chain.advance: seq += 1, prev = digest; then _append: kept while held, else written. */
            o = get(chain, N_SEQ);
            if (o != NULL)
                Py_SETREF(o, PyNumber_Add(o, int_one));
            if (o == NULL || poke(chain, N_SEQ, o) < 0
                || poke(chain, N_PREV, digest) < 0
                || (held == Py_None ? append(fd, line) : PyList_Append(held, line)) < 0) {
                result = fail_recorder(rec);
                goto done;
            }
            result = Py_NewRef(Py_True);
            goto done;
        }
    }
    Py_CLEAR(o);
    {
        PyObject *emit_args[5] = {rec, name[V_STATEMENT], Py_None, now, built};

        result = PyObject_VectorcallMethod(name[N_EMIT], emit_args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    goto done;

fall_back:
    PyErr_Clear();
    {
        PyObject *fallback_args[2] = {rec, st};

        result = PyObject_Vectorcall(fallback, fallback_args, 2, NULL);
    }
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(verdict);
    Py_XDECREF(cls);
    Py_XDECREF(rule);
    Py_XDECREF(ended);
    Py_XDECREF(started);
    Py_XDECREF(text);
    Py_XDECREF(params);
    Py_XDECREF(tag);
    Py_XDECREF(rows);
    Py_XDECREF(sqlstate);
    Py_XDECREF(message);
    Py_XDECREF(via);
    Py_XDECREF(chain);
    Py_XDECREF(clock);
    Py_XDECREF(o);
    Py_XDECREF(now);
    Py_XDECREF(dur);
    Py_XDECREF(duration_ms);
    Py_XDECREF(intro);
    Py_XDECREF(func);
    Py_XDECREF(seq1);
    Py_XDECREF(prev);
    Py_XDECREF(built);
    Py_XDECREF(held);
    return result;
}

/* SessionRecorder.release() (the relay's, after each chunk it walked) in one C call when it is the
 * ordinary case: rec._held an exact list of exact bytes, rec.failed exactly False, rec._fd an int in
 * 0..INT_MAX, rec._fsync an exact str other than "statement".  Then, as the reference: rec._held =
 * None, and the lines (none: nothing; one: itself; more: joined) written as _write writes them, a
 * failure handed to rec._fail and False returned.  rec._held None and rec.failed exactly True or
 * False: nothing to write, rec._held set to None again, not failed returned.  Anything else:
 * rec.release(), the reference. */
static PyObject *
release(PyObject *module, PyObject *rec)
{
    PyObject *held, *o = NULL, *data = NULL, *result = NULL, *empty;
    Py_ssize_t i, n;
    long long v;
    int failed, fd;

    held = peek(rec, N_HELD);
    o = peek(rec, N_FAILED);
    if (held == NULL || o == NULL || (o != Py_True && o != Py_False))
        goto reference;
    failed = o == Py_True;
    Py_CLEAR(o);
    if (held == Py_None) {
        if (poke(rec, N_HELD, Py_None) < 0)
            goto done;
        result = Py_NewRef(failed ? Py_False : Py_True);
        goto done;
    }
    if (!PyList_CheckExact(held) || failed)
        goto reference;
    n = PyList_GET_SIZE(held);
    for (i = 0; i < n; i++)
        if (!PyBytes_CheckExact(PyList_GET_ITEM(held, i)))
            goto reference;
    o = peek(rec, N_FD);
    if (o == NULL || !int64(o, &v) || v < 0 || v > INT_MAX)
        goto reference;
    fd = (int) v;
    Py_CLEAR(o);
    o = peek(rec, N_FSYNC);
    if (o == NULL || !PyUnicode_CheckExact(o) || is_word(o, V_STATEMENT))
        goto reference;
    Py_CLEAR(o);
    if (poke(rec, N_HELD, Py_None) < 0)
        goto done;
    if (n == 0) {
        result = Py_NewRef(Py_True);
        goto done;
    }
    if (n == 1)
        data = Py_NewRef(PyList_GET_ITEM(held, 0));
    else {
        empty = PyBytes_FromStringAndSize(NULL, 0);
        if (empty == NULL)
            goto done;
        data = _PyBytes_Join(empty, held);
        Py_DECREF(empty);
        if (data == NULL)
            goto done;
    }
    if (append(fd, data) < 0) {
        result = fail_recorder(rec);
        goto done;
    }
    result = Py_NewRef(Py_True);
    goto done;
reference:
    PyErr_Clear();
    result = PyObject_CallMethodNoArgs(rec, name[N_RELEASE]);
done:
    Py_XDECREF(held);
    Py_XDECREF(o);
    Py_XDECREF(data);
    return result;
}

static PyObject *
digest_by_hashlib(PyObject *module, PyObject *flag)
{
    int on = PyObject_IsTrue(flag);

    if (on < 0)
        return NULL;
    use_libcrypto = 0;
    if (!on)
        find_libcrypto();
    return PyUnicode_FromString(use_libcrypto ? "libcrypto" : "hashlib");
}

static PyObject *
round3_hook(PyObject *module, PyObject *value)
{
    if (!PyFloat_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "_round3(x): x must be a float");
        return NULL;
    }
    return round3(value);   /* round_func and int_three: set by PyInit__recline, or no module */
}

static PyObject *
not_introspection_hook(PyObject *module, PyObject *text)
{
    return PyBool_FromLong(surely_not_introspection(text));
}

static PyMethodDef recline_methods[] = {
    {"statement_line", (PyCFunction) (void (*)(void)) statement_line, METH_FASTCALL,
     "statement_line(seq, prev, now, text, cls, decision, rule, started, duration_ms, via, params, tag, rows, "
     "sqlstate, message, introspection) -> (line, digest) | None: a statement record's exact bytes "
     "and hash, or None when only the Python path can vouch for them."},
    {"write_statement", (PyCFunction) (void (*)(void)) write_statement, METH_FASTCALL,
     "write_statement(fallback, rec, st) -> bool | fallback's result: record the tracker's finished "
     "statement st on the SessionRecorder rec as fallback(rec, st) would (see the module's comment)."},
    {"_digest_by_hashlib", (PyCFunction) digest_by_hashlib, METH_O,
     "_digest_by_hashlib(flag) -> the DIGEST_IMPL now in use: tests run statement_line both ways "
     "(True: through hashlib; False: libcrypto again when it was found)."},
    {"_round3", (PyCFunction) round3_hook, METH_O,
     "_round3(x) -> round(x, 3) as the sink computes it (for tests: it must equal builtins.round's)."},
    {"_not_introspection", (PyCFunction) not_introspection_hook, METH_O,
     "_not_introspection(text) -> True when the sink answers is_introspection(text) False without the call "
     "(for tests: it must be only where the function's first test says False)."},
    {"release", (PyCFunction) release, METH_O,
     "release(rec) -> bool: rec.release() (SessionRecorder), in C for the ordinary case."},
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
    PyObject *hashlib, *module;

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
    for (int i = 0; i < N_NAMES; i++) {
        if (name[i] == NULL) {
            name[i] = PyUnicode_InternFromString(name_text[i]);
            if (name[i] == NULL)
                return NULL;
        }
    }
    if (round_func == NULL) {
        PyObject *builtins = PyImport_ImportModule("builtins");

        if (builtins == NULL)
            return NULL;
        round_func = PyObject_GetAttrString(builtins, "round");
        Py_DECREF(builtins);
        if (round_func == NULL)
            return NULL;
    }
    if (int_one == NULL && (int_one = PyLong_FromLong(1)) == NULL)
        return NULL;
    if (int_three == NULL && (int_three = PyLong_FromLong(3)) == NULL)
        return NULL;
    find_libcrypto();
    module = PyModule_Create(&recline_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddStringConstant(module, "DIGEST_IMPL", use_libcrypto ? "libcrypto" : "hashlib") < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
