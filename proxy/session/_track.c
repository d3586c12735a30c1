/*
 * proxy.session._track: the statement tracker, compiled.
 *
 * StatementTracker(emit, *, capture_params=True, copy_out_bytes=None,
 *                  clock=time.time, capture_rows=0, watch_rows=None)
 * Statement(text, via, started, verdict=None, params=None)
 *
 * The same classes, with the same public API and behaviour, as
 * proxy.session.track.StatementTrackerPy and StatementPy, the reference
 * (and the fallback when this module was not built or fails track.py's
 * self-test on import).  Each function below mirrors one Python method; the
 * comments quote the lines they stand for.  "The same behaviour" includes
 * the order and number of the calls made to the Python callables the
 * tracker was given (clock, emit, watch_rows, copy_out_bytes): the tests
 * drive both implementations with the same random events and counting
 * callbacks, and compare the logs.  Where the reference evaluates a
 * callback before or after reading some state, so does this code (a
 * callback may call back into the tracker): it holds strong references to
 * the group and statement it works on across every callback, reads the
 * tracker's state again after one, and never keeps a pointer into the ring
 * of groups across a call into Python.
 *
 * What stays in Python (called through the helpers track.py hands to
 * _setup() on import): render_params for a Bind with a binary parameter,
 * a value longer than MAX_PARAM_CHARS bytes or anything unusual;
 * _data_row (DataRows, only when capturing rows); _error_fields
 * (ErrorResponse); Statement.rows for a tag that is not ASCII or a count
 * too big for C.  The hot path (Query, Parse, a Bind of text parameters,
 * Execute, Sync, Close, CommandComplete, EmptyQueryResponse,
 * PortalSuspended, ReadyForQuery, a DataRow when not capturing) runs in C.
 *
 * Differences from the reference, none reachable from the proxy: mtype must
 * be an int (the reference compares anything), capture_rows must be an int
 * (an __index__), capture_params is judged true or false once, when the
 * tracker is made (the reference judges it at each Bind), MAX_PARAM_CHARS
 * is the value _setup() was given, the tracker's internal state (groups,
 * portals, ...) is not visible as attributes, and neither class can be
 * subclassed or pickled.  With the default clock (time.time itself)
 * the time is read here, with the clock and the rounding time.time() uses,
 * instead of calling it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>

/* proxy.wire.constants */
#define MSG_COMMAND_COMPLETE 'C'
#define MSG_COPY_BOTH_RESPONSE 'W'
#define MSG_COPY_IN_RESPONSE 'G'
#define MSG_COPY_OUT_RESPONSE 'H'
#define MSG_DATA_ROW 'D'
#define MSG_EMPTY_QUERY_RESPONSE 'I'
#define MSG_ERROR_RESPONSE 'E'
#define MSG_PORTAL_SUSPENDED 's'
#define MSG_READY_FOR_QUERY 'Z'

/* The Python helpers (track.py, via _setup()); NULL until then. */
static PyObject *render_params_py = NULL;     /* render_params(params, types) */
static PyObject *data_row_py = NULL;          /* _data_row(body) */
static PyObject *error_fields_py = NULL;      /* _error_fields(body) */
static PyObject *rows_py = NULL;              /* StatementPy.rows.fget */
static Py_ssize_t max_param_chars = 1024;     /* MAX_PARAM_CHARS */

static PyObject *time_time = NULL;            /* time.time: the default clock */

/* Constant strings and objects, made once. */
static PyObject *s_query, *s_execute, *s_parse, *s_function_call, *s_function_call_text, *s_no_statement,
    *s_suspended, *s_in, *s_out, *s_both, *s_S, *s_C, *s_M, *s_get, *s_append, *s_rstrip, *s_decode,
    *s_utf8, *s_replace, *s_nul, *s_semicolon, *fmt_unknown_statement, *fmt_unknown_portal, *zero, *empty_tuple;

static PyTypeObject StatementType;
static PyTypeObject GroupType;
static PyTypeObject TrackerType;

/* ------------------------------------------------------------------ helpers */

/* callable(arg) or callable(): a new reference, NULL on error.  The depth
 * check stops a callback that calls back into the tracker forever with a
 * RecursionError even when no Python frame lies in between. */
static PyObject *
call1(PyObject *callable, PyObject *arg)
{
    PyObject *r;

    if (Py_EnterRecursiveCall(" in the statement tracker"))
        return NULL;
    Py_INCREF(callable);                   /* the tracker's reference may go while it runs */
    r = arg != NULL ? PyObject_CallOneArg(callable, arg) : PyObject_CallNoArgs(callable);
    Py_DECREF(callable);
    Py_LeaveRecursiveCall();
    return r;
}

/* The same, the result dropped: 0, or -1 on error. */
static int
call1_void(PyObject *callable, PyObject *arg)
{
    PyObject *r = call1(callable, arg);

    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
need_helper(PyObject *helper)
{
    if (helper != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "proxy.session._track: _setup() was not called (import proxy.session.track)");
    return -1;
}

/* a == b as Python's == says: 1, 0, or -1 on error (identity first, as RichCompareBool does). */
static inline int
equal(PyObject *a, PyObject *b)
{
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

/* x.append(item), a list's fast when x is exactly a list. */
static int
append(PyObject *x, PyObject *item)
{
    PyObject *r;

    if (PyList_CheckExact(x))
        return PyList_Append(x, item);
    r = PyObject_CallMethodOneArg(x, s_append, item);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/*
 * The positional-or-keyword arguments of a METH_FASTCALL | METH_KEYWORDS
 * method, taken as the reference's def takes them: n parameters named
 * names[], the first `required` of them required; out[i] borrowed, NULL
 * when not given.
 */
static int
unpack_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
            const char *const names[], int n, int required, PyObject **out)
{
    Py_ssize_t i, k, nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments (%zd given)", fname, n, nargs);
        return -1;
    }
    for (i = 0; i < n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    for (k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);

        for (i = 0; i < n; i++)
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                break;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname, names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (i = 0; i < required; i++)
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    return 0;
}

/* time.time(), without the call: the same clock and the same rounding
 * (CPython's _PyTime_AsSecondsDouble). */
static PyObject *
realtime(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;

    if (PyTime_Time(&t) < 0)
        return NULL;
    return PyFloat_FromDouble(PyTime_AsSecondsDouble(t));
#elif defined(CLOCK_REALTIME) && !defined(_WIN32)
    struct timespec ts;
    long long ns;
    volatile double d;        /* as CPython: no optimisation changing how it rounds */

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    ns = (long long) ts.tv_sec * 1000000000LL + (long long) ts.tv_nsec;
    if (ns % 1000000000LL == 0)
        d = (double) (ns / 1000000000LL);
    else {
        d = (double) ns;
        d /= 1e9;
    }
    return PyFloat_FromDouble(d);
#else
    return PyObject_CallNoArgs(time_time);
#endif
}

/* ------------------------------------------------------------------ Statement */

typedef struct {
    PyObject_HEAD
    PyObject *text;
    PyObject *via;                /* "query" | "execute" | "function_call" | "parse" */
    PyObject *started;
    PyObject *ended;
    PyObject *params;
    PyObject *verdict;
    PyObject *tags;               /* list of str */
    PyObject *sqlstate;
    PyObject *message;
    PyObject *copy_direction;
    PyObject *copy_bytes;
    PyObject *skipped;
    PyObject *sample;
} StatementObject;

#define ST(o) ((StatementObject *) (o))

/* st.<name> as Python reads a slot: a new reference, or AttributeError when deleted. */
#define GET(st, name) get_slot(ST(st)->name, #name)
/* st.<name> = value (a new reference is taken). */
#define SET(st, name, value) Py_XSETREF(ST(st)->name, Py_NewRef(value))

static PyObject *
get_slot(PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "'Statement' object has no attribute '%s'", name);
        return NULL;
    }
    return Py_NewRef(value);
}

