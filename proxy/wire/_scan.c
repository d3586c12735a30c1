/*
 * proxy.wire._scan: the compiled hot-path helpers of proxy.wire.  Each has a
 * pure-Python reference, which is also the fallback when this module was not
 * built (for walk_client, the relay's own per-message dispatch; for
 * walk_server, ServerStream.feed's own loop body); the tests run both and
 * compare them.
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
 *
 * walk_client(buf, pos, stop, max_size, tracker[, query]) -> (pos, syncs)
 *
 * The client->server counterpart of skip, for ClientConn._relay: from pos,
 * step over whole client messages (type byte, big-endian int32 length
 * counting itself) doing for each exactly what _relay's Python dispatch does
 * for it -- which is the reference: the walk is only an accelerator, and
 * proxy.wire.framing.walk_client_noop (walk nothing) must give the same
 * session.  tracker is the session's StatementTracker, or None.
 *
 *   Bind ('B')      tracker: decoded as decode_bind does (the decoder above),
 *                   then tracker.bind(portal, statement, params); a Bind the
 *                   decoder refuses is not walked (Python's decode_bind then
 *                   decodes it leniently or raises).
 *   Execute ('E')   tracker: tracker.execute(portal), the name as
 *                   decode_execute gives it; no NUL or not UTF-8: not walked.
 *   Sync ('S')      counted in syncs; tracker: tracker.sync().
 *   CopyData ('d')  tracker: tracker.copy_data(payload bytes).
 *   Describe ('D'), Flush ('H'), CopyDone ('c'), CopyFail ('f'): nothing.
 *   Query ('Q')     only given query, the tuple of proxy.net.gate.
 *                   query_walk_context (scope, Judge._verdicts,
 *                   Judge._masked_verdicts, the ClassificationCache, its
 *                   _data, _maskkey.key, metrics' statement counts, the
 *                   longest text walked): walked when _relay's branch would
 *                   find the verdict in the judge's caches -- the body is
 *                   UTF-8 text ending at its only NUL, no longer than the
 *                   limit, and either (scope, text) is in _verdicts, or
 *                   ("t", text) is not in the cache, the masked key of the
 *                   text's bytes is not None, ("m", key) is in the cache
 *                   and literal independent, and (scope, key) is in
 *                   _masked_verdicts -- and that verdict's allowed is True
 *                   and its prepares and deallocates are empty tuples.  It
 *                   then does, in order, what the branch does: for a masked
 *                   hit the cache's move_to_end and masked_hits += 1; the
 *                   statement count of (allowed, statement_class) + 1;
 *                   tracker.query(text, verdict); one more sync.  Anything
 *                   else stops the walk with nothing changed.
 *   Parse ('P')     only given query, and only of the unnamed statement (an
 *                   empty name; a named one goes into the enforcer's and
 *                   the session's books, in Python): its text up to its NUL,
 *                   then an int16 count n >= 0 and exactly n uint32 types,
 *                   as decode_parse reads them; walked as a Query is, but
 *                   with no sync and tracker.parse("", text, verdict,
 *                   types) for tracker.query.
 *
 * Without a tracker Bind and Execute are not decoded (as in _relay).  The
 * walk stops before the first message that is not whole in buf (or with
 * fewer than 5 bytes left), has a length below 4 or above max_size (the
 * scanner's next_frame raises the error), has a non-zero byte in the
 * 256-byte table stop (the relay puts Bind there while a denied prepared
 * statement exists: Enforcer.check_bind must see each Bind), or has any
 * other type (Query or Parse unless walked as above, Close, FunctionCall,
 * Terminate, PasswordMessage, unknown types: the policy's, or an error, in
 * Python).  Returns the offset
 * after the last message walked and the number of Syncs among them.
 *
 * The buffer export is held for the whole walk: the tracker's methods are
 * Python code, and a bytearray that is exported cannot be resized (an
 * attempt raises BufferError there), so the pointer stays valid.  An
 * exception raised by a tracker method propagates at once: the tracker has
 * seen every call up to the one that raised, and the offset and Sync count
 * reached are lost (the relay fails the session; see ClientConn._relay).
 *
 * walk_server(stream, data, pos, stop, hook) -> pos
 *
 * The header walk of the server->client stream when a message hook is set
 * (the session recording), for ServerStream.feed: skip, plus the delivery
 * of whole watched messages to the hook, done exactly as feed's Python loop
 * body does it -- which is the reference: with server_stream.walk_server set
 * to None, feed uses skip and its own loop body, and must give the same
 * outputs, hook calls, exceptions and stream state.  stream is the
 * ServerStream, data the bytes feed is walking, stop the 256-byte table feed
 * holds (stream._table), hook feed's message hook (feed reads
 * stream._on_message once per call and keeps using that hook for the rest of
 * the call, even if it is replaced meanwhile: so does this walk), or None.
 *
 * From pos, step over whole messages whose type is not in stop as skip does,
 * adding the payload bytes of CopyData ('d') to stream.copy_bytes when hook
 * is not None.  At a message whose type is in stop, deliver it when
 *
 *   - data is exactly bytes (a bytearray or memoryview: never delivered,
 *     since feed's txn_status slice would be one of those, and a hook could
 *     change a bytearray's bytes; the walk is then skip's),
 *   - hook is not None,
 *   - its length is at least 4 and at most MAX_WATCHED_SIZE (1 MiB:
 *     server_stream.MAX_ERROR_SIZE), and it ends inside data,
 *   - its type is WATCHED: CommandComplete 'C', EmptyQueryResponse 'I',
 *     PortalSuspended 's', ErrorResponse 'E', CopyInResponse 'G',
 *     CopyOutResponse 'H', CopyBothResponse 'W', ReadyForQuery 'Z' (so never
 *     a DataRow: row capture stays in Python),
 *   - and it is not an ErrorResponse while stream._on_error is not None
 *     (read at that message: Python holds and rewrites it);
 *
 * that is, in this order: the CopyData bytes counted since the last update
 * are added to stream.copy_bytes (stream.copy_bytes += n, as feed does after
 * skip); for ReadyForQuery, stream.ready_count += 1 and, when a byte follows
 * the header in data (always, unless the length is 4), stream.txn_status =
 * that byte as bytes; then hook(type, body as bytes); then stream._table is
 * read again (the hook may change it, e.g. through watch_rows) and the walk
 * goes on with it.  Any other message in stop ends the walk before it, as
 * does a length below 4, a message not whole in data or fewer than 5 bytes
 * left: feed's loop body takes over there.  Returns the offset reached; the
 * CopyData bytes stepped over are in stream.copy_bytes by then.
 *
 * An exception raised by the hook (or by reading or setting an attribute of
 * stream) propagates at once, and out of feed: stream.copy_bytes,
 * ready_count and txn_status are then as the reference leaves them -- updated
 * for every message up to and including the one whose hook call raised --
 * and the offset reached is lost (with feed's local state, as in Python).
 * The table must stay a 256-byte buffer (ValueError otherwise, as skip).
 * data is only read; a bytes object cannot change under the hook's calls.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Hold the stop table table_obj in *table (its buffer, 256 bytes); 0, or -1 with the exception set
 * and nothing held. */
