/* pyinstrument_ai._speedups: the per-event paths that Python cannot make cheap enough.
 *
 * 1. ``Request`` and its ``send`` watcher: what the ASGI target does for every HTTP request
 *    (issue 9 allows about 3% of a trivial endpoint's cost for all of it). A C port of
 *    ``pyinstrument_ai.targets._http.Request`` (the reference: same constructor, attributes,
 *    ``finish`` and event) plus ``asgi_request(t0, scope)`` (the three id headers read from the
 *    scope) and ``Request.sender(send)`` (asgi.py's ``watched_send``). Uncommon cases (an id
 *    header was sent, a proxy's arrival time, a request id to be made up) call the Python
 *    functions of ``_http`` bound with ``bind()``, so each rule has one definition.
 *    ``asgi_begin(record_later, scope)`` and ``Request.end(scope, error)`` are what asgi.py's
 *    ``_serve`` does at a request's start and end (references: ``_py_begin``,
 *    ``_PyRequest.end``): one call each.
 * 2. ``encode_batch``: ``pyinstrument_ai.sinks.jsonl.encode_lines`` (the reference) for a
 *    whole batch, joined, as the flusher writes it: the same bytes, without a Python-level
 *    loop, ``%`` formatting and join per event.
 * 3. ``RecordLater`` and ``with_built``: recorder.py's record_later closure and _with_built
 *    (the references), the first also keeping a C request's record in records_later's form
 *    (``request_records`` builds it).
 * 4. ``SessionInit`` and ``OptionsWatch``: the onnxruntime target's wrapper of
 *    ``InferenceSession.__init__`` and its watch of ``SessionOptions`` (references:
 *    ``_py_init``, and the closures of ``_watch_options`` / ``_watching_property``), which
 *    run right after ORT built a session, with cold caches (issue 14 allows ~5% of a one-node
 *    model's creation for all of it). Uncommon cases call the target's ``_capture``.
 *
 * All are optional: without a C compiler at install time the package runs the Python
 * references (``pyinstrument_ai._native`` picks). tests/test_speedups.py and
 * tests/test_speedups_serve.py and tests/test_speedups_session.py hold both to the same results. No frame of ours appears in a traceback from here: C functions make none.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ shared state */

static PyObject *g_http;  /* the globals of pyinstrument_ai.targets._http (bind()) */

/* interned strings */
static PyObject *s_type, *s_body, *s_more_body, *s_status, *s_headers, *s_method, *s_get;
static PyObject *s_resp_body, *s_resp_start, *s_pathsend, *s_head;
static PyObject *s_request_id, *s_request_id_source, *s_server, *s_route, *s_headers_ns;
static PyObject *s_first_chunk_ns, *s_last_chunk_ns, *s_bytes, *s_chunks, *s_incomplete;
static PyObject *s_upstream, *s_error, *s_generated, *s_http_request, *s_module, *s_qualname;
static PyObject *s_prefix, *s_seq, *s_new_prefix, *s_choose_id, *s_parse_start, *s_report;
static PyObject *s_where_send, *s_default_kw, *s_decode, *s_latin1;
static PyObject *s_http, *s_asgi, *s_path, *s_where_request, *s_where_route, *s_where_fields;

static const char H_ID[] = "x-request-id";
static const char H_TP[] = "traceparent";
static const char H_START[] = "x-request-start";

static int
now_ns(long long *out)
{
    /* the clock of pyinstrument_ai.clock.now_ns (time.monotonic_ns): CLOCK_MONOTONIC on
     * Linux; on macOS CPython reads mach_absolute_time, which CLOCK_UPTIME_RAW is (CLOCK_MONOTONIC
     * there also counts time asleep) */
#ifdef __APPLE__
    *out = (long long)clock_gettime_nsec_np(CLOCK_UPTIME_RAW);
    return 0;
#else
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return 0;
#endif
}

static PyObject *
http_global(PyObject *name)
{
    /* a borrowed reference to a global of _http, or NULL with an exception */
    PyObject *v;
    if (g_http == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pyinstrument_ai._speedups is not bound");
        return NULL;
    }
    v = PyDict_GetItemWithError(g_http, name);
    if (v == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "pyinstrument_ai.targets._http has no %S", name);
    return v;
}

static void
report_in(PyObject *ns, PyObject *where)
{
    /* ns["report"](where, exc) (_guard.report, as the module whose globals ns are imported
     * it) for the exception being raised, then clear it; without ns or a report in it the
     * exception is dropped, as _guard.report drops its own. An exception that is not an
     * Exception (KeyboardInterrupt, SystemExit) is left raised. */
    PyObject *type, *value, *tb, *report, *r;
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    report = ns ? Py_XNewRef(PyDict_GetItemWithError(ns, s_report)) : NULL;
    if (report != NULL && value != NULL) {
        r = PyObject_CallFunctionObjArgs(report, where, value, NULL);
        Py_XDECREF(r);
    }
    Py_XDECREF(report);
    PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

static void
report_current(PyObject *where)
{
    /* report_in for the ASGI paths: _http's report */
    report_in(g_http, where);
}

static int
as_ll(PyObject *v, long long *out)
{
    /* a time in ns as a C integer (PyLong_AsLongLong goes through a byte array for the
     * multi-digit ints that times are) */
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "a time beyond 64 bits");
        return -1;
    }
    *out = x;
    return 0;
}

/* getattr(o, name, None)'s lookup: 1 found, 0 not (no exception), -1 failed */
#if PY_VERSION_HEX >= 0x030D0000
#define get_optional_attr PyObject_GetOptionalAttr
#else
#define get_optional_attr _PyObject_LookupAttr
#endif

static PyObject *
mapping_get(PyObject *m, PyObject *key)
{
    /* m.get(key): a new reference (None if absent), NULL with an exception */
    PyObject *v;
    if (PyDict_CheckExact(m)) {
        v = PyDict_GetItemWithError(m, key);
        if (v == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        Py_INCREF(v);
        return v;
    }
    return PyObject_CallMethodObjArgs(m, s_get, key, NULL);
}

static int
str_eq(PyObject *a, PyObject *interned)
{
    /* a == interned (a str): 1, 0, or -1 with an exception */
    if (a == interned)
        return 1;
    if (PyUnicode_CheckExact(a)) {
        /* two interned strs are equal only if they are one object (most messages' types and
         * scopes' are literals of the framework's code, interned) */
        if (PyUnicode_CHECK_INTERNED(a))
            return 0;
        return PyUnicode_Compare(a, interned) == 0 ? 1 : (PyErr_Occurred() ? -1 : 0);
    }
    return PyObject_RichCompareBool(a, interned, Py_EQ);
}

/* ------------------------------------------------------------------------ Request */

typedef struct {
    PyObject_HEAD
    /* Tag's attributes (request_context reads ``fields`` and ``done``). ``fields`` is
     * {"request_id": rid}, made when first read (a generation's tag): until then NULL, and
     * the id is ``rid`` (a dict less to allocate, keep until the flush and free per request) */
    PyObject *fields;
    PyObject *rid;
    /* a made-up id is made when first read (most are read only by the flusher, which writes
     * them without making them): until then ``rid`` is NULL, and the id is
     * id_prefix + str(id_seq) (_http.generated_id) */
    PyObject *id_prefix;
    long long id_seq;
    char done;
    PyObject *key;
    PyObject *source;
    PyObject *method;
    PyObject *server;
    PyObject *upstream;
    PyObject *status;
    PyObject *route;
    PyObject *handled;
    long long t0, headers_t, first_t, last_t; /* valid when the has_ flag is set */
    char has_h, has_f, has_l;
    long long nbytes, chunks;
    /* settled by finish(): what the event holds */
    long long t1;
    char fin_has_f;
    PyObject *fin_route; /* str or None */
    PyObject *fin_error; /* "module.qualname" or NULL */
    unsigned long tid;   /* the thread that finished it (_thread.get_ident()) */
    /* set by asgi_begin(), taken by end(): the tag's context token, and the recorder's
     * record_later the event goes to (the one recording when the request arrived) */
    PyObject *token;
    PyObject *record;
    PyObject *weakreflist;
} RequestObject;

static PyTypeObject Request_Type;

static int
req_traverse(RequestObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fields);
    Py_VISIT(self->rid);
    Py_VISIT(self->id_prefix);
    Py_VISIT(self->key);
    Py_VISIT(self->source);
    Py_VISIT(self->method);
    Py_VISIT(self->server);
    Py_VISIT(self->upstream);
    Py_VISIT(self->status);
    Py_VISIT(self->route);
    Py_VISIT(self->handled);
    Py_VISIT(self->fin_route);
    Py_VISIT(self->fin_error);
    Py_VISIT(self->token);
    Py_VISIT(self->record);
    return 0;
}

static int
req_clear(RequestObject *self)
{
    Py_CLEAR(self->fields);
    Py_CLEAR(self->rid);
    Py_CLEAR(self->id_prefix);
    Py_CLEAR(self->key);
    Py_CLEAR(self->source);
    Py_CLEAR(self->method);
    Py_CLEAR(self->server);
    Py_CLEAR(self->upstream);
    Py_CLEAR(self->status);
    Py_CLEAR(self->route);
    Py_CLEAR(self->handled);
    Py_CLEAR(self->fin_route);
    Py_CLEAR(self->fin_error);
    Py_CLEAR(self->token);
    Py_CLEAR(self->record);
    return 0;
}

static void
req_dealloc(RequestObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    req_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
req_id_str(RequestObject *self)
{
    /* the request id given at creation (a borrowed reference), made now if it was left to
     * be made when read; NULL with an exception */
    if (self->rid == NULL) {
        if (self->id_prefix == NULL)
            return Py_None;
        self->rid = PyUnicode_FromFormat("%U%lld", self->id_prefix, self->id_seq);
        if (self->rid == NULL)
            return NULL;
        Py_CLEAR(self->id_prefix);
    }
    return self->rid;
}

static PyObject *
req_request_id(RequestObject *self)
{
    /* self.fields["request_id"]: from the dict once it was made (and perhaps changed) */
    PyObject *id;
    if (self->fields != NULL)
        return PyObject_GetItem(self->fields, s_request_id);
    id = req_id_str(self);
    return Py_XNewRef(id);
}

static int
generated_id(PyObject **prefix_out, PyObject **id_out, long long *seq_out)
{
    /* _http.generated_id(), on its globals: (_prefix or _new_prefix()) + str(next(_seq)).
     * Sets *id_out to that str, or (the usual case: a str prefix and an int that fits) leaves
     * it NULL and sets *prefix_out and *seq_out for the id to be made when read (req_id_str).
     * 0, or -1 with an exception. */
    PyObject *prefix, *seq, *n, *s;
    int truth, overflow;
    *prefix_out = *id_out = NULL;
    prefix = http_global(s_prefix);
    if (prefix == NULL)
        return -1;
    Py_INCREF(prefix);
    truth = prefix == Py_None ? 0 : PyObject_IsTrue(prefix);
    if (truth < 0) {
        Py_DECREF(prefix);
        return -1;
    }
    if (!truth) {
        PyObject *make = http_global(s_new_prefix);
        Py_DECREF(prefix);
        if (make == NULL)
            return -1;
        prefix = PyObject_CallNoArgs(make);
        if (prefix == NULL)
            return -1;
    }
    seq = http_global(s_seq);
    if (seq == NULL) {
        Py_DECREF(prefix);
        return -1;
    }
    if (!PyIter_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "'%.200s' object is not an iterator", Py_TYPE(seq)->tp_name);
        Py_DECREF(prefix);
        return -1;
    }
    Py_INCREF(seq);
    n = PyIter_Next(seq);
    Py_DECREF(seq);
    if (n == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetNone(PyExc_StopIteration);
        Py_DECREF(prefix);
        return -1;
    }
    if (PyUnicode_CheckExact(prefix) && PyLong_CheckExact(n)) {
        long long v = PyLong_AsLongLongAndOverflow(n, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred())) {
            Py_DECREF(n);
            *prefix_out = prefix;
            *seq_out = v;
            return 0;
        }
        PyErr_Clear();
    }
    s = PyObject_Str(n);
    Py_DECREF(n);
    if (s == NULL) {
        Py_DECREF(prefix);
        return -1;
    }
    *id_out = PyNumber_Add(prefix, s);
    Py_DECREF(prefix);
    Py_DECREF(s);
    return *id_out == NULL ? -1 : 0;
}