/* Statement(text, via, started, verdict, params), every argument borrowed. */
static PyObject *
statement_make(PyObject *text, PyObject *via, PyObject *started, PyObject *verdict, PyObject *params)
{
    StatementObject *st;
    PyObject *tags = PyList_New(0);

    if (tags == NULL)
        return NULL;
    st = PyObject_GC_New(StatementObject, &StatementType);
    if (st == NULL) {
        Py_DECREF(tags);
        return NULL;
    }
    st->text = Py_NewRef(text);
    st->via = Py_NewRef(via);
    st->started = Py_NewRef(started);
    st->ended = Py_NewRef(Py_None);
    st->params = Py_NewRef(params);
    st->verdict = Py_NewRef(verdict);
    st->tags = tags;
    st->sqlstate = Py_NewRef(Py_None);
    st->message = Py_NewRef(Py_None);
    st->copy_direction = Py_NewRef(Py_None);
    st->copy_bytes = Py_NewRef(zero);
    st->skipped = Py_NewRef(Py_False);
    st->sample = Py_NewRef(Py_None);
    PyObject_GC_Track(st);
    return (PyObject *) st;
}

static PyObject *
statement_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"text", "via", "started", "verdict", "params", NULL};
    PyObject *text, *via, *started, *verdict = Py_None, *params = Py_None;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OO:Statement", kwlist, &text, &via, &started, &verdict,
                                     &params))
        return NULL;
    return statement_make(text, via, started, verdict, params);
}

static int
statement_traverse(StatementObject *st, visitproc visit, void *arg)
{
    Py_VISIT(st->text);
    Py_VISIT(st->via);
    Py_VISIT(st->started);
    Py_VISIT(st->ended);
    Py_VISIT(st->params);
    Py_VISIT(st->verdict);
    Py_VISIT(st->tags);
    Py_VISIT(st->sqlstate);
    Py_VISIT(st->message);
    Py_VISIT(st->copy_direction);
    Py_VISIT(st->copy_bytes);
    Py_VISIT(st->skipped);
    Py_VISIT(st->sample);
    return 0;
}

static int
statement_clear(StatementObject *st)
{
    Py_CLEAR(st->text);
    Py_CLEAR(st->via);
    Py_CLEAR(st->started);
    Py_CLEAR(st->ended);
    Py_CLEAR(st->params);
    Py_CLEAR(st->verdict);
    Py_CLEAR(st->tags);
    Py_CLEAR(st->sqlstate);
    Py_CLEAR(st->message);
    Py_CLEAR(st->copy_direction);
    Py_CLEAR(st->copy_bytes);
    Py_CLEAR(st->skipped);
    Py_CLEAR(st->sample);
    return 0;
}

static void
statement_dealloc(StatementObject *st)
{
    PyObject_GC_UnTrack(st);
    statement_clear(st);
    Py_TYPE(st)->tp_free((PyObject *) st);
}

/*
 * rows: "Rows the command tags report (SELECT n, INSERT 0 n, COPY n, ...),
 * summed; None if none do."
 *
 *     total = None
 *     for tag in self.tags:
 *         word, _, rest = tag.rpartition(" ")
 *         if word and rest.isdigit():
 *             total = (total or 0) + int(rest)
 *     return total
 *
 * Here for a list of ASCII str (for ASCII, isdigit() is 0-9); the
 * reference's getter for anything else (non-ASCII digits, which isdigit()
 * and int() read their own way, tags that are not a list of str, a count
 * past 18 digits or a sum past int64).
 */
static PyObject *
statement_rows(StatementObject *st, void *closure)
{
    PyObject *tags = GET(st, tags), *tag;
    Py_ssize_t i, n, sp, j;
    long long total = 0, value;
    int found = 0;

    if (tags == NULL)
        return NULL;
    if (!PyList_CheckExact(tags))
        goto reference;
    for (i = 0; i < PyList_GET_SIZE(tags); i++) {
        const Py_UCS1 *s;

        tag = PyList_GET_ITEM(tags, i);
        if (!PyUnicode_CheckExact(tag))
            goto reference;
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(tag) < 0)
            goto error;
#endif
        if (!PyUnicode_IS_ASCII(tag))
            goto reference;
        s = PyUnicode_1BYTE_DATA(tag);
        n = PyUnicode_GET_LENGTH(tag);
        for (sp = n - 1; sp >= 0 && s[sp] != ' '; sp--)      /* tag.rpartition(" ") */
            ;
        if (sp <= 0 || sp == n - 1)                         /* no word before it, or no rest */
            continue;
        if (n - 1 - sp > 18)                                /* int64 room: the reference's to add */
            goto reference;
        value = 0;
        for (j = sp + 1; j < n; j++) {
            if (s[j] < '0' || s[j] > '9')
                break;
            value = value * 10 + (s[j] - '0');
        }
        if (j < n)                                          /* not rest.isdigit() */
            continue;
        if (total > LLONG_MAX - value)
            goto reference;
        total += value;
        found = 1;
    }
    Py_DECREF(tags);
    if (!found)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(total);

reference:
    Py_DECREF(tags);
    if (need_helper(rows_py) < 0)
        return NULL;
    return PyObject_CallOneArg(rows_py, (PyObject *) st);
#if PY_VERSION_HEX < 0x030C0000
error:
    Py_DECREF(tags);
    return NULL;
#endif
}

