/* What compiling the relay's per-read glue would buy: a measurement, not shipped.
 *
 * benchmarks/parts_hooks.py's "compiled-glue" part installs these three
 * functions in one pgwarden process in place of ClientConn.data_received,
 * ClientConn.on_server_data and UpstreamProtocol.data_received.  Each does,
 * in C, what the Python method does per read in the ordinary case of the
 * relay phase, calling the same compiled walks (proxy.wire._scan) and the
 * same compiled release (proxy.audit._recline), and hands everything else
 * to the shipped Python method:
 *
 * client read: phase RELAY, no TLS, no statement waiting for a verdict, no
 *   timing, nothing buffered from an earlier read.  walk_client over the
 *   read where it lies; when it takes all of it, up_transport.write(data).
 *   Otherwise what it took is written and the rest goes to the shipped
 *   data_received, as a read of its own.
 * server read: phase RELAY, a recorder, the stream between two messages.
 *   hold, walk_server over the read; what it leaves goes through
 *   ServerStream.feed; release; write to the client (or transport_write
 *   with TLS); pending notices through the shipped code.
 *
 * Differences from the shipped code, acceptable in a benchmark and not in
 * pgwarden: an exception out of a walk, a feed or a write propagates to the
 * event loop instead of ending the session with a FATAL (the benchmark's
 * sessions raise none), and recording-off sessions keep the Python server
 * path.  Built by benchmarks/env.py (build_glue_proto) with the machine's C
 * compiler and this Python's headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *s_phase, *s_tls, *s_waiting, *s_server, *s_timing, *s_scanner, *s_buf, *s_enforcer,
    *s_denied, *s_tracker, *s_query_walk, *s_max_size, *s_sync_points, *s_up_transport, *s_write,
    *s_recorder, *s_held, *s_stream_held, *s_stream, *s_header, *s_remaining, *s_table, *s_on_message, *s_transport,
    *s_is_closing, *s_pending_notices, *s_transport_write, *s_feed, *s_session;

/* set by configure() */
static PyObject *walk_client, *walk_server, *release, *stop_plain, *stop_bind, *py_client, *py_server,
    *py_notices;

static int
configured(void)
{
    if (walk_client == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "glue_proto: configure() first");
        return 0;
    }
    return 1;
}

/* getattr that the caller owns; NULL with an exception set on failure */
#define GET(o, name) PyObject_GetAttr((o), (name))

static PyObject *
call_fallback(PyObject *method, PyObject *self, PyObject *data)
{
    PyObject *args[2] = {self, data};
    return PyObject_Vectorcall(method, args, 2, NULL);
}

/* 1 when obj is true, 0 when false, -1 on error; steals obj */
static int
truth_steal(PyObject *obj)
{
    int r;
    if (obj == NULL)
        return -1;
    r = PyObject_IsTrue(obj);
    Py_DECREF(obj);
    return r;
}

/* setattr(o, name, value), stealing value; 0, or -1 with an exception set (value NULL included) */
static int
set_steal(PyObject *o, PyObject *name, PyObject *value)
{
    int r;
    if (value == NULL)
        return -1;
    r = PyObject_SetAttr(o, name, value);
    Py_DECREF(value);
    return r;
}

/* 1 when getattr(o, name) is None, 0 when not, -1 on error */
static int
is_none_attr(PyObject *o, PyObject *name)
{
    PyObject *v = GET(o, name);
    int r;
    if (v == NULL)
        return -1;
    r = v == Py_None;
    Py_DECREF(v);
    return r;
}

/* 1 when self.phase == "RELAY", 0 when not, -1 on error */
static int
in_relay(PyObject *self)
{
    PyObject *phase = GET(self, s_phase);
    int r;
    if (phase == NULL)
        return -1;
    r = PyUnicode_Check(phase) && PyUnicode_CompareWithASCIIString(phase, "RELAY") == 0;
    Py_DECREF(phase);
    return r;
}

static PyObject *
write_to(PyObject *transport, PyObject *data)
{
    PyObject *args[2] = {transport, data};
    return PyObject_VectorcallMethod(s_write, args, 2, NULL);
}