static RequestObject *
req_make(PyTypeObject *type, long long t0, PyObject *server, PyObject *key, PyObject *method,
         PyObject *rid, PyObject *tp, PyObject *start)
{
    /* _http.Request.__init__ */
    RequestObject *self;
    PyObject *id, *source, *id_prefix = NULL;
    long long id_seq = 0;
    int truth;

    if (rid == Py_None && tp == Py_None) { /* the common case: no id sent */
        if (generated_id(&id_prefix, &id, &id_seq) < 0)
            return NULL;
        source = Py_NewRef(s_generated);
    }
    else {
        PyObject *choose = http_global(s_choose_id), *pair;
        if (choose == NULL)
            return NULL;
        pair = PyObject_CallFunctionObjArgs(choose, rid, tp, NULL);
        if (pair == NULL)
            return NULL;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "choose_id must return (id, source)");
            return NULL;
        }
        id = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        source = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
        Py_DECREF(pair);
    }
    self = (RequestObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_XDECREF(id);
        Py_XDECREF(id_prefix);
        Py_DECREF(source);
        return NULL;
    }
    self->fields = NULL; /* made from the id when first read */
    self->rid = id;      /* or NULL, and made from these when first read: */
    self->id_prefix = id_prefix;
    self->id_seq = id_seq;
    self->source = source;
    self->done = 0;
    self->t0 = t0;
    self->server = Py_NewRef(server);
    self->key = Py_NewRef(key);
    self->method = Py_NewRef(PyUnicode_Check(method) ? method : Py_None);
    self->status = Py_NewRef(Py_None);
    self->route = Py_NewRef(Py_None);
    self->handled = Py_NewRef(Py_None);
    self->nbytes = self->chunks = 0;
    self->has_h = self->has_f = self->has_l = 0;
    truth = start == Py_None ? 0 : PyObject_IsTrue(start);
    if (truth < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (truth) {
        PyObject *parse = http_global(s_parse_start);
        self->upstream = parse ? PyObject_CallOneArg(parse, start) : NULL;
        if (self->upstream == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    else {
        self->upstream = Py_NewRef(Py_None);
    }
    return self;
}

static PyObject *
req_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"t0", "server", "key", "method", "x_request_id", "traceparent",
                             "request_start", NULL};
    long long t0;
    PyObject *server, *key, *method, *rid, *tp, *start;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LOOOOOO:Request", kwlist, &t0, &server, &key,
                                     &method, &rid, &tp, &start))
        return NULL;
    return (PyObject *)req_make(type, t0, server, key, method, rid, tp, start);
}

static PyObject *
latin1(PyObject *v)
{
    /* v.decode("latin-1") */
    if (PyBytes_CheckExact(v))
        return PyUnicode_DecodeLatin1(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), NULL);
    return PyObject_CallMethodObjArgs(v, s_decode, s_latin1, NULL);
}

static PyObject *g_id_headers; /* frozenset of the three names, as asgi.py's _ID_HEADERS */

static int
header_slot(PyObject *k)
{
    /* which of the three id headers k is: 0 id, 1 traceparent, 2 start, -1 none, -2 error */
    if (PyBytes_CheckExact(k)) {
        Py_ssize_t n = PyBytes_GET_SIZE(k);
        const char *p = PyBytes_AS_STRING(k);
        if (n == sizeof(H_ID) - 1 && memcmp(p, H_ID, n) == 0)
            return 0;
        if (n == sizeof(H_TP) - 1 && memcmp(p, H_TP, n) == 0)
            return 1;
        if (n == sizeof(H_START) - 1 && memcmp(p, H_START, n) == 0)
            return 2;
        return -1;
    }
    else {
        /* what ``k in _ID_HEADERS`` then ``k == b"..."`` do for any other object */
        static const char *names[3] = {H_ID, H_TP, H_START};
        int i, r;
        r = PySet_Contains(g_id_headers, k); /* hash, then == within the bucket */
        if (r <= 0)
            return r < 0 ? -2 : -1;
        for (i = 0; i < 3; i++) {
            PyObject *b = PyBytes_FromString(names[i]);
            if (b == NULL)
                return -2;
            r = PyObject_RichCompareBool(k, b, Py_EQ);
            Py_DECREF(b);
            if (r < 0)
                return -2;
            if (r)
                return i;
        }
        return -1;
    }
}

static PyObject *g_methods[9]; /* the common methods, interned */

static void
common_method(PyObject **method)
{
    /* A server makes the method's str per request; the request keeps it until the flush.
     * An equal interned one is kept instead: one object fewer per request waiting in memory. */
    PyObject *m = *method;
    int i;
    if (!PyUnicode_CheckExact(m) || !PyUnicode_IS_ASCII(m) || PyUnicode_GET_LENGTH(m) > 7)
        return;
    for (i = 0; i < 9; i++) {
        PyObject *c = g_methods[i];
        if (c == m)
            return;
        if (PyUnicode_GET_LENGTH(c) == PyUnicode_GET_LENGTH(m) &&
            memcmp(PyUnicode_1BYTE_DATA(c), PyUnicode_1BYTE_DATA(m), PyUnicode_GET_LENGTH(m)) == 0) {
            Py_SETREF(*method, Py_NewRef(c));
            return;
        }
    }
}

static RequestObject *
scope_request(long long t0, PyObject *scope, PyObject *server)
{
    /* asgi.py's _py_asgi_request: the request ``scope`` starts, its id headers read */
    PyObject *method = NULL, *headers = NULL, *it = NULL, *item;
    PyObject *found[3] = {NULL, NULL, NULL};
    RequestObject *req = NULL;
    int i, truth;

    headers = mapping_get(scope, s_headers);
    if (headers == NULL)
        return NULL;
    truth = PyObject_IsTrue(headers);
    if (truth < 0)
        goto done;
    if (truth) {
        it = PyObject_GetIter(headers);
        if (it == NULL)
            goto done;
        while ((item = PyIter_Next(it)) != NULL) {
            PyObject *k, *v;
            int slot;
            if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
                k = PyTuple_GET_ITEM(item, 0);
                v = PyTuple_GET_ITEM(item, 1);
                Py_INCREF(k);
                Py_INCREF(v);
            }
            else { /* ``for k, v in ...`` on anything else */
                PyObject *fast = PySequence_Fast(item, "cannot unpack a header");
                if (fast == NULL) {
                    Py_DECREF(item);
                    goto done;
                }
                if (PySequence_Fast_GET_SIZE(fast) != 2) {
                    PyErr_Format(PyExc_ValueError, "a header of %zd items, not 2",
                                 PySequence_Fast_GET_SIZE(fast));
                    Py_DECREF(fast);
                    Py_DECREF(item);
                    goto done;
                }
                k = Py_NewRef(PySequence_Fast_GET_ITEM(fast, 0));
                v = Py_NewRef(PySequence_Fast_GET_ITEM(fast, 1));
                Py_DECREF(fast);
            }
            Py_DECREF(item);
            slot = header_slot(k);
            Py_DECREF(k);
            if (slot == -2) {
                Py_DECREF(v);
                goto done;
            }
            if (slot >= 0) {
                PyObject *s = latin1(v);
                Py_DECREF(v);
                if (s == NULL)
                    goto done;
                Py_XSETREF(found[slot], s);
            }
            else {
                Py_DECREF(v);
            }
        }
        if (PyErr_Occurred())
            goto done;
    }
    method = mapping_get(scope, s_method);
    if (method == NULL)
        goto done;
    common_method(&method);
    req = req_make(&Request_Type, t0, server, scope, method, found[0] ? found[0] : Py_None,
                   found[1] ? found[1] : Py_None, found[2] ? found[2] : Py_None);
done:
    Py_XDECREF(it);
    Py_XDECREF(headers);
    Py_XDECREF(method);
    for (i = 0; i < 3; i++)
        Py_XDECREF(found[i]);
    return req;
}

static PyObject *
asgi_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    /* asgi_request(t0, scope, server): scope_request, for the tests that hold it to
     * _py_asgi_request */
    long long t0;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "asgi_request(t0, scope, server)");
        return NULL;
    }
    if (as_ll(args[0], &t0) < 0)
        return NULL;
    return (PyObject *)scope_request(t0, args[1], args[2]);
}

static PyObject *g_tag_var; /* request_context._current (use_tag()) */

static PyObject *
asgi_begin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    /* asgi_begin(record_later, scope): asgi.py's _py_begin. The arrival time is read first;
     * None when nothing is to be recorded (not recording, not an HTTP scope, or a wrapper of
     * ours already serves this scope), else the request, its tag current. */
    long long t0;
    PyObject *record, *scope, *kind, *cur = NULL;
    RequestObject *req;
    int http;
    if (now_ns(&t0) < 0)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "asgi_begin(record_later, scope)");
        return NULL;
    }
    record = args[0];
    scope = args[1];
    if (record == Py_None)
        Py_RETURN_NONE;
    if (g_tag_var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pyinstrument_ai._speedups: use_tag() not called");
        return NULL;
    }
    kind = PyObject_GetItem(scope, s_type); /* scope["type"] */
    if (kind == NULL)
        return NULL;
    http = str_eq(kind, s_http);
    Py_DECREF(kind);
    if (http <= 0)
        return http < 0 ? NULL : Py_NewRef(Py_None);
    if (PyContextVar_Get(g_tag_var, Py_None, &cur) < 0)
        return NULL;
    if (Py_IS_TYPE(cur, &Request_Type) && ((RequestObject *)cur)->key == scope) {
        Py_DECREF(cur); /* nested in our wrapper of the same request: it records */
        Py_RETURN_NONE;
    }
    Py_DECREF(cur);
    req = scope_request(t0, scope, s_asgi);
    if (req == NULL)
        return NULL;
    req->token = PyContextVar_Set(g_tag_var, (PyObject *)req);
    if (req->token == NULL) {
        Py_DECREF(req);
        return NULL;
    }
    req->record = Py_NewRef(record);
    return (PyObject *)req;
}

static PyObject *
ns_diff(long long a, long long b)
{
    /* a - b as an int, exact even where it does not fit 64 bits */
    long long d;
    PyObject *x, *y, *r = NULL;
    if (!__builtin_sub_overflow(a, b, &d))
        return PyLong_FromLongLong(d);
    x = PyLong_FromLongLong(a);
    y = PyLong_FromLongLong(b);
    if (x != NULL && y != NULL)
        r = PyNumber_Subtract(x, y);
    Py_XDECREF(x);
    Py_XDECREF(y);
    return r;
}

static PyObject *
opt_ns(char has, long long v, long long t0)
{
    if (!has)
        Py_RETURN_NONE;
    return ns_diff(v, t0);
}

static PyObject *
req_chunk(RequestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* Request.chunk(t, n) */
    long long t, n;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "chunk(t, n)");
        return NULL;
    }
    t = PyLong_AsLongLong(args[0]);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    n = PyLong_AsLongLong(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n) {
        if (!self->has_f) {
            self->first_t = t;
            self->has_f = 1;
        }
        self->last_t = t;
        self->has_l = 1;
        self->nbytes += n;
        self->chunks += 1;
    }
    Py_RETURN_NONE;
}

static int
set_item_steal(PyObject *d, PyObject *k, PyObject *v)
{
    int r;
    if (v == NULL)
        return -1;
    r = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return r;
}