static int
hold_table(PyObject *table_obj, Py_buffer *table)
{
    if (PyObject_GetBuffer(table_obj, table, PyBUF_SIMPLE) < 0)
        return -1;
    if (table->len != 256) {
        PyBuffer_Release(table);
        PyErr_SetString(PyExc_ValueError, "stop must be 256 bytes long");
        return -1;
    }
    return 0;
}

/* A walk's arguments: the data, where to start (not negative), and the 256-byte table of the
 * types to stop at.  0 with both buffers held, or -1 with an exception set and neither held. */
static int
walk_buffers(PyObject *data_obj, Py_ssize_t pos, PyObject *stop_obj, Py_buffer *data, Py_buffer *stop)
{
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "pos must not be negative");
        return -1;
    }
    if (PyObject_GetBuffer(data_obj, data, PyBUF_SIMPLE) < 0)
        return -1;
    if (hold_table(stop_obj, stop) < 0) {
        PyBuffer_Release(data);
        return -1;
    }
    return 0;
}

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
    if (walk_buffers(args[0], pos, args[2], &data, &stop) < 0)
        return NULL;
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

/*
 * The Bind body p[start:end] (0 <= start < end, inside the buffer), decoded
 * into out[0] portal, out[1] statement, out[2] params (new references).
 * Returns 1 when decoded, 0 to refuse (nothing set, no exception: the
 * reference must judge it), -1 on a real error (exception set, memory).
 */