/* ------------------------------------------------------------------ client -> server */

static PyObject *
client_data_received(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *self, *data, *scanner = NULL, *buf = NULL, *enforcer = NULL, *tracker = NULL, *query = NULL;
    PyObject *max_size = NULL, *pos0 = NULL, *res = NULL, *up = NULL, *out = NULL, *server = NULL;
    PyObject *result = NULL;
    Py_ssize_t n, pos, syncs;
    int r;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "data_received(self, data)");
        return NULL;
    }
    if (!configured())
        return NULL;
    self = args[0];
    data = args[1];
    if (!PyBytes_Check(data))
        return call_fallback(py_client, self, data);
    if ((r = in_relay(self)) <= 0)
        return r < 0 ? NULL : call_fallback(py_client, self, data);
    if ((r = is_none_attr(self, s_tls)) <= 0)
        return r < 0 ? NULL : call_fallback(py_client, self, data);
    if ((r = is_none_attr(self, s_waiting)) <= 0)
        return r < 0 ? NULL : call_fallback(py_client, self, data);
    if ((server = GET(self, s_server)) == NULL)
        return NULL;
    r = truth_steal(GET(server, s_timing));
    Py_DECREF(server);
    if (r != 0)
        return r < 0 ? NULL : call_fallback(py_client, self, data);
    if ((scanner = GET(self, s_scanner)) == NULL || (buf = GET(scanner, s_buf)) == NULL)
        goto done;
    if (!PyByteArray_Check(buf) || PyByteArray_GET_SIZE(buf) != 0) {       /* an earlier read's tail */
        result = call_fallback(py_client, self, data);
        goto done;
    }
    if ((enforcer = GET(self, s_enforcer)) == NULL)
        goto done;
    if ((r = truth_steal(GET(enforcer, s_denied))) < 0)
        goto done;
    if ((tracker = GET(self, s_tracker)) == NULL || (query = GET(self, s_query_walk)) == NULL
        || (max_size = GET(scanner, s_max_size)) == NULL || (pos0 = PyLong_FromLong(0)) == NULL)
        goto done;
    {
        PyObject *wargs[6] = {data, pos0, r ? stop_bind : stop_plain, max_size, tracker, query};
        res = PyObject_Vectorcall(walk_client, wargs, 6, NULL);
    }
    if (res == NULL)
        goto done;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
        PyErr_SetString(PyExc_TypeError, "walk_client returned something else than (pos, syncs)");
        goto done;
    }
    pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(res, 0));
    syncs = PyLong_AsSsize_t(PyTuple_GET_ITEM(res, 1));
    if ((pos == -1 || syncs == -1) && PyErr_Occurred())
        goto done;
    if (syncs) {
        PyObject *cur = GET(self, s_sync_points);
        if (cur == NULL)
            goto done;
        r = set_steal(self, s_sync_points, PyNumber_Add(cur, PyTuple_GET_ITEM(res, 1)));
        Py_DECREF(cur);
        if (r < 0)
            goto done;
    }
    n = PyBytes_GET_SIZE(data);
    if (pos > 0) {
        if ((up = GET(self, s_up_transport)) == NULL)
            goto done;
        if (pos == n) {
            result = write_to(up, data);
            if (result != NULL) {
                Py_DECREF(result);
                result = Py_NewRef(Py_None);
            }
            goto done;
        }
        if ((out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), pos)) == NULL)
            goto done;
        result = write_to(up, out);
        Py_CLEAR(out);
        if (result == NULL)
            goto done;
        Py_CLEAR(result);
    }
    if (pos == 0) {                     /* nothing walked: the whole read to the shipped method */
        result = call_fallback(py_client, self, data);
        goto done;
    }
    if ((out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + pos, n - pos)) == NULL)
        goto done;
    result = call_fallback(py_client, self, out);
done:
    Py_XDECREF(scanner);
    Py_XDECREF(buf);
    Py_XDECREF(enforcer);
    Py_XDECREF(tracker);
    Py_XDECREF(query);
    Py_XDECREF(max_size);
    Py_XDECREF(pos0);
    Py_XDECREF(res);
    Py_XDECREF(up);
    Py_XDECREF(out);
    return result;
}