static PyObject *
error_name(PyObject *error)
{
    /* f"{type(error).__module__}.{type(error).__qualname__}" */
    PyObject *t = (PyObject *)Py_TYPE(error), *m, *q, *out;
    m = PyObject_GetAttr(t, s_module);
    if (m == NULL)
        return NULL;
    q = PyObject_GetAttr(t, s_qualname);
    if (q == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    out = PyUnicode_FromFormat("%S.%S", m, q);
    Py_DECREF(m);
    Py_DECREF(q);
    return out;
}

static int
req_settle(RequestObject *self, long long t1, PyObject *route, PyObject *error)
{
    /* what _http.Request.finish computes before it makes the event: 0, or -1 with an
     * exception */
    int is_head = self->method == Py_None ? 0 : str_eq(self->method, s_head);
    if (is_head < 0)
        return -1;
    self->t1 = t1;
    self->fin_has_f = self->has_f;
    if (is_head) {
        /* a response to HEAD has no content (RFC 9110 9.3.2): see _http.Request.finish */
        self->nbytes = self->chunks = 0;
        self->fin_has_f = 0;
    }
    Py_XSETREF(self->fin_route, Py_NewRef(PyUnicode_CheckExact(route) ? route : self->route));
    if (error == Py_None) {
        error = self->handled; /* taken over from here; dropped */
        self->handled = Py_NewRef(Py_None);
    }
    else {
        Py_INCREF(error);
    }
    if (error != Py_None) {
        PyObject *name = error_name(error);
        Py_DECREF(error);
        if (name == NULL)
            return -1;
        Py_XSETREF(self->fin_error, name);
    }
    else {
        Py_DECREF(error);
    }
    return 0;
}

static RequestObject *
finished(PyObject *arg, const char *func, PyObject *unfinished)
{
    /* arg as a finished request, or NULL with TypeError (not a request) or ``unfinished`` */
    if (!PyObject_TypeCheck(arg, &Request_Type)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a finished Request", func);
        return NULL;
    }
    if (!((RequestObject *)arg)->done || ((RequestObject *)arg)->fin_route == NULL) {
        PyErr_Format(unfinished, "%s() takes a finished Request", func);
        return NULL;
    }
    return (RequestObject *)arg;
}

static PyObject *
request_fields(PyObject *module, PyObject *arg)
{
    /* request_fields(req): the http.request event's fields of a finished request, as
     * _http.Request.finish makes them (the recorder calls this when a sink wants a dict) */
    RequestObject *self = finished(arg, "request_fields", PyExc_ValueError);
    long long t0;
    PyObject *fields, *rid;
    if (self == NULL)
        return NULL;
    t0 = self->t0;
    fields = PyDict_New();
    if (fields == NULL)
        return NULL;
    rid = req_request_id(self); /* self.fields["request_id"] */
    if (set_item_steal(fields, s_request_id, rid) < 0 ||
        PyDict_SetItem(fields, s_request_id_source, self->source) < 0 ||
        PyDict_SetItem(fields, s_server, self->server) < 0 ||
        PyDict_SetItem(fields, s_method, self->method) < 0 ||
        PyDict_SetItem(fields, s_route, self->fin_route) < 0 ||
        PyDict_SetItem(fields, s_status, self->status) < 0 ||
        set_item_steal(fields, s_headers_ns, opt_ns(self->has_h, self->headers_t, t0)) < 0 ||
        set_item_steal(fields, s_first_chunk_ns, opt_ns(self->fin_has_f, self->first_t, t0)) < 0 ||
        set_item_steal(fields, s_last_chunk_ns, opt_ns(self->has_l, self->last_t, t0)) < 0 ||
        set_item_steal(fields, s_bytes, PyLong_FromLongLong(self->nbytes)) < 0 ||
        set_item_steal(fields, s_chunks, PyLong_FromLongLong(self->chunks)) < 0 ||
        /* the body never ended: the client never had a whole response */
        (!self->has_l && PyDict_SetItem(fields, s_incomplete, Py_True) < 0) ||
        (self->upstream != Py_None && PyDict_SetItem(fields, s_upstream, self->upstream) < 0) ||
        (self->fin_error != NULL && PyDict_SetItem(fields, s_error, self->fin_error) < 0)) {
        Py_DECREF(fields);
        return NULL;
    }
    return fields;
}

static PyObject *g_request_fields; /* the module's request_fields function */
static PyObject *g_request_records; /* the module's request_records function */
static PyTypeObject RecordLater_Type;
static int record_request(PyObject *record_later, RequestObject *req);

static PyObject *
request_record(RequestObject *q, PyObject *fifth, PyObject *sixth)
{
    /* ("http.request", t0, t1 - t0, tid, fifth[, sixth]): the record of a finished request
     * (``fifth`` stolen), or NULL with an exception */
    PyObject *rec = PyTuple_New(sixth ? 6 : 5), *t0, *dur, *tid;
    if (rec == NULL) {
        Py_DECREF(fifth);
        return NULL;
    }
    PyTuple_SET_ITEM(rec, 0, Py_NewRef(s_http_request));
    PyTuple_SET_ITEM(rec, 4, fifth);
    if (sixth)
        PyTuple_SET_ITEM(rec, 5, Py_NewRef(sixth));
    t0 = PyLong_FromLongLong(q->t0);
    dur = t0 ? ns_diff(q->t1, q->t0) : NULL;
    tid = dur ? PyLong_FromUnsignedLong(q->tid) : NULL;
    /* (a tuple's unset items are NULL, which its dealloc skips) */
    PyTuple_SET_ITEM(rec, 1, t0);
    PyTuple_SET_ITEM(rec, 2, dur);
    PyTuple_SET_ITEM(rec, 3, tid);
    if (tid == NULL) {
        Py_DECREF(rec);
        return NULL;
    }
    return rec;
}

static PyObject *
request_records(PyObject *module, PyObject *arg)
{
    /* request_records(req): [("http.request", t0, dur, tid, request_fields(req))], the records
     * of a finished request whose finish left them for later (records_later's form) */
    RequestObject *self = finished(arg, "request_records", PyExc_TypeError);
    PyObject *fields, *rec, *out;
    if (self == NULL)
        return NULL;
    fields = request_fields(module, arg);
    if (fields == NULL) {
        /* as recorder._built does for a record whose fields fail: the event keeps its name
         * and times, its fields say what failed, and it is reported */
        PyObject *type, *value, *tb, *name;
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Fetch(&type, &value, &tb);
        name = PyObject_GetAttrString(type, "__name__");
        PyErr_Restore(type, value, tb);
        report_current(s_where_fields);
        if (name == NULL || PyErr_Occurred()) {
            Py_XDECREF(name);
            return NULL;
        }
        fields = Py_BuildValue("{sN}", "fields_error", name);
        if (fields == NULL)
            return NULL;
    }
    rec = request_record(self, fields, NULL);
    if (rec == NULL)
        return NULL;
    out = PyList_New(1);
    if (out == NULL) {
        Py_DECREF(rec);
        return NULL;
    }
    PyList_SET_ITEM(out, 0, rec);
    return out;
}

static void
untrack_if_atomic(RequestObject *self)
{
    /* After finish the request holds strs, ints, None and its fields dict: unless one of them
     * is a tracked container (a user's object set as an attribute), it cannot be in a cycle,
     * and the collector need not traverse it while it waits in the recorder's buffer for the
     * flush (thousands of them at a busy server's rate; each collection of their generation
     * traversed them all). A setter that stores a tracked object tracks it again. */
    PyObject *refs[] = {self->fields, self->rid,      self->id_prefix, self->key,
                        self->source, self->method,   self->server,    self->upstream,
                        self->status, self->route,    self->handled,   self->fin_route,
                        self->fin_error};
    size_t i;
    for (i = 0; i < sizeof refs / sizeof refs[0]; i++)
        if (refs[i] != NULL && PyObject_GC_IsTracked(refs[i]))
            return;
    PyObject_GC_UnTrack(self);
}

static PyObject *finish_at(RequestObject *self, PyObject *record, long long t1,
                           PyObject *route, PyObject *error);
static PyObject *finish_failed(RequestObject *self);

static PyObject *
req_finish(RequestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* Request.finish(record_later, t1, route, error): end the tag, and record the event once,
     * its fields left for the flusher: record_later("http.request", t0, dur, request_fields,
     * self). The JSONL sink writes its line straight from here (encode_batch); other sinks
     * get request_fields(self). (The Python Request takes ``record`` and builds the dict.) */
    long long t1;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "finish(record_later, t1, route, error)");
        return NULL;
    }
    if (self->done)
        Py_RETURN_NONE;
    if (as_ll(args[1], &t1) < 0) {
        self->done = 1; /* (as a failed finish below: recorded never, reported once) */
        Py_SETREF(self->key, Py_NewRef(Py_None));
        return finish_failed(self);
    }
    return finish_at(self, args[0], t1, args[2], args[3]);
}

static PyObject *
finish_at(RequestObject *self, PyObject *record, long long t1, PyObject *route,
          PyObject *error)
{
    /* finish() with the end time as a C integer (Request.end has it so) */
    PyObject *res, *argv[5];
    if (self->done)
        Py_RETURN_NONE;
    self->done = 1;
    /* a thread started during the request may keep this object (its tag) for long: not the
     * scope with it */
    Py_SETREF(self->key, Py_NewRef(Py_None));
    if (req_settle(self, t1, route, error) < 0)
        return finish_failed(self);
    untrack_if_atomic(self);
    self->tid = PyThread_get_thread_ident();
    if (Py_IS_TYPE(record, &RecordLater_Type)) {
        /* the recorder's own: its records left for later as records_later leaves them, the
         * times and thread in this request (no ints made per request to wait for the flush) */
        if (record_request(record, self) < 0)
            return finish_failed(self);
        Py_RETURN_NONE;
    }
    argv[0] = s_http_request;
    argv[1] = PyLong_FromLongLong(self->t0);
    argv[2] = ns_diff(t1, self->t0);
    argv[3] = g_request_fields;
    argv[4] = (PyObject *)self;
    if (argv[1] == NULL || argv[2] == NULL) {
        Py_XDECREF(argv[1]);
        Py_XDECREF(argv[2]);
        return finish_failed(self);
    }
    res = PyObject_Vectorcall(record, argv, 5, NULL);
    Py_DECREF(argv[1]);
    Py_DECREF(argv[2]);
    if (res == NULL)
        return finish_failed(self);
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyObject *
finish_failed(RequestObject *self)
{
    /* a finish that raised: reported as "<server>.request", None returned (an exception that
     * is not an Exception stays raised) */
    PyObject *type, *value, *tb, *where;
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
    PyErr_Fetch(&type, &value, &tb);
    where = PyUnicode_FromFormat("%S.request", self->server);
    if (where == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    PyErr_Restore(type, value, tb);
    report_current(where);
    Py_DECREF(where);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
req_end(RequestObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* Request.end(scope, error): asgi.py's _PyRequest.end, when the application has returned
     * or raised: the end time, the tag reset, the route template read (Starlette's matched
     * route, ``scope["route"].path``), and finish() with the record_later asgi_begin kept.
     * Our own failures are reported, never raised. */
    long long t1;
    PyObject *token, *record, *route = NULL, *res;
    if (now_ns(&t1) < 0)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "end(scope, error)");
        return NULL;
    }
    token = self->token;
    record = self->record;
    self->token = self->record = NULL;
    if (token != NULL) { /* (asgi_begin made it: g_tag_var is set) */
        int reset = PyContextVar_Reset(g_tag_var, token);
        Py_DECREF(token);
        if (reset < 0) {
            if (PyErr_ExceptionMatches(PyExc_ValueError))
                PyErr_Clear(); /* made in another context: cannot happen for one await chain */
            else
                report_current(s_where_request);
            if (PyErr_Occurred())
                goto fail;
        }
    }
    if (record == NULL) /* not begun by asgi_begin, or ended already */
        Py_RETURN_NONE;
    route = mapping_get(args[0], s_route); /* scope.get("route") */
    if (route != NULL && route != Py_None) {
        PyObject *path;
        if (get_optional_attr(route, s_path, &path) < 0)
            path = NULL;
        else if (path == NULL)
            path = Py_NewRef(Py_None);
        Py_SETREF(route, path);
    }
    if (route == NULL) {
        report_current(s_where_route);
        if (PyErr_Occurred())
            goto fail;
        route = Py_NewRef(Py_None);
    }
    res = finish_at(self, record, t1, route, args[1]);
    Py_DECREF(route);
    Py_DECREF(record);
    return res;
fail:
    Py_XDECREF(route);
    Py_XDECREF(record);
    return NULL;
}

/* ------------------------------------------------------------------------ the send watcher */

typedef struct {
    PyObject_HEAD
    RequestObject *req;
    PyObject *send;
    vectorcallfunc vectorcall;
} SendObject;

static PyTypeObject Send_Type;

enum { MSG_BODY, MSG_START, MSG_PATHSEND, MSG_OTHER, MSG_ERROR };

static int
message_kind(PyObject *kind)
{
    /* which of the three messages we note ``kind`` (message["type"]) names, compared in
     * watched_send's order (the commonest first); MSG_ERROR with an exception */
    PyObject *names[] = {s_resp_body, s_resp_start, s_pathsend};
    int i, r;
    for (i = MSG_BODY; i < MSG_OTHER; i++) {
        r = str_eq(kind, names[i]);
        if (r != 0)
            return r < 0 ? MSG_ERROR : i;
    }
    return MSG_OTHER;
}

static int
watch(RequestObject *req, PyObject *message, long long t)
{
    /* asgi.py's watched_send, before the server's send: 0, or -1 with an exception */
    PyObject *kind, *v;
    int r;
    if (req->done) /* a send after the request ended (its event is made): not noted */
        return 0;
    kind = PyDict_CheckExact(message) ? Py_XNewRef(PyDict_GetItemWithError(message, s_type))
                                      : PyObject_GetItem(message, s_type);
    if (kind == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, s_type);
        return -1;
    }
    r = message_kind(kind);
    Py_DECREF(kind);
    switch (r) {
    case MSG_BODY:
        v = mapping_get(message, s_body);
        if (v == NULL)
            return -1;
        r = PyObject_IsTrue(v);
        if (r > 0) {
            Py_ssize_t n;
            if (!req->has_f) {
                req->first_t = t;
                req->has_f = 1;
            }
            n = PyObject_Size(v);
            if (n < 0) {
                Py_DECREF(v);
                return -1;
            }
            if (n > LLONG_MAX - req->nbytes) {
                PyErr_SetString(PyExc_OverflowError, "body bytes beyond 64 bits");
                Py_DECREF(v);
                return -1;
            }
            req->nbytes += n;
            req->chunks += 1;
        }
        Py_DECREF(v);
        if (r < 0)
            return -1;
        /* only the message without more_body ends the body */
        v = mapping_get(message, s_more_body);
        if (v == NULL)
            return -1;
        r = PyObject_IsTrue(v);
        Py_DECREF(v);
        if (r < 0)
            return -1;
        if (!r) {
            req->last_t = t;
            req->has_l = 1;
        }
        return 0;
    case MSG_START:
        v = mapping_get(message, s_status);
        if (v == NULL)
            return -1;
        Py_SETREF(req->status, v);
        if (!req->has_h) {
            req->headers_t = t;
            req->has_h = 1;
        }
        return 0;
    case MSG_PATHSEND: /* a whole file in one message (granian) */
        req->last_t = t;
        req->has_l = 1;
        return 0;
    case MSG_OTHER:
        return 0;
    default:
        return -1;
    }
}