static int
bind_body(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, PyObject **out)
{
    Py_ssize_t pos = start;
    const unsigned char *fmts;
    PyObject *portal = NULL, *statement = NULL, *params = NULL;
    unsigned int nfmt, nparams, nres, i;
    int fmt_all;

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

    out[0] = portal;
    out[1] = statement;
    out[2] = params;
    return 1;

refuse_or_error:
    if (PyErr_Occurred())
        goto error;
refuse:
    Py_XDECREF(params);             /* slots not yet filled are NULL: fine for the list */
    Py_XDECREF(statement);
    Py_XDECREF(portal);
    return 0;

error:
    Py_XDECREF(params);
    Py_XDECREF(statement);
    Py_XDECREF(portal);
    return -1;
}

static PyObject *
scan_decode_bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t start, end;
    PyObject *out[3], *result;
    int ok;

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
    ok = bind_body((const unsigned char *) view.buf, start, end, out);
    PyBuffer_Release(&view);
    if (ok < 0)
        return NULL;
    if (ok == 0)
        Py_RETURN_NONE;
    if ((result = PyTuple_New(3)) == NULL) {
        Py_DECREF(out[0]);
        Py_DECREF(out[1]);
        Py_DECREF(out[2]);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, out[0]);
    PyTuple_SET_ITEM(result, 1, out[1]);
    PyTuple_SET_ITEM(result, 2, out[2]);
    return result;

refuse:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* Interned method names of the statement tracker (set by the module init). */
static PyObject *str_bind, *str_execute, *str_sync, *str_copy_data;

/* tracker.<name>(*args), args[0] being the tracker; 0, or -1 with the exception set. */
static int
call_tracker(PyObject *name, PyObject *const *args, size_t nargs)
{
    PyObject *r = PyObject_VectorcallMethod(name, args, nargs, NULL);

    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Interned names for the Query walk (set by the module init). */
static PyObject *str_query, *str_allowed, *str_prepares, *str_deallocates, *str_statement_class,
                *str_literal_independent, *str_move_to_end, *str_masked_hits, *str_t, *str_m, *int_one,
                *str_parse, *str_empty;

#define QUERY_CONTEXT_SIZE 8

/* The Query walk's context, checked once per walk: 0, or -1 with TypeError set. */
static int
check_query_context(PyObject *ctx, Py_ssize_t *limit)
{
    if (!PyTuple_CheckExact(ctx) || PyTuple_GET_SIZE(ctx) != QUERY_CONTEXT_SIZE ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(ctx, 0)) || !PyDict_Check(PyTuple_GET_ITEM(ctx, 1)) ||
        !PyDict_Check(PyTuple_GET_ITEM(ctx, 2)) || !PyDict_Check(PyTuple_GET_ITEM(ctx, 4)) ||
        !PyCallable_Check(PyTuple_GET_ITEM(ctx, 5)) || !PyDict_Check(PyTuple_GET_ITEM(ctx, 6)) ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(ctx, 7))) {
        PyErr_SetString(PyExc_TypeError, "walk_client: query must be None or the tuple of gate.query_walk_context");
        return -1;
    }
    *limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(ctx, 7));
    if (*limit == -1 && PyErr_Occurred())
        return -1;
    return 0;
}

/* A lookup that tells "absent" (0) from an error (-1); *out is borrowed. */
static int
dict_get(PyObject *dict, PyObject *key, PyObject **out)
{
    *out = PyDict_GetItemWithError(dict, key);
    if (*out != NULL)
        return 1;
    return PyErr_Occurred() ? -1 : 0;
}

/* 1 if the attribute of obj is exactly an empty tuple, 0 if not, -1 on error. */
static int
attr_is_empty_tuple(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    int r;

    if (v == NULL)
        return -1;
    r = PyTuple_CheckExact(v) && PyTuple_GET_SIZE(v) == 0;
    Py_DECREF(v);
    return r;
}

/*
 * The statement text of a Query, or of a Parse of the unnamed statement
 * (param_types not NULL), its UTF-8 bytes at [start, end): walk the message
 * (1) when ClientConn._relay's Python branch would find its verdict in the
 * judge's caches, allowed and without effects, and do what that branch does;
 * else leave it to the branch (0, having changed nothing); -1 with an
 * exception set.  See the header.
 */