/* ------------------------------------------------------------------ server -> client */

static PyObject *
server_data(PyObject *self, PyObject *data)
{
    PyObject *rec = NULL, *stream = NULL, *v = NULL, *table = NULL, *hook = NULL, *pos0 = NULL, *out = NULL;
    PyObject *rest = NULL, *head = NULL, *transport = NULL, *result = NULL, *released = NULL;
    Py_ssize_t n, pos;
    int r, held = 0;

    if (!PyBytes_Check(data))
        return call_fallback(py_server, self, data);
    if ((r = in_relay(self)) <= 0)
        return r < 0 ? NULL : call_fallback(py_server, self, data);
    if ((rec = GET(self, s_recorder)) == NULL)
        return NULL;
    if (rec == Py_None) {
        Py_DECREF(rec);
        return call_fallback(py_server, self, data);
    }
    if ((stream = GET(self, s_stream)) == NULL)
        goto done;
    /* between two messages: nothing split, nothing held */
    if ((r = truth_steal(GET(stream, s_header))) != 0 || (r = truth_steal(GET(stream, s_remaining))) != 0
        || (r = is_none_attr(stream, s_stream_held)) != 1) {
        if (r >= 0)
            result = call_fallback(py_server, self, data);
        goto done;
    }
    if ((hook = GET(stream, s_on_message)) == NULL || (table = GET(stream, s_table)) == NULL)
        goto done;
    if (hook == Py_None) {
        result = call_fallback(py_server, self, data);
        goto done;
    }
    /* rec.hold() */
    if ((v = GET(rec, s_held)) == NULL)
        goto done;
    if (v == Py_None && set_steal(rec, s_held, PyList_New(0)) < 0)
        goto done;
    held = 1;
    if ((pos0 = PyLong_FromLong(0)) == NULL)
        goto done;
    {
        PyObject *wargs[5] = {stream, data, pos0, table, hook};
        PyObject *p = PyObject_Vectorcall(walk_server, wargs, 5, NULL);
        if (p == NULL)
            goto done;
        pos = PyLong_AsSsize_t(p);
        Py_DECREF(p);
        if (pos == -1 && PyErr_Occurred())
            goto done;
    }
    n = PyBytes_GET_SIZE(data);
    if (pos >= n) {
        out = Py_NewRef(data);
    } else {
        PyObject *tail = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + pos, n - pos);
        PyObject *fargs[2] = {stream, tail};
        if (tail == NULL)
            goto done;
        rest = PyObject_VectorcallMethod(s_feed, fargs, 2, NULL);
        Py_DECREF(tail);
        if (rest == NULL)
            goto done;
        if ((head = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), pos)) == NULL)
            goto done;
        out = head;
        head = NULL;
        PyBytes_Concat(&out, rest);
        if (out == NULL)
            goto done;
    }
    held = 0;
    released = PyObject_CallOneArg(release, rec);
    if (released == NULL)
        goto done;
    if (PyBytes_GET_SIZE(out)) {
        PyObject *tls = GET(self, s_tls);
        if (tls == NULL)
            goto done;
        r = tls == Py_None;
        Py_DECREF(tls);
        if ((transport = GET(self, s_transport)) == NULL)
            goto done;
        if (r && transport != Py_None) {
            PyObject *margs[1] = {transport};
            int closing = truth_steal(PyObject_VectorcallMethod(s_is_closing, margs,
                                                                1, NULL));
            if (closing < 0)
                goto done;
            if (!closing) {
                PyObject *w = write_to(transport, out);
                if (w == NULL)
                    goto done;
                Py_DECREF(w);
            }
        } else {
            PyObject *w = PyObject_CallMethodOneArg(self, s_transport_write, out);
            if (w == NULL)
                goto done;
            Py_DECREF(w);
        }
    }
    if ((r = truth_steal(GET(self, s_pending_notices))) != 0) {
        if (r > 0)
            result = PyObject_CallOneArg(py_notices, self);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    if (held) {                         /* an exception with records held: write them, as finally does */
        PyObject *type, *value, *tb, *ok;
        PyErr_Fetch(&type, &value, &tb);
        ok = PyObject_CallOneArg(release, rec);
        Py_XDECREF(ok);
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_XDECREF(rec);
    Py_XDECREF(stream);
    Py_XDECREF(v);
    Py_XDECREF(table);
    Py_XDECREF(hook);
    Py_XDECREF(pos0);
    Py_XDECREF(out);
    Py_XDECREF(rest);
    Py_XDECREF(head);
    Py_XDECREF(transport);
    Py_XDECREF(released);
    return result;
}

static PyObject *
on_server_data(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "on_server_data(self, data)");
        return NULL;
    }
    if (!configured())
        return NULL;
    return server_data(args[0], args[1]);
}