static PyObject *
send_vectorcall(SendObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    /* send(message) or send(message=...), as asgi.py's watched_send(message) takes it; the
     * server's send gets the message as its one positional argument, as there */
    long long t;
    PyObject *message;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs == 1 && nkw == 0) {
        message = args[0];
    }
    else if (nargs == 0 && nkw == 1 &&
             PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "message") == 0) {
        message = args[0];
    }
    else {
        PyErr_SetString(PyExc_TypeError, "send() takes exactly one argument (the message)");
        return NULL;
    }
    if (now_ns(&t) < 0 || watch(self->req, message, t) < 0) {
        /* a malformed message is the server's to reject, not ours */
        report_current(s_where_send);
        if (PyErr_Occurred())
            return NULL;
    }
    return PyObject_Vectorcall(self->send, &message, 1, NULL);
}

static int
send_traverse(SendObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->req);
    Py_VISIT(self->send);
    return 0;
}

static int
send_clear(SendObject *self)
{
    Py_CLEAR(self->req);
    Py_CLEAR(self->send);
    return 0;
}

static void
send_dealloc(SendObject *self)
{
    PyObject_GC_UnTrack(self);
    send_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
req_sender(RequestObject *self, PyObject *send)
{
    /* the ``send`` the application gets: notes each message, returns the server's own
     * awaitable. It holds the request and the server's send; the request does not hold it
     * (a thread that keeps the request, its tag, must not keep the connection alive). */
    SendObject *s = PyObject_GC_New(SendObject, &Send_Type);
    if (s == NULL)
        return NULL;
    s->req = (RequestObject *)Py_NewRef(self);
    s->send = Py_NewRef(send);
    s->vectorcall = (vectorcallfunc)send_vectorcall;
    PyObject_GC_Track(s);
    return (PyObject *)s;
}

static PyTypeObject Send_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyinstrument_ai._speedups.Send",
    .tp_basicsize = sizeof(SendObject),
    .tp_dealloc = (destructor)send_dealloc,
    .tp_vectorcall_offset = offsetof(SendObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_traverse = (traverseproc)send_traverse,
    .tp_clear = (inquiry)send_clear,
};

/* the optional times: None or an int, as the Python Request has them */
#define NS_GETSET(name, has)                                                                   \
    static PyObject *req_get_##name(RequestObject *self, void *c)                              \
    {                                                                                          \
        return opt_ns(self->has, self->name, 0);                                                \
    }                                                                                          \
    static int req_set_##name(RequestObject *self, PyObject *v, void *c)                       \
    {                                                                                          \
        long long x;                                                                           \
        if (v == NULL || v == Py_None) {                                                       \
            self->has = 0;                                                                     \
            return 0;                                                                          \
        }                                                                                      \
        x = PyLong_AsLongLong(v);                                                              \
        if (x == -1 && PyErr_Occurred())                                                       \
            return -1;                                                                         \
        self->name = x;                                                                        \
        self->has = 1;                                                                         \
        return 0;                                                                              \
    }

NS_GETSET(headers_t, has_h)
NS_GETSET(first_t, has_f)
NS_GETSET(last_t, has_l)

static PyObject *
req_get_request_id(RequestObject *self, void *c)
{
    return req_request_id(self);
}

static PyObject *
req_get_fields(RequestObject *self, void *c)
{
    if (self->fields == NULL) {
        PyObject *id = req_id_str(self), *fields = id ? PyDict_New() : NULL;
        if (fields == NULL || PyDict_SetItem(fields, s_request_id, id) < 0) {
            Py_XDECREF(fields);
            return NULL;
        }
        self->fields = fields;
    }
    return Py_NewRef(self->fields);
}

/* the object attributes: any value, never deleted (the C code reads them without NULL checks) */
#define OBJ_GET(name)                                                                          \
    static PyObject *req_get_##name(RequestObject *self, void *c)                              \
    {                                                                                          \
        return Py_NewRef(self->name ? self->name : Py_None);                                   \
    }
#define OBJ_SET(name)                                                                          \
    static int req_set_##name(RequestObject *self, PyObject *v, void *c)                       \
    {                                                                                          \
        if (v == NULL) {                                                                       \
            PyErr_SetString(PyExc_AttributeError, "cannot delete " #name);                     \
            return -1;                                                                         \
        }                                                                                      \
        if (!PyObject_GC_IsTracked((PyObject *)self) && PyObject_GC_IsTracked(v))             \
            PyObject_GC_Track(self); /* see untrack_if_atomic */                                \
        Py_XSETREF(self->name, Py_NewRef(v));                                                  \
        return 0;                                                                              \
    }
#define OBJ_GETSET(name) OBJ_GET(name) OBJ_SET(name)
OBJ_SET(fields)
OBJ_GETSET(key)
OBJ_GETSET(source)
OBJ_GETSET(method)
OBJ_GETSET(server)
OBJ_GETSET(upstream)
OBJ_GETSET(status)
OBJ_GETSET(route)
OBJ_GETSET(handled)
#define OBJ_ENTRY(name) {#name, (getter)req_get_##name, (setter)req_set_##name, NULL, NULL},

static PyGetSetDef req_getset[] = {
    OBJ_ENTRY(fields) OBJ_ENTRY(key) OBJ_ENTRY(source) OBJ_ENTRY(method) OBJ_ENTRY(server)
    OBJ_ENTRY(upstream) OBJ_ENTRY(status) OBJ_ENTRY(route) OBJ_ENTRY(handled)
    {"headers_t", (getter)req_get_headers_t, (setter)req_set_headers_t, NULL, NULL},
    {"first_t", (getter)req_get_first_t, (setter)req_set_first_t, NULL, NULL},
    {"last_t", (getter)req_get_last_t, (setter)req_set_last_t, NULL, NULL},
    {"request_id", (getter)req_get_request_id, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef req_members[] = {
    {"done", T_BOOL, offsetof(RequestObject, done), 0, NULL},
    {"t0", T_LONGLONG, offsetof(RequestObject, t0), 0, NULL},
    {"nbytes", T_LONGLONG, offsetof(RequestObject, nbytes), 0, NULL},
    {"chunks", T_LONGLONG, offsetof(RequestObject, chunks), 0, NULL},
    {NULL},
};

static PyMethodDef req_methods[] = {
    {"chunk", (PyCFunction)(void (*)(void))req_chunk, METH_FASTCALL, NULL},
    {"finish", (PyCFunction)(void (*)(void))req_finish, METH_FASTCALL, NULL},
    {"end", (PyCFunction)(void (*)(void))req_end, METH_FASTCALL, NULL},
    {"sender", (PyCFunction)req_sender, METH_O, NULL},
    {NULL},
};

static PyTypeObject Request_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyinstrument_ai._speedups.Request",
    .tp_doc = "One HTTP request in flight, and its tag (C port of _http.Request).",
    .tp_basicsize = sizeof(RequestObject),
    .tp_dealloc = (destructor)req_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)req_traverse,
    .tp_clear = (inquiry)req_clear,
    .tp_weaklistoffset = offsetof(RequestObject, weakreflist),
    .tp_methods = req_methods,
    .tp_members = req_members,
    .tp_getset = req_getset,
    .tp_new = req_new,
};

/* ------------------------------------------------------------------------ encode_batch */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    PyObject *bytes; /* the bytes object p is the data of (encode_batch: the batch's blob,
                      * written in place, no copy at the end), or NULL: p is PyMem memory */
} Buf;

static int
buf_grow(Buf *b, Py_ssize_t n)
{
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    char *p;
    while (cap < b->len + n)
        cap *= 2;
    if (b->bytes != NULL) {
        if (_PyBytes_Resize(&b->bytes, cap) < 0) { /* (it freed the bytes, set NULL) */
            b->p = NULL; /* the batch is lost: encode_batch stops (its bytes are NULL) */
            b->len = b->cap = 0;
            return -1;
        }
        p = PyBytes_AS_STRING(b->bytes);
    }
    else {
        p = PyMem_Realloc(b->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* inlined: most pieces are a few constant bytes, copied in a move or two */
static inline int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (b->len + n > b->cap && buf_grow(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int
buf_bytes(Buf *b, PyObject *bytes, Py_ssize_t from)
{
    if (!PyBytes_Check(bytes)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes");
        return -1;
    }
    if (PyBytes_GET_SIZE(bytes) < from) {
        PyErr_SetString(PyExc_ValueError, "short bytes");
        return -1;
    }
    return buf_put(b, PyBytes_AS_STRING(bytes) + from, PyBytes_GET_SIZE(bytes) - from);
}

static int
buf_ll(Buf *b, long long x)
{
    /* b"%d" % x (snprintf costs ten times as much) */
    static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930"
                                "31323334353637383940414243444546474849505152535455565758596061"
                                "62636465666768697071727374757677787980818283848586878889909192"
                                "93949596979899";
    char tmp[24], *end = tmp + sizeof tmp, *p = end;
    unsigned long long u = x < 0 ? 0ULL - (unsigned long long)x : (unsigned long long)x;
    while (u >= 100) { /* two digits per division: a nanosecond time has 13 or more */
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        *--p = pairs[d + 1];
        *--p = pairs[d];
    }
    if (u >= 10) {
        *--p = pairs[u * 2 + 1];
        *--p = pairs[u * 2];
    }
    else {
        *--p = (char)('0' + u);
    }
    if (x < 0)
        *--p = '-';
    return buf_put(b, p, end - p);
}

static int
buf_int(Buf *b, PyObject *v)
{
    /* b"%d" % v, for an exact int */
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (!overflow) {
        if (x == -1 && PyErr_Occurred())
            return -1;
        return buf_ll(b, x);
    }
    else {
        PyObject *s = PyObject_Str(v);
        const char *u;
        Py_ssize_t n;
        int r;
        if (s == NULL)
            return -1;
        u = PyUnicode_AsUTF8AndSize(s, &n);
        r = u ? buf_put(b, u, n) : -1;
        Py_DECREF(s);
        return r;
    }
}

static int
buf_dumps(Buf *b, PyObject *v, PyObject *dumps, PyObject *deflt)
{
    /* dumps(v, default=deflt) */
    PyObject *argv[2] = {v, deflt}, *out;
    int r;
    out = PyObject_Vectorcall(dumps, argv, 1, s_default_kw);
    if (out == NULL)
        return -1;
    r = buf_bytes(b, out, 0);
    Py_DECREF(out);
    return r;
}

static int
plain_ascii(PyObject *v)
{
    /* an exact str of printable ASCII without a quote or backslash: orjson writes it as it
     * is, between quotes */
    const unsigned char *p;
    Py_ssize_t i, n;
    if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v))
        return 0;
    p = PyUnicode_1BYTE_DATA(v);
    n = PyUnicode_GET_LENGTH(v);
    for (i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e || p[i] == '"' || p[i] == '\\')
            return 0;
    return 1;
}

static int
buf_value(Buf *b, PyObject *v, PyObject *dumps, PyObject *deflt)
{
    /* v as orjson writes it: the common values here, the rest by dumps itself */
    if (v == Py_None)
        return buf_put(b, "null", 4);
    if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow && !(x == -1 && PyErr_Occurred()))
            return buf_ll(b, x);
        PyErr_Clear();
    }
    else if (plain_ascii(v)) {
        const char *p = (const char *)PyUnicode_1BYTE_DATA(v);
        return buf_put(b, "\"", 1) < 0 || buf_put(b, p, PyUnicode_GET_LENGTH(v)) < 0 ||
                       buf_put(b, "\"", 1) < 0
                   ? -1
                   : 0;
    }
    return buf_dumps(b, v, dumps, deflt);
}

static int
buf_diff(Buf *b, char has, long long v, long long t0)
{
    long long d;
    PyObject *o;
    int r;
    if (!has)
        return buf_put(b, "null", 4);
    if (!__builtin_sub_overflow(v, t0, &d))
        return buf_ll(b, d);
    o = ns_diff(v, t0);
    if (o == NULL)
        return -1;
    r = buf_int(b, o);
    Py_DECREF(o);
    return r;
}

#define PUT_KEY(lit) (buf_put(b, lit, sizeof(lit) - 1) < 0)

static int
buf_request(Buf *b, RequestObject *r, PyObject *dumps, PyObject *deflt)
{
    /* request_fields(r) as dumps writes it after the core keys, without its "{": the bytes
     * of encode_lines' line for the same record */
    long long t0 = r->t0;
    int failed;
    PyObject *rid;
    if (r->fields == NULL && r->rid == NULL && r->id_prefix != NULL &&
        plain_ascii(r->id_prefix)) {
        /* a made-up id, written without making its str: "prefix" + digits */
        failed = PUT_KEY(",\"request_id\":\"") ||
                 buf_put(b, (const char *)PyUnicode_1BYTE_DATA(r->id_prefix),
                         PyUnicode_GET_LENGTH(r->id_prefix)) < 0 ||
                 buf_ll(b, r->id_seq) < 0 || buf_put(b, "\"", 1) < 0;
    }
    else {
        rid = req_request_id(r); /* r.fields["request_id"] */
        if (rid == NULL)
            return -1;
        failed = PUT_KEY(",\"request_id\":") || buf_value(b, rid, dumps, deflt) < 0;
        Py_DECREF(rid);
    }
    if (failed ||
        PUT_KEY(",\"request_id_source\":") || buf_value(b, r->source, dumps, deflt) < 0 ||
        PUT_KEY(",\"server\":") || buf_value(b, r->server, dumps, deflt) < 0 ||
        PUT_KEY(",\"method\":") || buf_value(b, r->method, dumps, deflt) < 0 ||
        PUT_KEY(",\"route\":") || buf_value(b, r->fin_route, dumps, deflt) < 0 ||
        PUT_KEY(",\"status\":") || buf_value(b, r->status, dumps, deflt) < 0 ||
        PUT_KEY(",\"headers_ns\":") ||
        buf_diff(b, r->has_h, r->headers_t, t0) < 0 ||
        PUT_KEY(",\"first_chunk_ns\":") ||
        buf_diff(b, r->fin_has_f, r->first_t, t0) < 0 ||
        PUT_KEY(",\"last_chunk_ns\":") ||
        buf_diff(b, r->has_l, r->last_t, t0) < 0 ||
        PUT_KEY(",\"bytes\":") || buf_ll(b, r->nbytes) < 0 || PUT_KEY(",\"chunks\":") ||
        buf_ll(b, r->chunks) < 0)
        return -1;
    if (!r->has_l && PUT_KEY(",\"incomplete\":true"))
        return -1;
    if (r->upstream != Py_None &&
        (PUT_KEY(",\"upstream_start_wall_ns\":") || buf_value(b, r->upstream, dumps, deflt) < 0))
        return -1;
    if (r->fin_error != NULL &&
        (PUT_KEY(",\"error\":") || buf_value(b, r->fin_error, dumps, deflt) < 0))
        return -1;
    return buf_put(b, "}", 1);
}

static int
fast_fields(PyObject *fields, PyObject *reserved)
{
    /* 1: no fields; 2: a dict of fields none of which is reserved (a tuple of the reserved
     * keys); 0: the plain path; -1: an exception (``not fields`` raised) */
    int truth;
    if (fields == Py_None)
        return 1;
    if (PyDict_CheckExact(fields)) {
        Py_ssize_t i;
        if (PyDict_GET_SIZE(fields) == 0)
            return 1;
        for (i = 0; i < PyTuple_GET_SIZE(reserved); i++) {
            int r = PyDict_Contains(fields, PyTuple_GET_ITEM(reserved, i));
            if (r != 0)
                return r < 0 ? -1 : 0;
        }
        return 2;
    }
    truth = PyObject_IsTrue(fields);
    if (truth < 0)
        return -1;
    return truth ? 0 : 1;
}

static int
encode_one(Buf *b, PyObject *rec, long pid, PyObject *dumps, PyObject *deflt,
           PyObject *reserved, PyObject *heads, PyObject *head_fn, PyObject *plain,
           PyObject *tails)
{
    /* one record's line into b (without its newline): 0, or -1 with an exception */
    PyObject *fast, *name, *t, *dur, *tid, *fields, *head, *tail, *rest;
    int kind, r = -1;

    fast = PySequence_Tuple(rec); /* the items stay ours while callbacks run */
    if (fast == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) == 6 && PyTuple_GET_ITEM(fast, 4) == g_request_records &&
        Py_IS_TYPE(PyTuple_GET_ITEM(fast, 5), &Request_Type) &&
        ((RequestObject *)PyTuple_GET_ITEM(fast, 5))->fin_route != NULL) {
        /* left as records_later leaves them (record_request): the same record with its
         * name, times and thread taken from the request */
        RequestObject *q = (RequestObject *)PyTuple_GET_ITEM(fast, 5);
        PyObject *made = request_record(q, Py_NewRef(g_request_fields), (PyObject *)q);
        Py_SETREF(fast, made);
        if (fast == NULL)
            return -1;
    }
    if (PySequence_Fast_GET_SIZE(fast) == 6) {
        /* left for later by a C Request's finish: written from the request itself */
        PyObject *state = PySequence_Fast_GET_ITEM(fast, 5);
        if (PySequence_Fast_GET_ITEM(fast, 4) != g_request_fields ||
            Py_TYPE(state) != &Request_Type || ((RequestObject *)state)->fin_route == NULL) {
            PyErr_SetString(PyExc_ValueError, "a record left for later that is not a request's");
            Py_DECREF(fast);
            return -1;
        }
    }
    else if (PySequence_Fast_GET_SIZE(fast) != 5) {
        PyErr_SetString(PyExc_ValueError, "a record has 5 items");
        Py_DECREF(fast);
        return -1;
    }
    name = PySequence_Fast_GET_ITEM(fast, 0);
    t = PySequence_Fast_GET_ITEM(fast, 1);
    dur = PySequence_Fast_GET_ITEM(fast, 2);
    tid = PySequence_Fast_GET_ITEM(fast, 3);
    fields = PySequence_Fast_GET_ITEM(fast, 4);
    kind = 0;
    if (PyUnicode_CheckExact(name) && PyLong_CheckExact(t) && PyLong_CheckExact(tid) &&
        (dur == Py_None || PyLong_CheckExact(dur))) {
        kind = PySequence_Fast_GET_SIZE(fast) == 6 ? 3 : fast_fields(fields, reserved);
        if (kind < 0)
            goto out;
    }
    if (kind == 0) { /* anything else takes the plain path */
        PyObject *line = PyObject_CallOneArg(plain, rec);
        if (line == NULL)
            goto out;
        r = buf_bytes(b, line, 0);
        Py_DECREF(line);
        goto out;
    }
    head = PyDict_GetItemWithError(heads, name);
    if (head != NULL) {
        Py_INCREF(head);
    }
    else {
        if (PyErr_Occurred())
            goto out;
        head = PyObject_CallFunctionObjArgs(head_fn, name, dumps, NULL);
        if (head == NULL)
            goto out;
    }
    r = buf_bytes(b, head, 0);
    Py_DECREF(head);
    if (r < 0 || (r = buf_int(b, t)) < 0)
        goto out;
    if (dur != Py_None &&
        ((r = buf_put(b, ",\"dur_ns\":", 10)) < 0 || (r = buf_int(b, dur)) < 0))
        goto out;
    r = -1;
    tail = PyDict_GetItemWithError(tails, tid);
    if (tail != NULL) {
        Py_INCREF(tail);
    }
    else {
        PyObject *tid_s;
        if (PyErr_Occurred())
            goto out;
        tid_s = PyObject_Str(tid);
        if (tid_s == NULL)
            goto out;
        {
            const char *u = PyUnicode_AsUTF8(tid_s);
            tail = u ? PyBytes_FromFormat(",\"pid\":%ld,\"tid\":%s", pid, u) : NULL;
        }
        Py_DECREF(tid_s);
        if (tail == NULL || PyDict_SetItem(tails, tid, tail) < 0) {
            Py_XDECREF(tail);
            goto out;
        }
    }
    r = buf_bytes(b, tail, 0);
    Py_DECREF(tail);
    if (r < 0)
        goto out;
    if (kind == 1) {
        r = buf_put(b, "}", 1);
        goto out;
    }
    if (kind == 3) {
        r = buf_request(b, (RequestObject *)PySequence_Fast_GET_ITEM(fast, 5), dumps, deflt);
        goto out;
    }
    {
        PyObject *argv[2] = {fields, deflt};
        rest = PyObject_Vectorcall(dumps, argv, 1, s_default_kw);
    }
    if (rest == NULL) {
        r = -1;
        goto out;
    }
    r = buf_put(b, ",", 1);
    if (r == 0)
        r = buf_bytes(b, rest, 1);
    Py_DECREF(rest);
out:
    Py_DECREF(fast);
    return r;
}

static Py_ssize_t g_line_guess = 400; /* bytes per line, as the last batch wrote them */

static PyObject *
encode_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    /* encode_batch(records, pid, dumps, default, reserved, heads, head_fn, plain)
     *   -> (b"line\nline\n...", lines, dropped) */
    PyObject *records, *dumps, *deflt, *reserved, *heads, *head_fn, *plain, *seq, *tails;
    PyObject *out = NULL, *blob;
    Py_ssize_t i, lines = 0, dropped = 0;
    long pid;
    Buf b = {NULL, 0, 0, NULL};

    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_batch(records, pid, dumps, default, reserved, heads, head_fn, "
                        "plain)");
        return NULL;
    }
    records = args[0];
    pid = PyLong_AsLong(args[1]);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    dumps = args[2];
    deflt = args[3];
    reserved = args[4];
    heads = args[5];
    head_fn = args[6];
    plain = args[7];
    if (!PyAnySet_Check(reserved) || !PyDict_Check(heads)) {
        PyErr_SetString(PyExc_TypeError, "reserved must be a set and heads a dict");
        return NULL;
    }
    seq = PySequence_Fast(records, "records must be a sequence");
    if (seq == NULL)
        return NULL;
    reserved = PySequence_Tuple(reserved);
    if (reserved == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    tails = PyDict_New();
    if (tails == NULL)
        goto done;
    /* the blob is written in place, sized by the last batch's lines (grown if need be) */
    b.cap = PySequence_Fast_GET_SIZE(seq) * g_line_guess + 64;
    b.bytes = PyBytes_FromStringAndSize(NULL, b.cap);
    if (b.bytes == NULL)
        goto done;
    b.p = PyBytes_AS_STRING(b.bytes);
    for (i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) { /* a list may change meanwhile */
        Py_ssize_t mark = b.len;
        PyObject *rec = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        int failed = encode_one(&b, rec, pid, dumps, deflt, reserved, heads, head_fn, plain,
                                tails) < 0 ||
                     buf_put(&b, "\n", 1) < 0;
        Py_DECREF(rec);
        if (failed) {
            /* one unencodable record must not cost the batch; a BaseException that is not
             * an Exception (KeyboardInterrupt) stops it, as in the Python loop, and so does
             * the loss of the blob itself (no memory to grow it) */
            if (b.bytes == NULL || !PyErr_ExceptionMatches(PyExc_Exception))
                goto done;
            PyErr_Clear();
            b.len = mark;
            dropped++;
            continue;
        }
        lines++;
    }
    if (lines)
        g_line_guess = b.len / lines + 16;
    blob = b.bytes;
    b.bytes = NULL;
    if (_PyBytes_Resize(&blob, b.len) == 0)
        out = Py_BuildValue("(Nnn)", blob, lines, dropped);
done:
    Py_XDECREF(b.bytes);
    Py_XDECREF(tails);
    Py_DECREF(reserved);
    Py_DECREF(seq);
    return out;
}