static int
walk_statement(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, PyObject *ctx, Py_ssize_t limit,
               PyObject *tracker, PyObject *param_types)
{
    PyObject *scope = PyTuple_GET_ITEM(ctx, 0), *verdicts = PyTuple_GET_ITEM(ctx, 1);
    PyObject *masked_verdicts = PyTuple_GET_ITEM(ctx, 2), *cache = PyTuple_GET_ITEM(ctx, 3);
    PyObject *cache_data = PyTuple_GET_ITEM(ctx, 4), *key_fn = PyTuple_GET_ITEM(ctx, 5);
    PyObject *counts = PyTuple_GET_ITEM(ctx, 6);
    PyObject *text = NULL, *k = NULL, *raw = NULL, *mk = NULL, *mkey = NULL, *found, *verdict = NULL;
    PyObject *allowed = NULL, *cls = NULL, *count_key = NULL, *count, *tmp;
    int r, walked = 0;

    text = PyUnicode_DecodeUTF8((const char *) p + start, end - start, NULL);
    if (text == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            return -1;
        PyErr_Clear();              /* decode_query / decode_parse raise their ClientProtocolError */
        return 0;
    }
    if (PyUnicode_GET_LENGTH(text) > limit)
        goto leave;                 /* the gate's worker, or too long to be cached */

    /* Judge: an exact repeat's verdict. */
    if ((k = PyTuple_Pack(2, scope, text)) == NULL)
        goto error;
    if ((r = dict_get(verdicts, k, &verdict)) < 0)
        goto error;
    if (r == 0) {
        /* ClassificationCache.lookup: the exact text classified -> Judge decides (Python's). */
        Py_DECREF(k);
        if ((k = PyTuple_Pack(2, str_t, text)) == NULL)
            goto error;
        if ((r = dict_get(cache_data, k, &found)) != 0)
            goto leave_or_error;
        /* The masked key, as masked_key(text) computes it: _maskkey.key of the text's UTF-8. */
        if ((raw = PyBytes_FromStringAndSize((const char *) p + start, end - start)) == NULL ||
            (mk = PyObject_CallOneArg(key_fn, raw)) == NULL)
            goto error;
        if (mk == Py_None)
            goto leave;
        if ((mkey = PyTuple_Pack(2, str_m, mk)) == NULL)
            goto error;
        if ((r = dict_get(cache_data, mkey, &found)) <= 0)
            goto leave_or_error;
        if ((tmp = PyObject_GetAttr(found, str_literal_independent)) == NULL)
            goto error;
        r = PyObject_IsTrue(tmp);
        Py_DECREF(tmp);
        if (r <= 0)
            goto leave_or_error;
        /* Judge: the verdict of every literal value. */
        Py_DECREF(k);
        if ((k = PyTuple_Pack(2, scope, mk)) == NULL)
            goto error;
        if ((r = dict_get(masked_verdicts, k, &verdict)) <= 0)
            goto leave_or_error;
    }
    Py_INCREF(verdict);             /* held: the calls below run Python code */

    /* Walked only when allowed (exactly True) and without effects (apply_effects does nothing). */
    if ((allowed = PyObject_GetAttr(verdict, str_allowed)) == NULL)
        goto error;
    if (allowed != Py_True)
        goto leave;
    if ((r = attr_is_empty_tuple(verdict, str_prepares)) <= 0 ||
        (r = attr_is_empty_tuple(verdict, str_deallocates)) <= 0)
        goto leave_or_error;
    if ((cls = PyObject_GetAttr(verdict, str_statement_class)) == NULL)
        goto error;

    /* From here on, what the Python path does, in its order. A masked hit: the cache's LRU and
     * counter (ClassificationCache.lookup). */
    if (mkey != NULL) {
        if ((tmp = PyObject_CallMethodOneArg(cache_data, str_move_to_end, mkey)) == NULL)
            goto error;
        Py_DECREF(tmp);
        if ((count = PyObject_GetAttr(cache, str_masked_hits)) == NULL)
            goto error;
        tmp = PyNumber_Add(count, int_one);
        Py_DECREF(count);
        if (tmp == NULL)
            goto error;
        r = PyObject_SetAttr(cache, str_masked_hits, tmp);
        Py_DECREF(tmp);
        if (r < 0)
            goto error;
    }
    /* metrics.statement(verdict.allowed, verdict.statement_class) */
    if ((count_key = PyTuple_Pack(2, allowed, cls)) == NULL)
        goto error;
    if ((r = dict_get(counts, count_key, &count)) < 0)
        goto error;
    tmp = r ? PyNumber_Add(count, int_one) : PyLong_FromLong(1);
    if (tmp == NULL)
        goto error;
    r = PyDict_SetItem(counts, count_key, tmp);
    Py_DECREF(tmp);
    if (r < 0)
        goto error;
    /* tracker.query(text, verdict), or tracker.parse("", text, verdict, param_types) */
    if (tracker != NULL) {
        PyObject *a[5] = {tracker, text, verdict, NULL, NULL};
        if (param_types != NULL) {
            a[1] = str_empty;
            a[2] = text;
            a[3] = verdict;
            a[4] = param_types;
        }
        tmp = param_types == NULL ? PyObject_VectorcallMethod(str_query, a, 3, NULL)
                                  : PyObject_VectorcallMethod(str_parse, a, 5, NULL);
        if (tmp == NULL)
            goto error;
        Py_DECREF(tmp);
    }
    walked = 1;
    goto leave;

leave_or_error:
    if (r < 0)
        goto error;
leave:
    Py_XDECREF(count_key);
    Py_XDECREF(cls);
    Py_XDECREF(allowed);
    Py_XDECREF(verdict);
    Py_XDECREF(mkey);
    Py_XDECREF(mk);
    Py_XDECREF(raw);
    Py_XDECREF(k);
    Py_DECREF(text);
    return walked;

error:
    walked = -1;
    goto leave;
}