/* tag: ";".join(self.tags) if self.tags else None */
static PyObject *
statement_tag(StatementObject *st, void *closure)
{
    PyObject *tags = GET(st, tags), *r;
    int truth;

    if (tags == NULL)
        return NULL;
    truth = PyObject_IsTrue(tags);
    if (truth <= 0) {
        Py_DECREF(tags);
        if (truth < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    r = PyUnicode_Join(s_semicolon, tags);
    Py_DECREF(tags);
    return r;
}

static PyMemberDef statement_members[] = {
    {"text", T_OBJECT_EX, offsetof(StatementObject, text), 0, "the SQL text (or what stands for it)"},
    {"via", T_OBJECT_EX, offsetof(StatementObject, via), 0, "\"query\" | \"execute\" | \"function_call\" | \"parse\""},
    {"started", T_OBJECT_EX, offsetof(StatementObject, started), 0, "clock() when the client sent it"},
    {"ended", T_OBJECT_EX, offsetof(StatementObject, ended), 0, "clock() when the server answered it, or None"},
    {"params", T_OBJECT_EX, offsetof(StatementObject, params), 0,
     "list of str | None (rendered), or None when not captured"},
    {"verdict", T_OBJECT_EX, offsetof(StatementObject, verdict), 0, "the policy verdict, or None when not judged here"},
    {"tags", T_OBJECT_EX, offsetof(StatementObject, tags), 0, "the command tags, a list of str"},
    {"sqlstate", T_OBJECT_EX, offsetof(StatementObject, sqlstate), 0, "the error's SQLSTATE, or None"},
    {"message", T_OBJECT_EX, offsetof(StatementObject, message), 0, "the error's message, or None"},
    {"copy_direction", T_OBJECT_EX, offsetof(StatementObject, copy_direction), 0,
     "\"in\" | \"out\" | \"both\", or None"},
    {"copy_bytes", T_OBJECT_EX, offsetof(StatementObject, copy_bytes), 0, "COPY payload bytes"},
    {"skipped", T_OBJECT_EX, offsetof(StatementObject, skipped), 0,
     "never ran: an earlier error in its Sync group"},
    {"sample", T_OBJECT_EX, offsetof(StatementObject, sample), 0, "first result rows, when captured, or None"},
    {NULL},
};

static PyGetSetDef statement_getset[] = {
    {"rows", (getter) statement_rows, NULL,
     "Rows the command tags report (SELECT n, INSERT 0 n, COPY n, ...), summed; None if none do.", NULL},
    {"tag", (getter) statement_tag, NULL, "The command tags joined with ';', or None.", NULL},
    {NULL},
};

static PyTypeObject StatementType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy.session._track.Statement",
    .tp_basicsize = sizeof(StatementObject),
    .tp_dealloc = (destructor) statement_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One statement and what became of it.",
    .tp_traverse = (traverseproc) statement_traverse,
    .tp_clear = (inquiry) statement_clear,
    .tp_members = statement_members,
    .tp_getset = statement_getset,
    .tp_new = statement_new,
};

/* ------------------------------------------------------------------ _Group */

/* What the client sent up to one sync point (Query, Sync, FunctionCall).  A
 * refcounted object, like the reference's _Group, so that a callback that
 * moves the tracker on leaves the group being worked on alive.  (The
 * reference's `failed` is set and never read: not kept.) */
typedef struct {
    PyObject_HEAD
    PyObject *items;              /* list of Statement */
    Py_ssize_t next;              /* the first item the server has not answered */
    int synced;
    int has_last_parse;           /* last_parse is not None: (parse_text, parse_verdict) */
    PyObject *parse_text;
    PyObject *parse_verdict;
} GroupObject;

static GroupObject *
group_make(void)
{
    GroupObject *g;
    PyObject *items = PyList_New(0);

    if (items == NULL)
        return NULL;
    g = PyObject_GC_New(GroupObject, &GroupType);
    if (g == NULL) {
        Py_DECREF(items);
        return NULL;
    }
    g->items = items;
    g->next = 0;
    g->synced = 0;
    g->has_last_parse = 0;
    g->parse_text = NULL;
    g->parse_verdict = NULL;
    PyObject_GC_Track(g);
    return g;
}

static int
group_traverse(GroupObject *g, visitproc visit, void *arg)
{
    Py_VISIT(g->items);
    Py_VISIT(g->parse_text);
    Py_VISIT(g->parse_verdict);
    return 0;
}

static int
group_clear(GroupObject *g)
{
    Py_CLEAR(g->items);
    Py_CLEAR(g->parse_text);
    Py_CLEAR(g->parse_verdict);
    g->has_last_parse = 0;
    return 0;
}

static void
group_dealloc(GroupObject *g)
{
    PyObject_GC_UnTrack(g);
    group_clear(g);
    Py_TYPE(g)->tp_free((PyObject *) g);
}

/* _current(group): group.items[group.next] if there is one: a new reference,
 * or NULL without an exception.  (items is only ever a list: the group is
 * not reachable from Python; cleared by the GC, it has none.) */
static PyObject *
group_current(GroupObject *g)
{
    if (g->items != NULL && g->next >= 0 && g->next < PyList_GET_SIZE(g->items))
        return Py_NewRef(PyList_GET_ITEM(g->items, g->next));
    return NULL;
}

/* group.items.append(st) */
static int
group_append(GroupObject *g, PyObject *st)
{
    if (g->items == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the statement tracker was cleared");
        return -1;
    }
    return PyList_Append(g->items, st);
}

static Py_ssize_t
group_len(GroupObject *g)
{
    return g->items != NULL ? PyList_GET_SIZE(g->items) : 0;
}

static PyTypeObject GroupType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy.session._track._Group",
    .tp_basicsize = sizeof(GroupObject),
    .tp_dealloc = (destructor) group_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = "What the client sent up to one sync point (internal).",
    .tp_traverse = (traverseproc) group_traverse,
    .tp_clear = (inquiry) group_clear,
};

/* ------------------------------------------------------------------ StatementTracker */

typedef struct {
    PyObject_HEAD
    PyObject *emit;
    PyObject *clock;              /* NULL: the default, time.time, read in C */
    PyObject *copy_out;           /* copy_out_bytes; NULL when falsy (the reference's lambda: 0) */
    PyObject *watch_rows;         /* NULL for None (given None, or capture_rows <= 0) */
    PyObject *statements;         /* dict: name -> (text, verdict, param type oids) */
    PyObject *portals;            /* dict: portal -> (text, verdict, params) */
    PyObject *copy_in;            /* CopyData bytes from the client during COPY FROM STDIN (an int) */
    PyObject *copying_st;         /* copying = (copying_st, copying_at), or None when copying_st is NULL: */
    PyObject *copying_at;         /*   the statement in COPY, server bytes at its start */
    Py_ssize_t capture_rows;
    int capture_params;
    /* groups: a deque, as a ring of strong references; never empty but after tp_clear */
    GroupObject **ring;
    Py_ssize_t cap;               /* a power of two */
    Py_ssize_t head;
    Py_ssize_t count;
} TrackerObject;

#define RING_AT(t, i) ((t)->ring[((t)->head + (i)) & ((t)->cap - 1)])
#define FIRST_GROUP(t) RING_AT(t, 0)                 /* self.groups[0] */
#define LAST_GROUP(t) RING_AT(t, (t)->count - 1)     /* self.groups[-1] */

static int
alive(TrackerObject *t)
{
    if (t->count > 0)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "the statement tracker was cleared");
    return -1;
}

/* Room for one more group (allocation first, so that a failure changes nothing). */
static int
ring_reserve(TrackerObject *t)
{
    GroupObject **ring;
    Py_ssize_t i;

    if (t->count < t->cap)
        return 0;
    if (t->cap > PY_SSIZE_T_MAX / (Py_ssize_t) sizeof(GroupObject *) / 2) {
        PyErr_NoMemory();
        return -1;
    }
    ring = PyMem_Malloc(2 * t->cap * sizeof(GroupObject *));
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < t->count; i++)
        ring[i] = RING_AT(t, i);
    PyMem_Free(t->ring);
    t->ring = ring;
    t->head = 0;
    t->cap *= 2;
    return 0;
}

/* now = self.clock() */
static PyObject *
tracker_now(TrackerObject *t)
{
    if (t->clock == NULL)
        return realtime();
    return call1(t->clock, NULL);
}

/* self.copy_out_of(): copy_out_bytes() or, without one, 0. */
static PyObject *
tracker_copy_out(TrackerObject *t)
{
    if (t->copy_out == NULL)
        return Py_NewRef(zero);
    return call1(t->copy_out, NULL);
}