/* ------------------------------------------------------------------------ the recorder */

/* recorder.py's record_later closure (the reference): ``record_later(name, t_ns, dur_ns, build,
 * state)`` appends ``(name, t_ns, dur_ns, thread id, build, state)`` to the recorder's buffer,
 * after noting in ``used`` that something was left for later. Five positional arguments is
 * how every caller of ours calls it; anything else (keywords, a wrong count) is handed to the
 * reference closure, so its errors are Python's own. */
typedef struct {
    PyObject_HEAD
    PyObject *buf;      /* the recorder's list */
    PyObject *used;     /* a list: empty until something is first left for later */
    PyObject *fallback; /* the Python closure */
    vectorcallfunc vectorcall;
    /* the last caller's thread id as an int: most records of a process come from one thread,
     * and an int made per record is one more object per record waiting for the flush */
    unsigned long ident;
    PyObject *ident_int;
} RecordLaterObject;

static PyObject *
record_later_call(RecordLaterObject *self, PyObject *const *args, size_t nargsf,
                  PyObject *kwnames)
{
    PyObject *tid, *rec;
    int r;
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 5)
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    if (PyList_GET_SIZE(self->used) == 0 && PyList_Append(self->used, Py_True) < 0)
        return NULL;
    {
        unsigned long ident = PyThread_get_thread_ident(); /* _thread.get_ident() */
        if (self->ident_int == NULL || self->ident != ident) {
            tid = PyLong_FromUnsignedLong(ident);
            if (tid == NULL)
                return NULL;
            Py_XSETREF(self->ident_int, tid);
            self->ident = ident;
        }
        tid = Py_NewRef(self->ident_int);
    }
    rec = PyTuple_New(6);
    if (rec == NULL) {
        Py_DECREF(tid);
        return NULL;
    }
    PyTuple_SET_ITEM(rec, 0, Py_NewRef(args[0]));
    PyTuple_SET_ITEM(rec, 1, Py_NewRef(args[1]));
    PyTuple_SET_ITEM(rec, 2, Py_NewRef(args[2]));
    PyTuple_SET_ITEM(rec, 3, tid);
    PyTuple_SET_ITEM(rec, 4, Py_NewRef(args[3]));
    PyTuple_SET_ITEM(rec, 5, Py_NewRef(args[4]));
    /* A C request's record (the ASGI target's, one per HTTP request) is untracked by the
     * cycle collector: its items are strs, ints, this module's request_fields and a finished
     * request that is untracked itself (untrack_if_atomic), none of which can lead back to the
     * tuple, so it is in no cycle. Tracked, the thousands a busy server leaves per flush
     * interval would be traversed and promoted by every collection meanwhile, up to the oldest
     * generation, whose full collections a server that frees what it allocates never runs.
     * Any other record stays tracked: its state may lead back to the buffer. */
    if (args[3] == g_request_fields && !PyObject_GC_IsTracked(args[4]) &&
        !PyObject_GC_IsTracked(args[0]) && !PyObject_GC_IsTracked(args[1]) &&
        !PyObject_GC_IsTracked(args[2]))
        PyObject_GC_UnTrack(rec);
    r = PyList_Append(self->buf, rec);
    Py_DECREF(rec);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int