/* A Query body [start, end): its text ends at its only NUL, the body's last byte (decode_query). */
static int
walk_query(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, PyObject *ctx, Py_ssize_t limit,
           PyObject *tracker)
{
    if (start >= end || memchr(p + start, 0, (size_t) (end - start)) != p + end - 1)
        return 0;                   /* no terminator, or bytes after it: decode_query raises it */
    return walk_statement(p, start, end - 1, ctx, limit, tracker, NULL);
}

/* A Parse body [start, end) of the unnamed statement, as decode_parse reads it: an empty name, the
 * text up to its NUL, an int16 count n >= 0 and exactly n uint32 parameter types. */
static int
walk_parse(const unsigned char *p, Py_ssize_t start, Py_ssize_t end, PyObject *ctx, Py_ssize_t limit,
           PyObject *tracker)
{
    const unsigned char *nul;
    Py_ssize_t pos, i;
    int16_t count;
    PyObject *types;
    int r;

    if (start >= end || p[start] != 0)
        return 0;                   /* a named statement (or none): Python's */
    nul = memchr(p + start + 1, 0, (size_t) (end - start - 1));
    if (nul == NULL)
        return 0;
    pos = nul - p + 1;
    if (end - pos < 2)
        return 0;
    count = (int16_t) read_u16(p + pos);
    pos += 2;
    if (count < 0 || end - pos != 4 * (Py_ssize_t) count)
        return 0;
    if ((types = PyTuple_New(count)) == NULL)
        return -1;
    for (i = 0; i < count; i++) {
        PyObject *t = PyLong_FromUnsignedLong((unsigned long) (uint32_t) read_i32(p + pos + 4 * i));
        if (t == NULL) {
            Py_DECREF(types);
            return -1;
        }
        PyTuple_SET_ITEM(types, i, t);
    }
    r = walk_statement(p, start + 1, nul - p, ctx, limit, tracker, types);
    Py_DECREF(types);
    return r;
}