static PyObject *
tracker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"emit", "capture_params", "copy_out_bytes", "clock", "capture_rows", "watch_rows",
                             NULL};
    PyObject *emit, *capture_params = Py_True, *copy_out_bytes = Py_None, *clock = NULL, *capture_rows = NULL,
        *watch_rows = Py_None;
    TrackerObject *t;
    int truth;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOOOO:StatementTracker", kwlist, &emit, &capture_params,
                                     &copy_out_bytes, &clock, &capture_rows, &watch_rows))
        return NULL;
    t = (TrackerObject *) type->tp_alloc(type, 0);          /* zeroed, GC-tracked */
    if (t == NULL)
        return NULL;
    t->ring = PyMem_Malloc(4 * sizeof(GroupObject *));
    if (t->ring == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    t->cap = 4;
    /* self.groups = deque([_Group()]) */
    if ((t->ring[0] = group_make()) == NULL)
        goto error;
    t->count = 1;
    t->emit = Py_NewRef(emit);
    t->clock = clock == NULL || clock == time_time ? NULL : Py_NewRef(clock);
    if ((truth = PyObject_IsTrue(capture_params)) < 0)
        goto error;
    t->capture_params = truth;
    if ((t->statements = PyDict_New()) == NULL || (t->portals = PyDict_New()) == NULL)
        goto error;
    t->copy_in = Py_NewRef(zero);
    /* self.copy_out_of = copy_out_bytes or (lambda: 0) */
    if ((truth = PyObject_IsTrue(copy_out_bytes)) < 0)
        goto error;
    t->copy_out = truth ? Py_NewRef(copy_out_bytes) : NULL;
    if (capture_rows != NULL) {
        t->capture_rows = PyNumber_AsSsize_t(capture_rows, NULL);      /* clamped: only compared */
        if (t->capture_rows == -1 && PyErr_Occurred())
            goto error;
    }
    /* self.watch_rows = watch_rows if capture_rows > 0 else None
     * if self.watch_rows is not None: self.watch_rows(True) */
    if (t->capture_rows > 0 && watch_rows != Py_None) {
        t->watch_rows = Py_NewRef(watch_rows);
        if (call1_void(t->watch_rows, Py_True) < 0)
            goto error;
    }
    return (PyObject *) t;

error:
    Py_DECREF(t);
    return NULL;
}

static int
tracker_traverse(TrackerObject *t, visitproc visit, void *arg)
{
    Py_ssize_t i;

    Py_VISIT(t->emit);
    Py_VISIT(t->clock);
    Py_VISIT(t->copy_out);
    Py_VISIT(t->watch_rows);
    Py_VISIT(t->statements);
    Py_VISIT(t->portals);
    Py_VISIT(t->copy_in);
    Py_VISIT(t->copying_st);
    Py_VISIT(t->copying_at);
    for (i = 0; i < t->count; i++)
        Py_VISIT(RING_AT(t, i));
    return 0;
}

static int
tracker_clear(TrackerObject *t)
{
    /* The ring first: with no group left every method refuses (alive()), so a deallocation below
     * that runs Python code cannot reach the fields being cleared.  Each group leaves the ring
     * before it is let go of. */
    while (t->count > 0) {
        GroupObject *g = RING_AT(t, t->count - 1);

        RING_AT(t, t->count - 1) = NULL;
        t->count--;
        Py_DECREF(g);
    }
    Py_CLEAR(t->emit);
    Py_CLEAR(t->clock);
    Py_CLEAR(t->copy_out);
    Py_CLEAR(t->watch_rows);
    Py_CLEAR(t->statements);
    Py_CLEAR(t->portals);
    Py_CLEAR(t->copy_in);
    Py_CLEAR(t->copying_st);
    Py_CLEAR(t->copying_at);
    return 0;
}

static void
tracker_dealloc(TrackerObject *t)
{
    PyObject_GC_UnTrack(t);
    tracker_clear(t);
    PyMem_Free(t->ring);
    Py_TYPE(t)->tp_free((PyObject *) t);
}

/* ---------------------------------------------------------- client side */

/* _sync():  self.groups[-1].synced = True;  self.groups.append(_Group()) */
static int
tracker_do_sync(TrackerObject *t)
{
    GroupObject *g;

    /* The group first: allocating a GC object may run the GC's callbacks (Python code), reserving
     * ring room (PyMem) cannot; between the reservation and the append nothing runs. */
    if ((g = group_make()) == NULL)
        return -1;
    if (alive(t) < 0 || ring_reserve(t) < 0) {
        Py_DECREF(g);
        return -1;
    }
    LAST_GROUP(t)->synced = 1;
    RING_AT(t, t->count) = g;
    t->count++;
    return 0;
}

/*
 *     group = self.groups[-1]
 *     group.items.append(Statement(text, via, self.clock(), verdict))
 *     self._sync()
 */
static PyObject *
tracker_add_and_sync(TrackerObject *t, PyObject *text, PyObject *via, PyObject *verdict)
{
    GroupObject *group;
    PyObject *started, *st;
    int rc;

    if (alive(t) < 0)
        return NULL;
    group = (GroupObject *) Py_NewRef(LAST_GROUP(t));
    started = tracker_now(t);
    if (started == NULL) {
        Py_DECREF(group);
        return NULL;
    }
    st = statement_make(text, via, started, verdict, Py_None);
    Py_DECREF(started);
    if (st == NULL) {
        Py_DECREF(group);
        return NULL;
    }
    rc = group_append(group, st);
    Py_DECREF(st);
    Py_DECREF(group);
    if (rc < 0)
        return NULL;
    if (alive(t) < 0 || tracker_do_sync(t) < 0)        /* the clock may have done anything */
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
tracker_query(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"text", "verdict"};
    PyObject *a[2];

    if (unpack_args("query", args, nargs, kwnames, names, 2, 2, a) < 0)
        return NULL;
    return tracker_add_and_sync(t, a[0], s_query, a[1]);
}

static PyObject *
tracker_function_call(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"verdict"};
    PyObject *a[1];

    if (unpack_args("function_call", args, nargs, kwnames, names, 1, 1, a) < 0)
        return NULL;
    return tracker_add_and_sync(t, s_function_call_text, s_function_call, a[0]);
}

/*
 *     self.statements[name] = (text, verdict, param_types)
 *     self.groups[-1].last_parse = (text, verdict)
 */
static PyObject *
tracker_parse(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"name", "text", "verdict", "param_types"};
    PyObject *a[4], *entry;
    GroupObject *group;
    int rc;

    if (unpack_args("parse", args, nargs, kwnames, names, 4, 3, a) < 0)
        return NULL;
    if (alive(t) < 0)
        return NULL;
    entry = PyTuple_Pack(3, a[1], a[2], a[3] != NULL ? a[3] : empty_tuple);
    if (entry == NULL)
        return NULL;
    rc = PyDict_SetItem(t->statements, a[0], entry);      /* may run a key's __eq__: read the ring after */
    Py_DECREF(entry);
    if (rc < 0 || alive(t) < 0)
        return NULL;
    group = LAST_GROUP(t);
    group->has_last_parse = 1;
    Py_XSETREF(group->parse_text, Py_NewRef(a[1]));
    Py_XSETREF(group->parse_verdict, Py_NewRef(a[2]));
    Py_RETURN_NONE;
}

/*
 * render_params(params, types) for the record.  Here: None, or a list of
 * (bytes, False) text values of at most MAX_PARAM_CHARS bytes (never more
 * characters than bytes, so none is cut) and (None, anything) NULLs, each
 * value.decode("utf-8", "replace") as the reference does; anything else
 * (binary values, long ones, other shapes) goes to the reference.
 */