record_request(PyObject *record_later, RequestObject *req)
{
    /* records_later(request_records, req) on the recorder of ``record_later``: appends
     * (None, None, None, None, request_records, req), untracked like a C request's record
     * (see record_later_call) when the request is */
    RecordLaterObject *self = (RecordLaterObject *)record_later;
    PyObject *rec;
    int r;
    if (PyList_GET_SIZE(self->used) == 0 && PyList_Append(self->used, Py_True) < 0)
        return -1;
    rec = PyTuple_Pack(6, Py_None, Py_None, Py_None, Py_None, g_request_records, (PyObject *)req);
    if (rec == NULL)
        return -1;
    if (!PyObject_GC_IsTracked((PyObject *)req))
        PyObject_GC_UnTrack(rec);
    r = PyList_Append(self->buf, rec);
    Py_DECREF(rec);
    return r;
}

static int
record_later_traverse(RecordLaterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->buf);
    Py_VISIT(self->used);
    Py_VISIT(self->fallback);
    return 0;
}

static int
record_later_clear(RecordLaterObject *self)
{
    Py_CLEAR(self->buf);
    Py_CLEAR(self->used);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->ident_int);
    return 0;
}

static void
record_later_dealloc(RecordLaterObject *self)
{
    PyObject_GC_UnTrack(self);
    record_later_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
record_later_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* RecordLater(buf, used, fallback) */
    PyObject *buf, *used, *fallback;
    RecordLaterObject *self;
    if (!PyArg_ParseTuple(args, "O!O!O:RecordLater", &PyList_Type, &buf, &PyList_Type, &used,
                          &fallback))
        return NULL;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "RecordLater() takes no keyword arguments");
        return NULL;
    }
    self = (RecordLaterObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->buf = Py_NewRef(buf);
    self->used = Py_NewRef(used);
    self->fallback = Py_NewRef(fallback);
    self->ident_int = NULL;
    self->ident = 0;
    self->vectorcall = (vectorcallfunc)record_later_call;
    return (PyObject *)self;
}

static PyTypeObject RecordLater_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyinstrument_ai._speedups.RecordLater",
    .tp_doc = "record_later(name, t_ns, dur_ns, build, state): recorder.py's closure in C.",
    .tp_basicsize = sizeof(RecordLaterObject),
    .tp_dealloc = (destructor)record_later_dealloc,
    .tp_vectorcall_offset = offsetof(RecordLaterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_traverse = (traverseproc)record_later_traverse,
    .tp_clear = (inquiry)record_later_clear,
    .tp_new = record_later_new,
};

static PyObject *
with_built(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    /* with_built(chunk, keep, expand): recorder.py's _with_built (the reference) for a drained
     * list: an exact tuple that is not left for later (not 6 items) or whose build is ``keep``
     * stays as it is; every other entry becomes the list ``expand(entry, keep)`` returns
     * (recorder._expand: the one definition of what a deferred entry becomes). */
    PyObject *chunk, *keep, *expand, *out;
    Py_ssize_t i;
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "with_built(chunk: list, keep, expand)");
        return NULL;
    }
    chunk = args[0];
    keep = args[1];
    expand = args[2];
    out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (i = 0; i < PyList_GET_SIZE(chunk); i++) {
        PyObject *rec = PyList_GET_ITEM(chunk, i), *made;
        int r;
        if (PyTuple_CheckExact(rec) &&
            (PyTuple_GET_SIZE(rec) != 6 || (keep != Py_None && PyTuple_GET_ITEM(rec, 4) == keep))) {
            if (PyList_Append(out, rec) < 0)
                goto fail;
            continue;
        }
        Py_INCREF(rec); /* expand runs Python code: the chunk is ours, but be safe */
        made = PyObject_CallFunctionObjArgs(expand, rec, keep, NULL);
        Py_DECREF(rec);
        if (made == NULL)
            goto fail;
        r = PyList_CheckExact(made) ? PyList_SetSlice(out, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, made)
                                    : -2;
        Py_DECREF(made);
        if (r == -2) {
            PyErr_SetString(PyExc_TypeError, "expand() must return a list");
            goto fail;
        }
        if (r < 0)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* ------------------------------------------------------------------------ ORT sessions */

/* ``SessionInit(wrapped, on, record_later, ns)``: the onnxruntime target's wrapper of
 * ``InferenceSession.__init__`` (the reference: targets/onnxruntime.py's ``_py_init``, with
 * the same event). Right after ORT built a session the caches are cold, and there a Python
 * frame and a few dozen bytecodes cost several µs (issue 14 allows ~12-18 µs for all of our
 * work per creation); this does the usual cases in C: the session's state set, the model
 * (bytes up to ``_DEFER_MAX`` or a str path), options watched since they were made or ORT's
 * defaults seen before (``_watched``, ``_default_options``), and the record. Any other case
 * calls ``_capture`` of ``ns`` (the target module's globals, where the names below are read:
 * the constants once, what patch/unpatch or tests rebind on every call). A method descriptor
 * (``self`` passed first, no bound method made) with a ``__dict__`` for functools'
 * ``__wrapped__`` & co. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *wrapped, *on, *record_later, *ns, *dict;
    PyObject *ids, *capture, *build, *name, *state;
} SessionInitObject;

static PyObject *s_watched, *s_defer_max, *s_default_options, *s_providers_attr;
static PyObject *s_from_model, *s_sess_options, *s_providers_kw, *s_provider_options;
static PyObject *s_where_session, *s_name_attr;

static PyObject *
kwarg(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject *name)
{
    /* the keyword argument ``name`` (borrowed), or NULL */
    Py_ssize_t i, n = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (k == name || PyUnicode_Compare(k, name) == 0)
            return args[nargs + i];
    }
    return NULL;
}

static PyObject *
ns_get(SessionInitObject *w, PyObject *name)
{
    /* a borrowed global of the target module, or NULL with an exception */
    PyObject *v = PyDict_GetItemWithError(w->ns, name);
    if (v == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_RuntimeError, "the onnxruntime target has no %S", name);
    return v;
}

static PyObject *
default_options_key(PyObject *providers, PyObject *asked)
{
    /* _options_fields' key for ORT's default options, (*providers, None, *(asked or ())), or
     * NULL without an exception when ``asked`` is neither None, a list nor a tuple */
    Py_ssize_t i, np = PyList_GET_SIZE(providers), na;
    PyObject *key, *seq = NULL;
    if (asked == NULL || asked == Py_None)
        na = 0;
    else if (PyList_CheckExact(asked) || PyTuple_CheckExact(asked)) {
        seq = asked;
        na = PySequence_Fast_GET_SIZE(asked);
    }
    else
        return NULL;
    key = PyTuple_New(np + 1 + na);
    if (key == NULL)
        return NULL;
    for (i = 0; i < np; i++)
        PyTuple_SET_ITEM(key, i, Py_NewRef(PyList_GET_ITEM(providers, i)));
    PyTuple_SET_ITEM(key, np, Py_NewRef(Py_None));
    for (i = 0; i < na; i++)
        PyTuple_SET_ITEM(key, np + 1 + i, Py_NewRef(PySequence_Fast_GET_ITEM(seq, i)));
    return key;
}