static PyObject *
scan_walk_client(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, stop;
    Py_ssize_t pos, n, max_size, syncs = 0, limit = 0;
    PyObject *tracker, *query = NULL;
    const unsigned char *p, *table;

    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "walk_client(buf, pos, stop, max_size, tracker[, query]) takes 5 or 6 arguments");
        return NULL;
    }
    if (nargs == 6 && args[5] != Py_None) {
        query = args[5];
        if (check_query_context(query, &limit) < 0)
            return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    max_size = PyLong_AsSsize_t(args[3]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    tracker = args[4] == Py_None ? NULL : args[4];
    /* Held until the walk returns: while exported, a bytearray cannot be resized, so p and n stay
     * valid across the tracker's calls (Python code, which could try: it gets a BufferError). */
    if (walk_buffers(args[0], pos, args[2], &data, &stop) < 0)
        return NULL;
    p = (const unsigned char *) data.buf;
    table = (const unsigned char *) stop.buf;
    n = data.len;

    while (n - pos >= 5) {
        unsigned char type = p[pos];
        int32_t length;
        Py_ssize_t start, end;

        if (table[type])
            break;
        length = read_i32(p + pos + 1);
        if (length < 4 || (Py_ssize_t) length > max_size)     /* next_frame raises the error */
            break;
        end = pos + 1 + (Py_ssize_t) length;
        if (end > n)
            break;
        start = pos + 5;
        switch (type) {
        case 'D':                   /* Describe, Flush, CopyDone, CopyFail: forwarded, nothing else */
        case 'H':
        case 'c':
        case 'f':
            break;
        case 'S':                   /* Sync */
            if (tracker != NULL) {
                PyObject *a[1] = {tracker};
                if (call_tracker(str_sync, a, 1) < 0)
                    goto error;
            }
            syncs++;
            break;
        case 'd':                   /* CopyData */
            if (tracker != NULL) {
                PyObject *a[2] = {tracker, PyLong_FromSsize_t(end - start)};
                int rc;
                if (a[1] == NULL)
                    goto error;
                rc = call_tracker(str_copy_data, a, 2);
                Py_DECREF(a[1]);
                if (rc < 0)
                    goto error;
            }
            break;
        case 'E':                   /* Execute: the portal name as decode_execute gives it */
            if (tracker != NULL) {
                PyObject *a[2] = {tracker, NULL};
                Py_ssize_t q = start;
                int rc;
                if (start < end && p[start] == 0)
                    a[1] = PyUnicode_New(0, 0);
                else if ((a[1] = bind_name(p, &q, end)) == NULL && !PyErr_Occurred())
                    goto done;      /* no NUL, or not UTF-8: decode_execute raises it */
                if (a[1] == NULL)
                    goto error;
                rc = call_tracker(str_execute, a, 2);
                Py_DECREF(a[1]);
                if (rc < 0)
                    goto error;
            }
            break;
        case 'B':                   /* Bind: decoded as decode_bind does, or left to it */
            if (tracker != NULL) {
                PyObject *a[4];
                int rc = start < end ? bind_body(p, start, end, a + 1) : 0;
                if (rc < 0)
                    goto error;
                if (rc == 0)
                    goto done;
                a[0] = tracker;
                rc = call_tracker(str_bind, a, 4);
                Py_DECREF(a[1]);
                Py_DECREF(a[2]);
                Py_DECREF(a[3]);
                if (rc < 0)
                    goto error;
            }
            break;
        case 'Q':                   /* Query, Parse of the unnamed statement: walked when the verdict */
        case 'P': {                 /* is cached, allowed and effect-free */
            int rc;
            if (query == NULL)
                goto done;
            rc = type == 'Q' ? walk_query(p, start, end, query, limit, tracker)
                             : walk_parse(p, start, end, query, limit, tracker);
            if (rc < 0)
                goto error;
            if (rc == 0)
                goto done;
            if (type == 'Q')
                syncs++;            /* a Query earns a ReadyForQuery; a Parse does not */
            break;
        }
        default:                    /* a named Parse, Close, FunctionCall, Terminate, ...: Python's */
            goto done;
        }
        pos = end;
    }
done:
    PyBuffer_Release(&stop);
    PyBuffer_Release(&data);
    return Py_BuildValue("(nn)", pos, syncs);

error:
    PyBuffer_Release(&stop);
    PyBuffer_Release(&data);
    return NULL;
}

/* Interned attribute names of ServerStream (set by the module init). */
static PyObject *str_table, *str_on_error, *str_copy_bytes, *str_ready_count, *str_txn_status;

/* The largest watched message the walk delivers: server_stream.MAX_ERROR_SIZE (feed raises above it). */
#define MAX_WATCHED_SIZE (1 << 20)

/* server_stream.WATCHED: CommandComplete, EmptyQueryResponse, PortalSuspended, ErrorResponse,
 * CopyIn/Out/BothResponse, ReadyForQuery. */
static inline int
is_watched(unsigned char type)
{
    switch (type) {
    case 'C': case 'I': case 's': case 'E': case 'G': case 'H': case 'W': case 'Z':
        return 1;
    default:
        return 0;
    }
}

/* obj.<name> += value (value: a new reference, consumed); 0, or -1 with the exception set. */
static int
add_to_attr(PyObject *obj, PyObject *name, PyObject *value)
{
    PyObject *old, *sum;
    int rc;

    if (value == NULL)
        return -1;
    old = PyObject_GetAttr(obj, name);
    if (old == NULL) {
        Py_DECREF(value);
        return -1;
    }
    sum = PyNumber_InPlaceAdd(old, value);
    Py_DECREF(old);
    Py_DECREF(value);
    if (sum == NULL)
        return -1;
    rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static PyObject *
scan_walk_server(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *stream, *hook;
    Py_buffer data, stop;
    Py_ssize_t pos, n;
    long long copy = 0;
    int deliver;
    const unsigned char *p, *table;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "walk_server(stream, data, pos, stop, hook) takes 5 arguments");
        return NULL;
    }
    stream = args[0];
    hook = args[4] == Py_None ? NULL : args[4];
    pos = PyLong_AsSsize_t(args[2]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (walk_buffers(args[1], pos, args[3], &data, &stop) < 0)
        return NULL;
    /* Only bytes are delivered from: immutable under the hook's calls, and feed's slices of it are
     * bytes.  (The data buffer is held anyway: args[1] is alive for the whole call.) */
    deliver = hook != NULL && PyBytes_CheckExact(args[1]);
    p = (const unsigned char *) data.buf;
    table = (const unsigned char *) stop.buf;
    n = data.len;

    while (n - pos >= 5) {
        unsigned char type = p[pos];
        int32_t length = read_i32(p + pos + 1);
        Py_ssize_t end;
        PyObject *a[2], *r, *table_obj;

        if (length < 4)
            break;
        end = pos + 1 + (Py_ssize_t) length;
        if (end > n)
            break;
        if (!table[type]) {
            if (hook != NULL && type == 'd')
                copy += length - 4;
            pos = end;
            continue;
        }
        /* A type feed's loop body looks at: deliver it here only where the body would just give it,
         * whole, to the hook. */
        if (!deliver || length > MAX_WATCHED_SIZE || !is_watched(type))
            break;
        if (type == 'E') {
            PyObject *on_error = PyObject_GetAttr(stream, str_on_error);
            if (on_error == NULL)
                goto error;
            Py_DECREF(on_error);
            if (on_error != Py_None)        /* held and rewritten by Python */
                break;
        }
        /* What the hook may look at is up to date before it runs, as in the reference. */
        if (copy) {
            long long c = copy;
            copy = 0;
            if (add_to_attr(stream, str_copy_bytes, PyLong_FromLongLong(c)) < 0)
                goto error;
        }
        if (type == 'Z') {
            if (add_to_attr(stream, str_ready_count, PyLong_FromLong(1)) < 0)
                goto error;
            if (pos + 5 < n) {              /* always, unless the length is 4: then the next byte */
                PyObject *status = PyBytes_FromStringAndSize((const char *) p + pos + 5, 1);
                int rc;
                if (status == NULL)
                    goto error;
                rc = PyObject_SetAttr(stream, str_txn_status, status);
                Py_DECREF(status);
                if (rc < 0)
                    goto error;
            }
        }
        a[0] = PyLong_FromLong(type);
        if (a[0] == NULL)
            goto error;
        a[1] = PyBytes_FromStringAndSize((const char *) p + pos + 5, end - pos - 5);
        if (a[1] == NULL) {
            Py_DECREF(a[0]);
            goto error;
        }
        r = PyObject_Vectorcall(hook, a, 2, NULL);
        Py_DECREF(a[0]);
        Py_DECREF(a[1]);
        if (r == NULL)
            goto error;
        Py_DECREF(r);
        pos = end;
        /* The hook may have changed the table (watch_rows, on_error, on_message): go on with the new. */
        table_obj = PyObject_GetAttr(stream, str_table);
        if (table_obj == NULL)
            goto error;
        if (table_obj != stop.obj) {
            Py_buffer fresh;
            int rc = hold_table(table_obj, &fresh);
            Py_DECREF(table_obj);
            if (rc < 0)
                goto error;
            PyBuffer_Release(&stop);
            stop = fresh;
            table = (const unsigned char *) stop.buf;
        }
        else
            Py_DECREF(table_obj);
    }
    if (copy && add_to_attr(stream, str_copy_bytes, PyLong_FromLongLong(copy)) < 0)
        goto error;
    PyBuffer_Release(&stop);
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(pos);

error:
    PyBuffer_Release(&stop);
    PyBuffer_Release(&data);
    return NULL;
}

static PyMethodDef scan_methods[] = {
    {"skip", (PyCFunction) (void (*)(void)) scan_skip, METH_FASTCALL,
     "skip(data, pos, stop, count_copy) -> (pos, copy_bytes): step over whole messages that need nothing."},
    {"decode_bind", (PyCFunction) (void (*)(void)) scan_decode_bind, METH_FASTCALL,
     "decode_bind(buf, start, end) -> (portal, statement, params), or None where the reference must decode it."},
    {"walk_client", (PyCFunction) (void (*)(void)) scan_walk_client, METH_FASTCALL,
     "walk_client(buf, pos, stop, max_size, tracker[, query]) -> (pos, syncs): step over the client's messages "
     "that need no policy decision (and, given query, the Queries whose verdict is cached), telling the tracker "
     "about them."},
    {"walk_server", (PyCFunction) (void (*)(void)) scan_walk_server, METH_FASTCALL,
     "walk_server(stream, data, pos, stop, hook) -> pos: skip, delivering whole watched messages to the "
     "message hook as ServerStream.feed does."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT, "_scan",
    "Compiled hot-path helpers of proxy.wire: the server stream's header walk, Bind decoding, the client "
    "stream's walks.", -1, scan_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    if (str_bind == NULL) {
        if ((str_bind = PyUnicode_InternFromString("bind")) == NULL ||
            (str_execute = PyUnicode_InternFromString("execute")) == NULL ||
            (str_sync = PyUnicode_InternFromString("sync")) == NULL ||
            (str_copy_data = PyUnicode_InternFromString("copy_data")) == NULL ||
            (str_table = PyUnicode_InternFromString("_table")) == NULL ||
            (str_on_error = PyUnicode_InternFromString("_on_error")) == NULL ||
            (str_copy_bytes = PyUnicode_InternFromString("copy_bytes")) == NULL ||
            (str_ready_count = PyUnicode_InternFromString("ready_count")) == NULL ||
            (str_txn_status = PyUnicode_InternFromString("txn_status")) == NULL ||
            (str_query = PyUnicode_InternFromString("query")) == NULL ||
            (str_allowed = PyUnicode_InternFromString("allowed")) == NULL ||
            (str_prepares = PyUnicode_InternFromString("prepares")) == NULL ||
            (str_deallocates = PyUnicode_InternFromString("deallocates")) == NULL ||
            (str_statement_class = PyUnicode_InternFromString("statement_class")) == NULL ||
            (str_literal_independent = PyUnicode_InternFromString("literal_independent")) == NULL ||
            (str_move_to_end = PyUnicode_InternFromString("move_to_end")) == NULL ||
            (str_masked_hits = PyUnicode_InternFromString("masked_hits")) == NULL ||
            (str_t = PyUnicode_InternFromString("t")) == NULL ||
            (str_m = PyUnicode_InternFromString("m")) == NULL ||
            (int_one = PyLong_FromLong(1)) == NULL ||
            (str_parse = PyUnicode_InternFromString("parse")) == NULL ||
            (str_empty = PyUnicode_New(0, 0)) == NULL) {
            Py_CLEAR(str_bind);
            Py_CLEAR(str_execute);
            Py_CLEAR(str_sync);
            Py_CLEAR(str_copy_data);
            Py_CLEAR(str_table);
            Py_CLEAR(str_on_error);
            Py_CLEAR(str_copy_bytes);
            Py_CLEAR(str_ready_count);
            Py_CLEAR(str_txn_status);
            Py_CLEAR(str_query);
            Py_CLEAR(str_allowed);
            Py_CLEAR(str_prepares);
            Py_CLEAR(str_deallocates);
            Py_CLEAR(str_statement_class);
            Py_CLEAR(str_literal_independent);
            Py_CLEAR(str_move_to_end);
            Py_CLEAR(str_masked_hits);
            Py_CLEAR(str_t);
            Py_CLEAR(str_m);
            Py_CLEAR(int_one);
            Py_CLEAR(str_parse);
            Py_CLEAR(str_empty);
            return NULL;
        }
    }
    return PyModule_Create(&scan_module);
}