static PyObject *
render(PyObject *params, PyObject *types)
{
    PyObject *out, *item, *value, *text;
    Py_ssize_t i, n;

    if (params == Py_None)
        Py_RETURN_NONE;
    if (!PyList_CheckExact(params))
        goto reference;
    n = PyList_GET_SIZE(params);
    for (i = 0; i < n; i++) {          /* a first pass: nothing is allocated for what C does not do */
        item = PyList_GET_ITEM(params, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            goto reference;
        value = PyTuple_GET_ITEM(item, 0);
        if (value == Py_None)
            continue;
        if (!PyBytes_CheckExact(value) || PyTuple_GET_ITEM(item, 1) != Py_False
            || PyBytes_GET_SIZE(value) > max_param_chars)
            goto reference;
    }
    if ((out = PyList_New(n)) == NULL)
        return NULL;
    for (i = 0; i < n; i++) {          /* nothing in between runs Python code: params is as checked */
        value = PyTuple_GET_ITEM(PyList_GET_ITEM(params, i), 0);
        if (value == Py_None)
            text = Py_NewRef(Py_None);
        else {
            text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), "replace");
            if (text == NULL) {
                Py_DECREF(out);
                return NULL;
            }
        }
        PyList_SET_ITEM(out, i, text);
    }
    return out;

reference:
    if (need_helper(render_params_py) < 0)
        return NULL;
    return PyObject_CallFunctionObjArgs(render_params_py, params, types, NULL);
}

/*
 * The entry of a prepared statement (bind) or a portal (execute):
 *
 *     found = d.get(key)
 *     x, y, z = found if found is not None else (fmt % key, None, missing)
 *
 * x, y, z: new references; -1 with an exception set.
 */
static int
entry_or_unknown(PyObject *d, PyObject *key, PyObject *fmt, PyObject *missing, PyObject **x, PyObject **y,
                 PyObject **z)
{
    PyObject *found = PyDict_GetItemWithError(d, key);

    if (found != NULL) {                   /* a tuple of three of ours, taken before anything runs */
        *x = Py_NewRef(PyTuple_GET_ITEM(found, 0));
        *y = Py_NewRef(PyTuple_GET_ITEM(found, 1));
        *z = Py_NewRef(PyTuple_GET_ITEM(found, 2));
        return 0;
    }
    if (PyErr_Occurred())
        return -1;
    if ((*x = PyUnicode_Format(fmt, key)) == NULL)
        return -1;
    *y = Py_NewRef(Py_None);
    *z = Py_NewRef(missing);
    return 0;
}

/*
 *     found = self.statements.get(statement)
 *     text, verdict, types = found if found is not None else (
 *         "<unknown prepared statement %r>" % statement, None, ())
 *     self.portals[portal] = (text, verdict, render_params(params, types) if self.capture_params else None)
 */
static PyObject *
tracker_bind(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"portal", "statement", "params"};
    PyObject *a[3], *text, *verdict, *types, *rendered, *entry;
    int rc;

    if (unpack_args("bind", args, nargs, kwnames, names, 3, 3, a) < 0)
        return NULL;
    if (alive(t) < 0)
        return NULL;
    if (entry_or_unknown(t->statements, a[1], fmt_unknown_statement, empty_tuple, &text, &verdict, &types) < 0)
        return NULL;
    rendered = t->capture_params ? render(a[2], types) : Py_NewRef(Py_None);
    entry = rendered != NULL ? PyTuple_Pack(3, text, verdict, rendered) : NULL;
    Py_XDECREF(rendered);
    Py_DECREF(types);
    Py_DECREF(verdict);
    Py_DECREF(text);
    if (entry == NULL)
        return NULL;
    rc = alive(t) < 0 ? -1 : PyDict_SetItem(t->portals, a[0], entry);
    Py_DECREF(entry);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/*
 *     found = self.portals.get(portal)
 *     text, verdict, params = found if found is not None else ("<unknown portal %r>" % portal, None, None)
 *     self.groups[-1].items.append(Statement(text, "execute", self.clock(), verdict, params))
 *
 * (The group is taken before the clock is called, as Python evaluates it.)
 */
static PyObject *
tracker_execute(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"portal"};
    PyObject *a[1], *text, *verdict, *params, *started, *st = NULL;
    GroupObject *group;
    int rc = -1;

    if (unpack_args("execute", args, nargs, kwnames, names, 1, 1, a) < 0)
        return NULL;
    if (alive(t) < 0)
        return NULL;
    if (entry_or_unknown(t->portals, a[0], fmt_unknown_portal, Py_None, &text, &verdict, &params) < 0)
        return NULL;
    if (alive(t) < 0)                      /* a repr() may have run */
        goto done;
    group = (GroupObject *) Py_NewRef(LAST_GROUP(t));
    started = tracker_now(t);
    if (started != NULL) {
        st = statement_make(text, s_execute, started, verdict, params);
        Py_DECREF(started);
        if (st != NULL)
            rc = group_append(group, st);
    }
    Py_XDECREF(st);
    Py_DECREF(group);
done:
    Py_DECREF(params);
    Py_DECREF(verdict);
    Py_DECREF(text);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* (self.statements if kind == "S" else self.portals).pop(name, None) */