static PyObject *
session_fast_state(SessionInitObject *w, PyObject *self, PyObject *const *args,
                   Py_ssize_t nargs, PyObject *kwnames, PyObject *sid)
{
    /* _capture's result for the usual cases of a session ORT created (new reference), None
     * (new) for the others, NULL with an exception */
    PyObject *model = args[1], *given, *providers = NULL, *from_model = NULL, *options = NULL;
    PyObject *v, *out = NULL;
    Py_ssize_t limit;
    if (PyBytes_CheckExact(model)) {
        if ((v = ns_get(w, s_defer_max)) == NULL)
            return NULL;
        limit = PyLong_AsSsize_t(v);
        if (limit == -1 && PyErr_Occurred())
            return NULL;
        if (PyBytes_GET_SIZE(model) > limit)
            Py_RETURN_NONE;
    }
    else if (!PyUnicode_CheckExact(model)) /* os.fspath(str) is the str itself */
        Py_RETURN_NONE;
    given = nargs > 2 ? args[2] : kwarg(args, nargs, kwnames, s_sess_options);
    if (given == NULL)
        given = Py_None;
    /* object.__getattribute__: ORT's __init__ set both (it succeeded) */
    providers = PyObject_GenericGetAttr(self, s_providers_attr);
    if (providers == NULL)
        goto not_here;
    from_model = PyObject_GenericGetAttr(self, s_from_model);
    if (from_model == NULL)
        goto not_here;
    if (from_model != Py_False || !PyList_CheckExact(providers))
        goto other;
    if (given != Py_None) {
        PyObject *watched, *ref;
        if ((watched = ns_get(w, s_watched)) == NULL)
            goto fail;
        if (watched == Py_None || !PyDict_CheckExact(watched))
            goto other;
        ref = PyWeakref_NewRef(given, NULL); /* the one made when it was watched */
        if (ref == NULL)
            goto not_here; /* not weak-referenceable: the slow path reads the options */
        options = Py_XNewRef(PyDict_GetItemWithError(watched, ref));
        Py_DECREF(ref);
    }
    else {
        PyObject *cache, *key, *asked;
        v = kwarg(args, nargs, kwnames, s_provider_options);
        if (v != NULL && v != Py_None)
            goto other;
        asked = nargs > 3 ? args[3] : kwarg(args, nargs, kwnames, s_providers_kw);
        if ((cache = ns_get(w, s_default_options)) == NULL)
            goto fail;
        key = default_options_key(providers, asked);
        if (key == NULL) {
            if (PyErr_Occurred())
                goto fail;
            goto other;
        }
        options = PyDict_CheckExact(cache) ? Py_XNewRef(PyDict_GetItemWithError(cache, key))
                                           : NULL;
        Py_DECREF(key);
        if (options == NULL && PyErr_Occurred())
            goto not_here; /* unhashable providers (with options): read each time */
    }
    if (options == NULL) {
        if (PyErr_Occurred())
            goto fail;
        goto other;
    }
    out = PyTuple_Pack(5, sid, model, providers, options, Py_None);
    goto done;
not_here:
    if (!PyErr_ExceptionMatches(PyExc_AttributeError) && !PyErr_ExceptionMatches(PyExc_TypeError))
        goto fail;
    PyErr_Clear();
other:
    out = Py_NewRef(Py_None);
    goto done;
fail:
    out = NULL;
done:
    Py_XDECREF(providers);
    Py_XDECREF(from_model);
    Py_XDECREF(options);
    return out;
}

static PyObject *
session_capture(SessionInitObject *w, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames, PyObject *sid, PyObject *err)
{
    /* _capture(self, sid, path_or_bytes, args, kwargs, err): a new reference, or NULL */
    PyObject *state, *rest, *kwargs, *r;
    Py_ssize_t i, nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (err == Py_None) {
        state = session_fast_state(w, self, args, nargs, kwnames, sid);
        if (state != Py_None)
            return state;
        Py_DECREF(state);
    }
    rest = PyTuple_New(nargs - 2);
    if (rest == NULL)
        return NULL;
    for (i = 2; i < nargs; i++)
        PyTuple_SET_ITEM(rest, i - 2, Py_NewRef(args[i]));
    kwargs = PyDict_New();
    if (kwargs == NULL) {
        Py_DECREF(rest);
        return NULL;
    }
    for (i = 0; i < nk; i++)
        if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
            Py_DECREF(rest);
            Py_DECREF(kwargs);
            return NULL;
        }
    r = PyObject_CallFunctionObjArgs(w->capture, self, sid, args[1], rest, kwargs, err, NULL);
    Py_DECREF(rest);
    Py_DECREF(kwargs);
    return r;
}

static void
session_record(SessionInitObject *w, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               PyObject *sid, long long t0, long long t1, PyObject *err)
{
    /* what _make_init's wrapper does once ORT returned or raised; never raises (our failures
     * are reported) */
    PyObject *self = args[0], *st, *state = NULL, *t, *d, *r;
    st = PyList_New(3);
    if (st == NULL) {
        report_in(w->ns, s_where_session);
        return;
    }
    PyList_SET_ITEM(st, 0, Py_NewRef(sid));
    PyList_SET_ITEM(st, 1, PyDict_New());
    PyList_SET_ITEM(st, 2, Py_NewRef(Py_None));
    /* object.__setattr__(self, _STATE, st): inline, past a subclass's __setattr__ */
    if (PyList_GET_ITEM(st, 1) == NULL || PyObject_GenericSetAttr(self, w->state, st) < 0)
        report_in(w->ns, s_where_session); /* no __dict__: runs give it one */
    Py_DECREF(st);
    state = session_capture(w, self, args, nargs, kwnames, sid, err);
    if (state == NULL)
        goto fail;
    t = PyLong_FromLongLong(t0);
    d = PyLong_FromLongLong(t1 - t0);
    if (t == NULL || d == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(d);
        goto fail;
    }
    {
        PyObject *call[5] = {w->name, t, d, w->build, state};
        r = PyObject_Vectorcall(w->record_later, call, 5, NULL);
    }
    Py_DECREF(t);
    Py_DECREF(d);
    Py_DECREF(state);
    if (r == NULL)
        goto fail_reported;
    Py_DECREF(r);
    return;
fail:
    Py_XDECREF(state);
fail_reported:
    report_in(w->ns, s_where_session);
}

static PyObject *
session_init_call(SessionInitObject *w, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *sid, *res, *err, *et, *ev, *etb;
    long long t0, t1;
    int on = PyObject_IsTrue(PyList_GET_ITEM(w->on, 0));
    if (on < 0)
        return NULL;
    if (!on || nargs < 2) /* off, or ORT's own TypeError for missing arguments */
        return PyObject_Vectorcall(w->wrapped, args, nargsf, kwnames);
    sid = PyIter_Next(w->ids);
    if (sid == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "the session ids ran out");
        report_in(w->ns, s_where_session);
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(w->wrapped, args, nargsf, kwnames);
    }
    if (now_ns(&t0) < 0) {
        PyErr_Clear();
        t0 = 0;
    }
    res = PyObject_Vectorcall(w->wrapped, args, nargsf, kwnames);
    if (now_ns(&t1) < 0) {
        PyErr_Clear();
        t1 = t0;
    }
    if (res != NULL) {
        session_record(w, args, nargs, kwnames, sid, t0, t1, Py_None);
        Py_DECREF(sid);
        if (PyErr_Occurred()) { /* not an Exception (KeyboardInterrupt): raised, as in Python */
            Py_DECREF(res);
            return NULL;
        }
        return res;
    }
    /* ORT raised: recorded with the exception's type name, which is then raised as it was */
    PyErr_Fetch(&et, &ev, &etb);
    err = et != NULL ? PyObject_GetAttr(et, s_name_attr) : NULL;
    if (err == NULL) {
        PyErr_Clear();
        err = Py_NewRef(Py_None);
    }
    session_record(w, args, nargs, kwnames, sid, t0, t1, err);
    Py_DECREF(err);
    Py_DECREF(sid);
    if (PyErr_Occurred()) { /* raised in our part: it replaces ORT's, as from a finally */
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return NULL;
    }
    PyErr_Restore(et, ev, etb);
    return NULL;
}

static PyObject *
session_init_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    SessionInitObject *w;
    PyObject *wrapped, *on, *record_later, *ns;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "SessionInit() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!OO!:SessionInit", &wrapped, &PyList_Type, &on, &record_later,
                          &PyDict_Type, &ns))
        return NULL;
    if (PyList_GET_SIZE(on) != 1) {
        PyErr_SetString(PyExc_ValueError, "SessionInit(): on must be a list of one bool");
        return NULL;
    }
    w = (SessionInitObject *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    w->vectorcall = (vectorcallfunc)session_init_call;
    w->wrapped = Py_NewRef(wrapped);
    w->on = Py_NewRef(on);
    w->record_later = Py_NewRef(record_later);
    w->ns = Py_NewRef(ns);
#define NS_CONST(field, text)                                                                  \
    if ((w->field = PyDict_GetItemString(ns, text)) == NULL) {                                 \
        PyErr_SetString(PyExc_KeyError, text);                                                 \
        Py_DECREF(w);                                                                          \
        return NULL;                                                                           \
    }                                                                                          \
    Py_INCREF(w->field);
    NS_CONST(ids, "_ids")
    NS_CONST(capture, "_capture")
    NS_CONST(build, "_build_session")
    NS_CONST(name, "SESSION")
    NS_CONST(state, "_STATE")
#undef NS_CONST
    return (PyObject *)w;
}

static int
session_init_traverse(SessionInitObject *w, visitproc visit, void *arg)
{
    Py_VISIT(w->wrapped);
    Py_VISIT(w->on);
    Py_VISIT(w->record_later);
    Py_VISIT(w->ns);
    Py_VISIT(w->dict);
    Py_VISIT(w->ids);
    Py_VISIT(w->capture);
    Py_VISIT(w->build);
    Py_VISIT(w->name);
    Py_VISIT(w->state);
    return 0;
}

static int
session_init_clear(SessionInitObject *w)
{
    Py_CLEAR(w->wrapped);
    Py_CLEAR(w->on);
    Py_CLEAR(w->record_later);
    Py_CLEAR(w->ns);
    Py_CLEAR(w->dict);
    Py_CLEAR(w->ids);
    Py_CLEAR(w->capture);
    Py_CLEAR(w->build);
    Py_CLEAR(w->name);
    Py_CLEAR(w->state);
    return 0;
}

static void
session_init_dealloc(SessionInitObject *w)
{
    PyObject_GC_UnTrack(w);
    session_init_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *
session_init_get(PyObject *w, PyObject *obj, PyObject *type)
{
    /* a method, as a function is: bound to an instance, itself on the class */
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(w);
    return PyMethod_New(w, obj);
}

static PyGetSetDef session_init_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict},
    {NULL},
};

static PyTypeObject SessionInit_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyinstrument_ai._speedups.SessionInit",
    .tp_basicsize = sizeof(SessionInitObject),
    .tp_dealloc = (destructor)session_init_dealloc,
    .tp_vectorcall_offset = offsetof(SessionInitObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_traverse = (traverseproc)session_init_traverse,
    .tp_clear = (inquiry)session_init_clear,
    .tp_descr_get = session_init_get,
    .tp_dictoffset = offsetof(SessionInitObject, dict),
    .tp_getset = session_init_getset,
    .tp_new = session_init_new,
};

/* ``OptionsWatch``: the onnxruntime target's watch of ``SessionOptions`` (the reference:
 * ``_watch_options`` and ``_watching_property`` in targets/onnxruntime.py). Made per session
 * by programs that make their options per session, so on the same cold path as SessionInit.
 * ``OptionsWatch(init, watched, ns, sweep_at)`` wraps ``SessionOptions.__init__``: the new
 * options get ORT's defaults record (``ns["_option_defaults"]``) under a weak reference, and
 * ``ns["_sweep"](watched, sweep_at)`` runs when the dict reaches ``sweep_at[0]``.
 * ``OptionsWatch(fset, watched, ns, name, fget, exact)`` is a property's setter: after ORT's
 * setter, watched options get a new record with ``name`` set to the value (as given when its
 * class is ``exact``, else read back through ``ns["_option_value"]``). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *original, *watched, *ns, *dict;
    PyObject *sweep_at;                 /* __init__'s */
    PyObject *name, *fget, *exact, *where; /* a setter's (NULL for __init__) */
} WatchObject;

static PyObject *s_option_defaults, *s_sweep, *s_option_value;

static PyObject *
watch_init(WatchObject *w, PyObject *const *args, Py_ssize_t nargs)
{
    /* after ORT's __init__ returned None: never raises an Exception (as the reference's
     * ``except Exception: pass``) */
    PyObject *ref, *defaults, *r;
    Py_ssize_t at;
    if (nargs < 1)
        Py_RETURN_NONE;
    ref = PyWeakref_NewRef(args[0], NULL);
    if (ref == NULL)
        goto failed;
    defaults = PyDict_GetItemWithError(w->ns, s_option_defaults);
    if (defaults == NULL) {
        Py_DECREF(ref);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "_option_defaults");
        goto failed;
    }
    r = PyDict_SetItem(w->watched, ref, defaults) < 0 ? NULL : Py_None;
    Py_DECREF(ref);
    if (r == NULL)
        goto failed;
    at = PyLong_AsSsize_t(PyList_GET_ITEM(w->sweep_at, 0));
    if (at == -1 && PyErr_Occurred())
        goto failed;
    if (PyDict_GET_SIZE(w->watched) >= at) {
        PyObject *sweep = PyDict_GetItemWithError(w->ns, s_sweep);
        if (sweep == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_KeyError, "_sweep");
            goto failed;
        }
        r = PyObject_CallFunctionObjArgs(sweep, w->watched, w->sweep_at, NULL);
        if (r == NULL)
            goto failed;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