static PyObject *
upstream_data_received(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *session, *result;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "data_received(self, data)");
        return NULL;
    }
    if (!configured())
        return NULL;
    if ((session = GET(args[0], s_session)) == NULL)
        return NULL;
    result = server_data(session, args[1]);
    Py_DECREF(session);
    return result;
}

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "configure(walk_client, walk_server, release, stop, stop_bind, "
                                         "data_received, on_server_data, notices)");
        return NULL;
    }
    Py_XSETREF(walk_client, Py_NewRef(args[0]));
    Py_XSETREF(walk_server, Py_NewRef(args[1]));
    Py_XSETREF(release, Py_NewRef(args[2]));
    Py_XSETREF(stop_plain, Py_NewRef(args[3]));
    Py_XSETREF(stop_bind, Py_NewRef(args[4]));
    Py_XSETREF(py_client, Py_NewRef(args[5]));
    Py_XSETREF(py_server, Py_NewRef(args[6]));
    Py_XSETREF(py_notices, Py_NewRef(args[7]));
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"client_data_received", (PyCFunction) (void (*)(void)) client_data_received, METH_FASTCALL, NULL},
    {"on_server_data", (PyCFunction) (void (*)(void)) on_server_data, METH_FASTCALL, NULL},
    {"upstream_data_received", (PyCFunction) (void (*)(void)) upstream_data_received, METH_FASTCALL, NULL},
    {"configure", (PyCFunction) (void (*)(void)) configure, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_glue_proto", NULL, -1, functions};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC
PyInit__glue_proto(void)
{
    PyObject *m;
    static const char *methods[] = {"client_data_received", "on_server_data", "upstream_data_received"};
    INTERN(s_phase, "phase");
    INTERN(s_tls, "tls");
    INTERN(s_waiting, "waiting");
    INTERN(s_server, "server");
    INTERN(s_timing, "timing");
    INTERN(s_scanner, "scanner");
    INTERN(s_buf, "buf");
    INTERN(s_enforcer, "enforcer");
    INTERN(s_denied, "denied_statements");
    INTERN(s_tracker, "tracker");
    INTERN(s_query_walk, "query_walk");
    INTERN(s_max_size, "max_message_size");
    INTERN(s_sync_points, "sync_points");
    INTERN(s_up_transport, "up_transport");
    INTERN(s_write, "write");
    INTERN(s_recorder, "recorder");
    INTERN(s_held, "_held");
    INTERN(s_stream_held, "held");
    INTERN(s_stream, "stream");
    INTERN(s_header, "header");
    INTERN(s_remaining, "remaining");
    INTERN(s_table, "_table");
    INTERN(s_on_message, "_on_message");
    INTERN(s_transport, "transport");
    INTERN(s_is_closing, "is_closing");
    INTERN(s_pending_notices, "pending_notices");
    INTERN(s_transport_write, "transport_write");
    INTERN(s_feed, "feed");
    INTERN(s_session, "session");
    if ((m = PyModule_Create(&module_def)) == NULL)
        return NULL;
    /* the three as methods: instancemethod binds self like a Python function does */
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        PyObject *f = PyObject_GetAttrString(m, methods[i]), *meth;
        if (f == NULL)
            return NULL;
        meth = PyInstanceMethod_New(f);
        Py_DECREF(f);
        if (meth == NULL)
            return NULL;
        if (PyModule_AddObject(m, methods[i], meth) < 0) {
            Py_DECREF(meth);
            return NULL;
        }
    }
    return m;
}