static PyObject *
tracker_close(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"kind", "name"};
    PyObject *a[2], *d, *old;
    int is_s, rc;

    if (unpack_args("close", args, nargs, kwnames, names, 2, 2, a) < 0)
        return NULL;
    if (alive(t) < 0)
        return NULL;
    if ((is_s = equal(a[0], s_S)) < 0 || alive(t) < 0)
        return NULL;
    d = Py_NewRef(is_s ? t->statements : t->portals);
    old = PyDict_GetItemWithError(d, a[1]);
    if (old == NULL) {
        Py_DECREF(d);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(old);                        /* dropped after the dict lets go of it */
    rc = PyDict_DelItem(d, a[1]);
    if (rc < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {   /* gone meanwhile (a key's __eq__): as pop */
        PyErr_Clear();
        rc = 0;
    }
    Py_DECREF(old);
    Py_DECREF(d);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* self.copy_in += nbytes */
static PyObject *
tracker_copy_data(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"nbytes"};
    PyObject *a[1], *old, *sum;

    if (unpack_args("copy_data", args, nargs, kwnames, names, 1, 1, a) < 0)
        return NULL;
    if (alive(t) < 0)
        return NULL;
    old = Py_NewRef(t->copy_in);           /* held: an __radd__ could replace it */
    sum = PyNumber_InPlaceAdd(old, a[0]);
    Py_DECREF(old);
    if (sum == NULL)
        return NULL;
    if (alive(t) < 0) {                    /* an __add__ may have run */
        Py_DECREF(sum);
        return NULL;
    }
    Py_SETREF(t->copy_in, sum);
    Py_RETURN_NONE;
}

static PyObject *
tracker_sync(TrackerObject *t, PyObject *Py_UNUSED(ignored))
{
    if (alive(t) < 0 || tracker_do_sync(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------- server side */

/* self.copying = None; self.copy_in = 0 (and the like): drop the pair, references last. */
static void
tracker_set_copying(TrackerObject *t, PyObject *st, PyObject *at)
{
    PyObject *old_st = t->copying_st, *old_at = t->copying_at;

    t->copying_st = st != NULL ? Py_NewRef(st) : NULL;
    t->copying_at = at != NULL ? Py_NewRef(at) : NULL;
    Py_XDECREF(old_st);
    Py_XDECREF(old_at);
}

/*
 * _end_copy(st):
 *     if self.copying is not None and self.copying[0] is st:
 *         st.copy_bytes += self.copy_in if st.copy_direction == "in" else self.copy_out_of() - self.copying[1]
 *         self.copying = None
 *         self.copy_in = 0
 *
 * In Python's order: st.copy_bytes read first, then the right-hand side
 * (self.copying[1] read after copy_out_of() returns).
 */
static int
tracker_end_copy(TrackerObject *t, PyObject *st)
{
    PyObject *old, *direction, *x, *sum;
    int in;

    if (t->copying_st == NULL || t->copying_st != st)
        return 0;
    if ((old = GET(st, copy_bytes)) == NULL)
        return -1;
    if ((direction = GET(st, copy_direction)) == NULL) {
        Py_DECREF(old);
        return -1;
    }
    in = equal(direction, s_in);
    Py_DECREF(direction);
    if (in < 0) {
        Py_DECREF(old);
        return -1;
    }
    if (in) {
        if (alive(t) < 0) {
            Py_DECREF(old);
            return -1;
        }
        x = Py_NewRef(t->copy_in);
    }
    else {
        PyObject *out = tracker_copy_out(t);

        if (out == NULL) {
            Py_DECREF(old);
            return -1;
        }
        if (t->copying_st == NULL) {       /* self.copying[1] on a copying a callback set to None */
            PyErr_SetString(PyExc_TypeError, "'NoneType' object is not subscriptable");
            x = NULL;
        }
        else {
            PyObject *at = Py_NewRef(t->copying_at);     /* held: a __sub__ could replace it */

            x = PyNumber_Subtract(out, at);
            Py_DECREF(at);
        }
        Py_DECREF(out);
    }
    if (x == NULL) {
        Py_DECREF(old);
        return -1;
    }
    sum = PyNumber_InPlaceAdd(old, x);
    Py_DECREF(x);
    Py_DECREF(old);
    if (sum == NULL)
        return -1;
    Py_XSETREF(ST(st)->copy_bytes, sum);
    tracker_set_copying(t, NULL, NULL);
    Py_XSETREF(t->copy_in, Py_NewRef(zero));
    return 0;
}

/* st.via == "execute" (or, with also_parse, st.via == "execute" or st.via == "parse"). */
static int
via_is(PyObject *st, int also_parse)
{
    PyObject *via = GET(st, via);
    int r;

    if (via == NULL)
        return -1;
    r = equal(via, s_execute);
    Py_DECREF(via);
    if (r != 0 || !also_parse)
        return r;
    if ((via = GET(st, via)) == NULL)
        return -1;
    r = equal(via, s_parse);
    Py_DECREF(via);
    return r;
}

/* st.tags.append(tag) */
static int
append_tag(PyObject *st, PyObject *tag)
{
    PyObject *tags = GET(st, tags);
    int rc;

    if (tags == NULL)
        return -1;
    rc = append(tags, tag);
    Py_DECREF(tags);
    return rc;
}

/* body.rstrip(b"\x00").decode("utf-8", "replace") */
static PyObject *
decode_tag(PyObject *body)
{
    PyObject *stripped, *r;

    if (PyBytes_CheckExact(body)) {
        const char *s = PyBytes_AS_STRING(body);
        Py_ssize_t n = PyBytes_GET_SIZE(body);

        while (n > 0 && s[n - 1] == '\0')
            n--;
        return PyUnicode_DecodeUTF8(s, n, "replace");
    }
    stripped = PyObject_CallMethodOneArg(body, s_rstrip, s_nul);
    if (stripped == NULL)
        return NULL;
    r = PyObject_CallMethodObjArgs(stripped, s_decode, s_utf8, s_replace, NULL);
    Py_DECREF(stripped);
    return r;
}

/*
 * A DataRow:
 *     st = self._current(group)
 *     if st is not None and self.capture_rows:
 *         if st.sample is None:
 *             st.sample = []
 *         if len(st.sample) < self.capture_rows:
 *             st.sample.append(_data_row(body))
 *         if len(st.sample) >= self.capture_rows and self.watch_rows is not None:
 *             self.watch_rows(False)           # the rest of this result goes by in bulk
 */
static int
tracker_data_row(TrackerObject *t, GroupObject *group, PyObject *body)
{
    PyObject *st, *sample, *row;
    Py_ssize_t n;
    int rc = -1;

    if (t->capture_rows == 0)
        return 0;
    if ((st = group_current(group)) == NULL)
        return 0;
    if ((sample = GET(st, sample)) == NULL)
        goto done;
    if (sample == Py_None) {
        Py_DECREF(sample);
        if ((sample = PyList_New(0)) == NULL)
            goto done;
        SET(st, sample, sample);
    }
    n = PyObject_Size(sample);
    if (n < 0)
        goto done_sample;
    if (n < t->capture_rows) {
        /* st.sample.append is looked up before _data_row(body) runs, as Python evaluates it: a
         * sample that is not a list fails there, before a malformed row could. */
        PyObject *meth = NULL;

        if (!PyList_CheckExact(sample) && (meth = PyObject_GetAttr(sample, s_append)) == NULL)
            goto done_sample;
        if (need_helper(data_row_py) < 0 || (row = PyObject_CallOneArg(data_row_py, body)) == NULL) {
            Py_XDECREF(meth);
            goto done_sample;
        }
        if (meth == NULL)
            rc = PyList_Append(sample, row);
        else {
            PyObject *r = PyObject_CallOneArg(meth, row);
            rc = r == NULL ? -1 : 0;
            Py_XDECREF(r);
            Py_DECREF(meth);
        }
        Py_DECREF(row);
        if (rc < 0)
            goto done_sample;
        rc = -1;
    }
    Py_DECREF(sample);
    if ((sample = GET(st, sample)) == NULL)          /* len(st.sample): read again */
        goto done;
    n = PyObject_Size(sample);
    if (n < 0)
        goto done_sample;
    if (n >= t->capture_rows && t->watch_rows != NULL) {
        PyObject *watch = Py_NewRef(t->watch_rows);

        rc = call1_void(watch, Py_False);
        Py_DECREF(watch);
        goto done_sample;
    }
    rc = 0;
done_sample:
    Py_DECREF(sample);
done:
    Py_DECREF(st);
    return rc;
}

/*
 * _ready(group):
 *     if group.next < len(group.items):
 *         now = self.clock()
 *         for st in group.items[group.next:]:
 *             st.ended = now
 *             if st.via == "execute" or st.via == "parse":
 *                 st.skipped = True        # the server skipped it after an earlier error
 *             self.emit(st)
 *     if len(self.groups) > 1:
 *         self.groups.popleft()
 *     else:                                # a ReadyForQuery nobody asked for: start afresh
 *         self.groups[0] = _Group()
 */
static int
tracker_ready(TrackerObject *t, GroupObject *group)
{
    if (group->next < group_len(group)) {
        PyObject *now, *rest;
        Py_ssize_t i;

        if ((now = tracker_now(t)) == NULL)
            return -1;
        rest = group->items != NULL ? PyList_GetSlice(group->items, group->next, PyList_GET_SIZE(group->items))
                                    : PyList_New(0);
        if (rest == NULL) {
            Py_DECREF(now);
            return -1;
        }
        for (i = 0; i < PyList_GET_SIZE(rest); i++) {
            PyObject *st = PyList_GET_ITEM(rest, i);       /* rest is ours: its items stay alive */
            int was_skipped;

            SET(st, ended, now);
            if ((was_skipped = via_is(st, 1)) < 0)
                goto loop_error;
            if (was_skipped)
                SET(st, skipped, Py_True);
            if (alive(t) < 0 || call1_void(t->emit, st) < 0)
                goto loop_error;
        }
        Py_DECREF(rest);
        Py_DECREF(now);
        goto pop;
loop_error:
        Py_DECREF(rest);
        Py_DECREF(now);
        return -1;
    }
pop:
    if (alive(t) < 0)
        return -1;
    if (t->count > 1) {                    /* popleft, whichever group is first now */
        GroupObject *first = FIRST_GROUP(t);

        FIRST_GROUP(t) = NULL;
        t->head = (t->head + 1) & (t->cap - 1);
        t->count--;
        Py_DECREF(first);
    }
    else {
        GroupObject *fresh = group_make(), *old;

        if (fresh == NULL)
            return -1;
        if (alive(t) < 0) {                /* (an allocation may run the GC's callbacks) */
            Py_DECREF(fresh);
            return -1;
        }
        old = FIRST_GROUP(t);
        FIRST_GROUP(t) = fresh;
        Py_DECREF(old);
    }
    return 0;
}

/*
 * CommandComplete, EmptyQueryResponse, PortalSuspended:
 *     if group.next >= len(group.items):
 *         return
 *     st = group.items[group.next]
 *     if mtype == PqMsg_CommandComplete:
 *         st.tags.append(body.rstrip(b"\x00").decode("utf-8", "replace"))
 *     elif mtype == PqMsg_PortalSuspended:
 *         st.tags.append("(suspended)")
 *     if self.copying is not None:
 *         self._end_copy(st)
 *     if st.via == "execute":
 *         st.ended = now
 *         group.next += 1
 *         self.emit(st)
 */
static int
tracker_complete(TrackerObject *t, GroupObject *group, long mtype, PyObject *body, PyObject *now)
{
    PyObject *st, *tag;
    int rc = -1, execute;

    if ((st = group_current(group)) == NULL)
        return 0;
    if (mtype == MSG_COMMAND_COMPLETE) {
        if ((tag = decode_tag(body)) == NULL)
            goto done;
        rc = append_tag(st, tag);
        Py_DECREF(tag);
        if (rc < 0)
            goto done;
        rc = -1;
    }
    else if (mtype == MSG_PORTAL_SUSPENDED && append_tag(st, s_suspended) < 0)
        goto done;
    if (t->copying_st != NULL && tracker_end_copy(t, st) < 0)
        goto done;
    if ((execute = via_is(st, 0)) < 0)
        goto done;
    if (execute) {
        SET(st, ended, now);
        group->next += 1;
        if (alive(t) < 0 || call1_void(t->emit, st) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_DECREF(st);
    return rc;
}

/* fields.get(key) for the dict _error_fields returns (any mapping with .get, as the reference). */
static PyObject *
field_get(PyObject *fields, PyObject *key)
{
    PyObject *v;

    if (PyDict_CheckExact(fields)) {
        v = PyDict_GetItemWithError(fields, key);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            v = Py_None;
        }
        return Py_NewRef(v);
    }
    return PyObject_CallMethodOneArg(fields, s_get, key);
}

/*
 * ErrorResponse:
 *     st = self._current(group)
 *     if st is None:
 *         if group.last_parse is None and not group.synced:
 *             return                   # an error outside any request (e.g. a FATAL): the end says it
 *         text, verdict = group.last_parse or ("<no statement>", None)
 *         st = Statement(text, "parse", now, verdict)
 *         group.items.append(st)
 *         group.next = len(group.items) - 1
 *     fields = _error_fields(body)
 *     st.sqlstate, st.message = fields.get("C"), fields.get("M")
 *     self._end_copy(st)
 *     if st.via == "execute" or st.via == "parse":
 *         st.ended = now
 *         group.next += 1
 *         group.failed = True
 *         self.emit(st)
 *     # a Query: the rest of its text is abandoned, the statement ends at ReadyForQuery
 */
static int
tracker_error(TrackerObject *t, GroupObject *group, PyObject *body, PyObject *now)
{
    PyObject *st, *fields = NULL, *sqlstate = NULL, *message = NULL;
    int rc = -1, ends;

    if ((st = group_current(group)) == NULL) {
        if (!group->has_last_parse && !group->synced)
            return 0;
        if (group->has_last_parse)
            st = statement_make(group->parse_text, s_parse, now, group->parse_verdict, Py_None);
        else
            st = statement_make(s_no_statement, s_parse, now, Py_None, Py_None);
        if (st == NULL)
            return -1;
        if (group_append(group, st) < 0)
            goto done;
        group->next = PyList_GET_SIZE(group->items) - 1;
    }
    if (need_helper(error_fields_py) < 0)
        goto done;
    if ((fields = PyObject_CallOneArg(error_fields_py, body)) == NULL)
        goto done;
    if ((sqlstate = field_get(fields, s_C)) == NULL || (message = field_get(fields, s_M)) == NULL)
        goto done;
    SET(st, sqlstate, sqlstate);
    SET(st, message, message);
    if (tracker_end_copy(t, st) < 0)
        goto done;
    if ((ends = via_is(st, 1)) < 0)
        goto done;
    if (ends) {
        SET(st, ended, now);
        group->next += 1;
        if (alive(t) < 0 || call1_void(t->emit, st) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(message);
    Py_XDECREF(sqlstate);
    Py_XDECREF(fields);
    Py_DECREF(st);
    return rc;
}

/*
 * CopyInResponse, CopyOutResponse, CopyBothResponse:
 *     st = self._current(group)
 *     if st is not None:
 *         st.copy_direction = {PqMsg_CopyInResponse: "in", PqMsg_CopyOutResponse: "out"}.get(mtype, "both")
 *         self.copy_in = 0
 *         self.copying = (st, self.copy_out_of())
 */
static int
tracker_copy_response(TrackerObject *t, GroupObject *group, long mtype)
{
    PyObject *st, *at;

    if ((st = group_current(group)) == NULL)
        return 0;
    SET(st, copy_direction,
        mtype == MSG_COPY_IN_RESPONSE ? s_in : mtype == MSG_COPY_OUT_RESPONSE ? s_out : s_both);
    Py_XSETREF(t->copy_in, Py_NewRef(zero));
    at = tracker_copy_out(t);
    if (at == NULL) {
        Py_DECREF(st);
        return -1;
    }
    tracker_set_copying(t, st, at);
    Py_DECREF(at);
    Py_DECREF(st);
    return 0;
}

/*
 * on_server(mtype, body):
 *     group = self.groups[0]
 *     if mtype == PqMsg_DataRow:
 *         ... (tracker_data_row)
 *         return
 *     if self.watch_rows is not None:
 *         self.watch_rows(True)                    # the next statement's rows are wanted again
 *     if mtype == PqMsg_ReadyForQuery:
 *         self._ready(group)
 *         return
 *     now = self.clock()
 *     if mtype == PqMsg_CommandComplete or mtype == PqMsg_EmptyQueryResponse or mtype == PqMsg_PortalSuspended:
 *         ... (tracker_complete)
 *     elif mtype == PqMsg_ErrorResponse:
 *         ... (tracker_error)
 *     elif mtype in (PqMsg_CopyInResponse, PqMsg_CopyOutResponse, PqMsg_CopyBothResponse):
 *         ... (tracker_copy_response)
 */
static PyObject *
tracker_on_server(TrackerObject *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"mtype", "body"};
    PyObject *a[2], *now = NULL;
    GroupObject *group;
    long mtype;
    int rc = -1;

    if (unpack_args("on_server", args, nargs, kwnames, names, 2, 2, a) < 0)
        return NULL;
    if (!PyLong_Check(a[0])) {
        PyErr_Format(PyExc_TypeError, "on_server(): mtype must be an int, not %.100s", Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    mtype = PyLong_AsLong(a[0]);
    if (mtype == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();                     /* no message type: as any other unknown type */
        mtype = -2;
    }
    if (alive(t) < 0)
        return NULL;
    group = (GroupObject *) Py_NewRef(FIRST_GROUP(t));
    if (mtype == MSG_DATA_ROW) {
        rc = tracker_data_row(t, group, a[1]);
        goto done;
    }
    if (t->watch_rows != NULL) {
        PyObject *watch = Py_NewRef(t->watch_rows);

        rc = call1_void(watch, Py_True);
        Py_DECREF(watch);
        if (rc < 0)
            goto done;
        rc = -1;
    }
    if (mtype == MSG_READY_FOR_QUERY) {
        rc = tracker_ready(t, group);
        goto done;
    }
    if ((now = tracker_now(t)) == NULL)
        goto done;
    if (alive(t) < 0)
        goto done;
    switch (mtype) {
    case MSG_COMMAND_COMPLETE:
    case MSG_EMPTY_QUERY_RESPONSE:
    case MSG_PORTAL_SUSPENDED:
        rc = tracker_complete(t, group, mtype, a[1], now);
        break;
    case MSG_ERROR_RESPONSE:
        rc = tracker_error(t, group, a[1], now);
        break;
    case MSG_COPY_IN_RESPONSE:
    case MSG_COPY_OUT_RESPONSE:
    case MSG_COPY_BOTH_RESPONSE:
        rc = tracker_copy_response(t, group, mtype);
        break;
    default:
        rc = 0;
    }
done:
    Py_XDECREF(now);
    Py_DECREF(group);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* pending(): [st for g in self.groups for st in g.items[g.next:]] */
static PyObject *
tracker_pending(TrackerObject *t, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    Py_ssize_t i, j;

    if (out == NULL)
        return NULL;
    for (i = 0; i < t->count; i++) {       /* appending to a fresh list runs no Python code */
        GroupObject *g = RING_AT(t, i);

        for (j = g->next < 0 ? 0 : g->next; j < group_len(g); j++)
            if (PyList_Append(out, PyList_GET_ITEM(g->items, j)) < 0) {
                Py_DECREF(out);
                return NULL;
            }
    }
    return out;
}

#define FASTCALL_KW(f) (PyCFunction) (void (*)(void)) (f), METH_FASTCALL | METH_KEYWORDS

static PyMethodDef tracker_methods[] = {
    {"query", FASTCALL_KW(tracker_query), "query(text, verdict): a Query message."},
    {"function_call", FASTCALL_KW(tracker_function_call), "function_call(verdict): a FunctionCall message."},
    {"parse", FASTCALL_KW(tracker_parse), "parse(name, text, verdict, param_types=()): a Parse message."},
    {"bind", FASTCALL_KW(tracker_bind), "bind(portal, statement, params): a Bind message (decode_bind's params)."},
    {"execute", FASTCALL_KW(tracker_execute), "execute(portal): an Execute message."},
    {"close", FASTCALL_KW(tracker_close), "close(kind, name): a Close message ('S' statement, else portal)."},
    {"copy_data", FASTCALL_KW(tracker_copy_data), "copy_data(nbytes): a CopyData message from the client."},
    {"sync", (PyCFunction) tracker_sync, METH_NOARGS, "sync(): a Sync message."},
    {"on_server", FASTCALL_KW(tracker_on_server), "on_server(mtype, body): a message from the server."},
    {"pending", (PyCFunction) tracker_pending, METH_NOARGS,
     "pending() -> [Statement]: statements sent and not yet answered (a session cut mid-statement)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy.session._track.StatementTracker",
    .tp_basicsize = sizeof(TrackerObject),
    .tp_dealloc = (destructor) tracker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "StatementTracker(emit, *, capture_params=True, copy_out_bytes=None, clock=time.time, "
              "capture_rows=0, watch_rows=None): statements paired with their outcome, for the recording "
              "(see proxy.session.track.StatementTrackerPy, the reference).",
    .tp_traverse = (traverseproc) tracker_traverse,
    .tp_clear = (inquiry) tracker_clear,
    .tp_methods = tracker_methods,
    .tp_new = tracker_new,
};

/* ------------------------------------------------------------------ module */

/* _setup(render_params, data_row, error_fields, rows, max_param_chars): track.py's helpers. */
static PyObject *
track_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t max_chars;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "_setup(render_params, data_row, error_fields, rows, max_param_chars) takes 5 arguments");
        return NULL;
    }
    max_chars = PyLong_AsSsize_t(args[4]);
    if (max_chars == -1 && PyErr_Occurred())
        return NULL;
    if (max_chars < 0) {
        PyErr_SetString(PyExc_ValueError, "max_param_chars must not be negative");
        return NULL;
    }
    Py_XSETREF(render_params_py, Py_NewRef(args[0]));
    Py_XSETREF(data_row_py, Py_NewRef(args[1]));
    Py_XSETREF(error_fields_py, Py_NewRef(args[2]));
    Py_XSETREF(rows_py, Py_NewRef(args[3]));
    max_param_chars = max_chars;
    Py_RETURN_NONE;
}

static PyMethodDef track_methods[] = {
    {"_setup", (PyCFunction) (void (*)(void)) track_setup, METH_FASTCALL,
     "_setup(render_params, data_row, error_fields, rows, max_param_chars): the Python helpers the "
     "tracker calls for its cold paths (proxy.session.track calls this on import)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef track_module = {
    PyModuleDef_HEAD_INIT, "_track",
    "The statement tracker compiled (see proxy.session.track, whose Python classes are the reference).", -1,
    track_methods,
};

static int
intern(PyObject **slot, const char *s)
{
    if (*slot == NULL)
        *slot = PyUnicode_InternFromString(s);
    return *slot != NULL ? 0 : -1;
}

PyMODINIT_FUNC
PyInit__track(void)
{
    PyObject *module, *time_module;

    if (intern(&s_query, "query") < 0 || intern(&s_execute, "execute") < 0 || intern(&s_parse, "parse") < 0
        || intern(&s_function_call, "function_call") < 0
        || intern(&s_function_call_text, "<FunctionCall message>") < 0
        || intern(&s_no_statement, "<no statement>") < 0 || intern(&s_suspended, "(suspended)") < 0
        || intern(&s_in, "in") < 0 || intern(&s_out, "out") < 0 || intern(&s_both, "both") < 0
        || intern(&s_S, "S") < 0 || intern(&s_C, "C") < 0 || intern(&s_M, "M") < 0 || intern(&s_get, "get") < 0
        || intern(&s_append, "append") < 0 || intern(&s_rstrip, "rstrip") < 0 || intern(&s_decode, "decode") < 0
        || intern(&s_utf8, "utf-8") < 0 || intern(&s_replace, "replace") < 0 || intern(&s_semicolon, ";") < 0
        || intern(&fmt_unknown_statement, "<unknown prepared statement %r>") < 0
        || intern(&fmt_unknown_portal, "<unknown portal %r>") < 0)
        return NULL;
    if (s_nul == NULL && (s_nul = PyBytes_FromStringAndSize("\0", 1)) == NULL)
        return NULL;
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL)
        return NULL;
    if (time_time == NULL) {
        if ((time_module = PyImport_ImportModule("time")) == NULL)
            return NULL;
        time_time = PyObject_GetAttrString(time_module, "time");
        Py_DECREF(time_module);
        if (time_time == NULL)
            return NULL;
    }
    if (PyType_Ready(&StatementType) < 0 || PyType_Ready(&GroupType) < 0 || PyType_Ready(&TrackerType) < 0)
        return NULL;
    if ((module = PyModule_Create(&track_module)) == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Statement", (PyObject *) &StatementType) < 0
        || PyModule_AddObjectRef(module, "StatementTracker", (PyObject *) &TrackerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