failed:
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return NULL;
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *
watch_set(WatchObject *w, PyObject *self, PyObject *value)
{
    /* after ORT's setter: our failures are reported (the reference's except/report) */
    PyObject *ref, *fields, *v = NULL, *rec = NULL;
    int r;
    ref = PyWeakref_NewRef(self, NULL);
    if (ref == NULL)
        goto failed;
    fields = PyDict_GetItemWithError(w->watched, ref);
    if (fields == NULL) {
        Py_DECREF(ref);
        if (PyErr_Occurred())
            goto failed;
        Py_RETURN_NONE; /* options made before patch(): the slow path reads them */
    }
    Py_INCREF(fields);
    if ((PyObject *)Py_TYPE(value) == w->exact)
        v = Py_NewRef(value);
    else {
        PyObject *got = PyObject_CallOneArg(w->fget, self), *conv;
        if (got != NULL) {
            conv = PyDict_GetItemWithError(w->ns, s_option_value);
            if (conv != NULL)
                v = PyObject_CallFunctionObjArgs(conv, w->name, got, NULL);
            else if (!PyErr_Occurred())
                PyErr_SetString(PyExc_KeyError, "_option_value");
            Py_DECREF(got);
        }
    }
    if (v != NULL && PyDict_CheckExact(fields))
        rec = PyDict_Copy(fields); /* a new dict: sessions keep the one they were made with */
    else if (v != NULL)
        rec = PyObject_CallFunctionObjArgs((PyObject *)&PyDict_Type, fields, NULL);
    Py_DECREF(fields);
    r = rec == NULL || PyDict_SetItem(rec, w->name, v) < 0 ||
        PyDict_SetItem(w->watched, ref, rec) < 0;
    Py_DECREF(ref);
    Py_XDECREF(v);
    Py_XDECREF(rec);
    if (!r)
        Py_RETURN_NONE;
failed:
    report_in(w->ns, w->where);
    if (PyErr_Occurred())
        return NULL; /* not an Exception (KeyboardInterrupt): raised as it is */
    Py_RETURN_NONE;
}

static PyObject *
watch_call(WatchObject *w, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *res = PyObject_Vectorcall(w->original, args, nargsf, kwnames);
    if (res == NULL)
        return NULL; /* ORT's exception, as it raised it: no frame of ours in its traceback */
    if (w->name == NULL) {
        PyObject *r = watch_init(w, args, nargs);
        if (r == NULL) {
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(r);
        return res;
    }
    Py_DECREF(res);
    if (nargs != 2 || kwnames != NULL)
        Py_RETURN_NONE; /* not as a property calls it: ORT's setter alone */
    return watch_set(w, args[0], args[1]);
}

static PyObject *
watch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    WatchObject *w;
    PyObject *original, *watched, *ns, *a = NULL, *fget = NULL, *exact = NULL;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "OptionsWatch() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!O!O|OO:OptionsWatch", &original, &PyDict_Type, &watched,
                          &PyDict_Type, &ns, &a, &fget, &exact))
        return NULL;
    if (fget == NULL) {
        if (!PyList_CheckExact(a) || PyList_GET_SIZE(a) != 1) {
            PyErr_SetString(PyExc_TypeError, "OptionsWatch(init, watched, ns, sweep_at): "
                                             "sweep_at must be a list of one int");
            return NULL;
        }
    }
    else if (!PyUnicode_CheckExact(a) || exact == NULL ||
             (exact != Py_None && !PyType_Check(exact))) {
        PyErr_SetString(PyExc_TypeError,
                        "OptionsWatch(fset, watched, ns, name, fget, exact): name a str, "
                        "exact a type or None");
        return NULL;
    }
    w = (WatchObject *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    w->vectorcall = (vectorcallfunc)watch_call;
    w->original = Py_NewRef(original);
    w->watched = Py_NewRef(watched);
    w->ns = Py_NewRef(ns);
    if (fget == NULL)
        w->sweep_at = Py_NewRef(a);
    else {
        w->name = Py_NewRef(a);
        w->fget = Py_NewRef(fget);
        w->exact = Py_NewRef(exact);
        w->where = PyUnicode_FromFormat("onnxruntime.SessionOptions.%U", a);
        if (w->where == NULL) {
            Py_DECREF(w);
            return NULL;
        }
    }
    return (PyObject *)w;
}

static int
watch_traverse(WatchObject *w, visitproc visit, void *arg)
{
    Py_VISIT(w->original);
    Py_VISIT(w->watched);
    Py_VISIT(w->ns);
    Py_VISIT(w->dict);
    Py_VISIT(w->sweep_at);
    Py_VISIT(w->name);
    Py_VISIT(w->fget);
    Py_VISIT(w->exact);
    Py_VISIT(w->where);
    return 0;
}

static int
watch_clear(WatchObject *w)
{
    Py_CLEAR(w->original);
    Py_CLEAR(w->watched);
    Py_CLEAR(w->ns);
    Py_CLEAR(w->dict);
    Py_CLEAR(w->sweep_at);
    Py_CLEAR(w->name);
    Py_CLEAR(w->fget);
    Py_CLEAR(w->exact);
    Py_CLEAR(w->where);
    return 0;
}

static void
watch_dealloc(WatchObject *w)
{
    PyObject_GC_UnTrack(w);
    watch_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyTypeObject OptionsWatch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyinstrument_ai._speedups.OptionsWatch",
    .tp_basicsize = sizeof(WatchObject),
    .tp_dealloc = (destructor)watch_dealloc,
    .tp_vectorcall_offset = offsetof(WatchObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_traverse = (traverseproc)watch_traverse,
    .tp_clear = (inquiry)watch_clear,
    .tp_descr_get = session_init_get,
    .tp_dictoffset = offsetof(WatchObject, dict),
    .tp_getset = session_init_getset,
    .tp_new = watch_new,
};

/* ------------------------------------------------------------------------ module */

static PyObject *
bind(PyObject *module, PyObject *ns)
{
    /* bind(_http's globals): where the uncommon cases' Python functions are looked up */
    if (!PyDict_Check(ns)) {
        PyErr_SetString(PyExc_TypeError, "bind() takes a module's globals dict");
        return NULL;
    }
    Py_XSETREF(g_http, Py_NewRef(ns));
    Py_RETURN_NONE;
}

static PyObject *
use_tag(PyObject *module, PyObject *var)
{
    /* use_tag(var): the ContextVar that holds the current request's tag
     * (request_context._current), for asgi_begin and Request.end */
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "use_tag() takes a ContextVar");
        return NULL;
    }
    Py_XSETREF(g_tag_var, Py_NewRef(var));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)bind, METH_O, NULL},
    {"asgi_request", (PyCFunction)(void (*)(void))asgi_request, METH_FASTCALL, NULL},
    {"asgi_begin", (PyCFunction)(void (*)(void))asgi_begin, METH_FASTCALL, NULL},
    {"use_tag", (PyCFunction)use_tag, METH_O, NULL},
    {"with_built", (PyCFunction)(void (*)(void))with_built, METH_FASTCALL, NULL},
    {"encode_batch", (PyCFunction)(void (*)(void))encode_batch, METH_FASTCALL, NULL},
    {"request_fields", (PyCFunction)request_fields, METH_O, NULL},
    {"request_records", (PyCFunction)request_records, METH_O, NULL},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pyinstrument_ai._speedups",
    "C versions of two per-event paths (see _speedups.c); optional.", -1, module_methods,
};

#define INTERN(var, text)                                                                      \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                      \
        return NULL;

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m;
    INTERN(s_type, "type");
    INTERN(s_body, "body");
    INTERN(s_more_body, "more_body");
    INTERN(s_status, "status");
    INTERN(s_headers, "headers");
    INTERN(s_method, "method");
    INTERN(s_get, "get");
    INTERN(s_resp_body, "http.response.body");
    INTERN(s_resp_start, "http.response.start");
    INTERN(s_pathsend, "http.response.pathsend");
    INTERN(s_head, "HEAD");
    INTERN(s_request_id, "request_id");
    INTERN(s_request_id_source, "request_id_source");
    INTERN(s_server, "server");
    INTERN(s_route, "route");
    INTERN(s_headers_ns, "headers_ns");
    INTERN(s_first_chunk_ns, "first_chunk_ns");
    INTERN(s_last_chunk_ns, "last_chunk_ns");
    INTERN(s_bytes, "bytes");
    INTERN(s_chunks, "chunks");
    INTERN(s_incomplete, "incomplete");
    INTERN(s_upstream, "upstream_start_wall_ns");
    INTERN(s_error, "error");
    INTERN(s_generated, "generated");
    INTERN(s_http_request, "http.request");
    INTERN(s_module, "__module__");
    INTERN(s_qualname, "__qualname__");
    INTERN(s_prefix, "_prefix");
    INTERN(s_seq, "_seq");
    INTERN(s_new_prefix, "_new_prefix");
    INTERN(s_choose_id, "choose_id");
    INTERN(s_parse_start, "parse_request_start");
    INTERN(s_report, "report");
    INTERN(s_where_send, "asgi.send");
    INTERN(s_decode, "decode");
    INTERN(s_latin1, "latin-1");
    INTERN(s_http, "http");
    {
        static const char *names[9] = {"GET",     "POST",  "PUT",     "DELETE", "HEAD",
                                       "OPTIONS", "PATCH", "CONNECT", "TRACE"};
        int i;
        for (i = 0; i < 9; i++)
            INTERN(g_methods[i], names[i]);
    }
    INTERN(s_asgi, "asgi");
    INTERN(s_path, "path");
    INTERN(s_where_request, "asgi.request");
    INTERN(s_where_route, "asgi.route");
    INTERN(s_where_fields, "building the fields of http.request");
    INTERN(s_watched, "_watched");
    INTERN(s_defer_max, "_DEFER_MAX");
    INTERN(s_default_options, "_default_options");
    INTERN(s_providers_attr, "_providers");
    INTERN(s_from_model, "_read_config_from_model");
    INTERN(s_sess_options, "sess_options");
    INTERN(s_providers_kw, "providers");
    INTERN(s_provider_options, "provider_options");
    INTERN(s_where_session, "onnxruntime.session");
    INTERN(s_name_attr, "__name__");
    INTERN(s_option_defaults, "_option_defaults");
    INTERN(s_sweep, "_sweep");
    INTERN(s_option_value, "_option_value");
    g_id_headers = Py_BuildValue("(y y y)", H_ID, H_TP, H_START);
    if (g_id_headers == NULL)
        return NULL;
    Py_SETREF(g_id_headers, PyFrozenSet_New(g_id_headers));
    if (g_id_headers == NULL)
        return NULL;
    {
        /* interned: orjson tells its keyword arguments by identity */
        PyObject *name = PyUnicode_InternFromString("default");
        if (name == NULL || (s_default_kw = PyTuple_Pack(1, name)) == NULL)
            return NULL;
        Py_DECREF(name);
    }
    if (PyType_Ready(&Request_Type) < 0 || PyType_Ready(&Send_Type) < 0 ||
        PyType_Ready(&RecordLater_Type) < 0 || PyType_Ready(&SessionInit_Type) < 0 ||
        PyType_Ready(&OptionsWatch_Type) < 0)
        return NULL;
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&Request_Type);
    if (PyModule_AddObject(m, "Request", (PyObject *)&Request_Type) < 0) {
        Py_DECREF(&Request_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RecordLater_Type);
    if (PyModule_AddObject(m, "RecordLater", (PyObject *)&RecordLater_Type) < 0) {
        Py_DECREF(&RecordLater_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SessionInit_Type);
    if (PyModule_AddObject(m, "SessionInit", (PyObject *)&SessionInit_Type) < 0) {
        Py_DECREF(&SessionInit_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&OptionsWatch_Type);
    if (PyModule_AddObject(m, "OptionsWatch", (PyObject *)&OptionsWatch_Type) < 0) {
        Py_DECREF(&OptionsWatch_Type);
        Py_DECREF(m);
        return NULL;
    }
    g_request_fields = PyObject_GetAttrString(m, "request_fields");
    g_request_records = PyObject_GetAttrString(m, "request_records");
    if (g_request_fields == NULL || g_request_records == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
