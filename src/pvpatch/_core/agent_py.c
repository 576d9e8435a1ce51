/*
 * agent_py.c - Python bindings of agent.c: the page validation, the trust rule, the seqcount
 * snapshot, the policy (AgentPolicy) and the agent thread (Agent).  Argument parsing and
 * conversion only; every rule lives in agent.c.
 */
#include "core.h"
#include "agent.h"

#include <errno.h>

/* ---- page, trust, snapshot ------------------------------------------------------------- */

/* hint_validate(buf, file_size, now_ns) -> None, or (field, problem) */
static PyObject *py_hint_validate(PyObject *self, PyObject *args)
{
    Py_buffer b;
    long long file_size;
    unsigned long long now;
    if (!PyArg_ParseTuple(args, "y*LK", &b, &file_size, &now))
        return NULL;
    if (b.len < PVAGENT_SIZE_V1) {
        PyErr_Format(PyExc_ValueError, "hint_validate: %zd bytes, a page has %d", b.len,
                     PVAGENT_SIZE_V1);
        PyBuffer_Release(&b);
        return NULL;
    }
    struct pvagent_page p;
    memcpy(&p, b.buf, sizeof(p));
    PyBuffer_Release(&b);
    char field[32], problem[256];
    if (pvagent_page_validate(&p, file_size, now, field, sizeof(field), problem,
                              sizeof(problem)) == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(ss)", field, problem);
}

/* hint_trust(st_mode, st_uid, trusted_uids) -> "" or why not */
static PyObject *py_hint_trust(PyObject *self, PyObject *args)
{
    unsigned long mode, uid;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "kkO", &mode, &uid, &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "hint_trust: trusted uids must be a sequence");
    if (fast == NULL)
        return NULL;
    uint32_t trusted[8];
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > 8)
        n = 8;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long u = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            return NULL;
        }
        trusted[i] = (uint32_t)u;
    }
    Py_DECREF(fast);
    struct stat st;
    memset(&st, 0, sizeof(st));
    st.st_mode = (mode_t)mode;
    st.st_uid = (uid_t)uid;
    char why[256];
    pvagent_trust_problem(&st, trusted, (size_t)n, why, sizeof(why));
    return PyUnicode_FromString(why);
}

/* hint_snapshot(fd, length) -> (True, bytes, tries) or (False, field, problem); OSError */
static PyObject *py_hint_snapshot(PyObject *self, PyObject *args)
{
    int fd;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "in", &fd, &length))
        return NULL;
    if (length <= 0 || length > PVAGENT_FILE_SIZE) {
        PyErr_Format(PyExc_ValueError, "hint_snapshot: length %zd outside 1..%d", length,
                     PVAGENT_FILE_SIZE);
        return NULL;
    }
    char buf[PVAGENT_FILE_SIZE], field[32], problem[256];
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pvagent_snapshot(fd, buf, (size_t)length, field, sizeof(field), problem,
                          sizeof(problem));
    Py_END_ALLOW_THREADS
    if (rc == -2)
        return core_oserror("pread");
    if (rc < 0)
        return Py_BuildValue("(Oss)", Py_False, field, problem);
    return Py_BuildValue("(Oy#i)", Py_True, buf, length, rc);
}

/* ---- AgentPolicy ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct pvagent_policy p;
    int busy; /* driven by a running Agent: Python only reads it */
} PolicyObject;

static int policy_init(PolicyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"min_dwell_s", "native_settle_s", "judge_hold_s", NULL};
    double dwell, settle, hold = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "dd|d", kwlist, &dwell, &settle, &hold))
        return -1;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "AgentPolicy: driven by a running agent");
        return -1;
    }
    struct pvrt_error e = {0};
    if (pvagent_policy_init(&self->p, dwell, settle, hold, &e) != 0) {
        PyErr_SetString(PyExc_ValueError, e.msg);
        return -1;
    }
    return 0;
}

static PyObject *busy_error(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "AgentPolicy: driven by a running agent (pvpatch.auto()); it decides alone");
    return NULL;
}

/* observe(usable, problem, active_hints, reason, cpus, judge, judge_why, now) -> bool */
static PyObject *policy_observe(PolicyObject *self, PyObject *args)
{
    struct pvagent_input in = {0};
    unsigned long long hints;
    unsigned long reason;
    double now;
    if (!PyArg_ParseTuple(args, "pzKkiizd", &in.usable, &in.problem, &hints, &reason, &in.cpus,
                          &in.judge, &in.judge_why, &now))
        return NULL;
    if (self->busy)
        return busy_error();
    in.active_hints = hints;
    in.reason = (uint32_t)reason;
    return PyBool_FromLong(pvagent_policy_observe(&self->p, &in, now));
}

static PyObject *policy_poll(PolicyObject *self, PyObject *args)
{
    double now;
    if (!PyArg_ParseTuple(args, "d", &now))
        return NULL;
    if (self->busy)
        return busy_error();
    return PyBool_FromLong(pvagent_policy_poll(&self->p, now));
}

static PyObject *policy_deadline(PolicyObject *self, PyObject *unused)
{
    double due;
    if (!pvagent_policy_deadline(&self->p, &due))
        Py_RETURN_NONE;
    return PyFloat_FromDouble(due);
}

static PyObject *mode_name(int m)
{
    if (m == PVAGENT_MODE_NONE)
        Py_RETURN_NONE;
    return PyUnicode_FromString(m == PVAGENT_MODE_FAST ? "fast" : "safe");
}

static PyObject *policy_get(PolicyObject *self, void *what)
{
    const struct pvagent_policy *p = &self->p;
    switch ((intptr_t)what) {
    case 0:
        return mode_name(p->mode);
    case 1:
        if (p->mode == PVAGENT_MODE_NONE)
            Py_RETURN_NONE;
        return PyFloat_FromDouble(p->last_switch);
    case 2:
        return mode_name(p->want);
    case 3:
        return PyUnicode_FromString(p->why);
    case 4:
        return PyLong_FromUnsignedLongLong(p->held_back);
    case 5:
        return PyLong_FromLong(p->judge);
    default:
        return PyUnicode_FromString(p->judge_why);
    }
}

static PyMethodDef policy_methods[] = {
    {"observe", (PyCFunction)policy_observe, METH_VARARGS,
     "observe(usable, problem, active_hints, reason, cpus, judge, judge_why, now) -> bool: "
     "True when the mode changes now"},
    {"poll", (PyCFunction)policy_poll, METH_VARARGS, "poll(now) -> bool"},
    {"deadline", (PyCFunction)policy_deadline, METH_NOARGS, "deadline() -> float or None"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef policy_getset[] = {
    {"mode", (getter)policy_get, NULL, "fast, safe or None", (void *)0},
    {"last_switch", (getter)policy_get, NULL, NULL, (void *)1},
    {"want", (getter)policy_get, NULL, NULL, (void *)2},
    {"why", (getter)policy_get, NULL, NULL, (void *)3},
    {"held_back", (getter)policy_get, NULL, NULL, (void *)4},
    {"judge", (getter)policy_get, NULL, "the judge's verdict in force (-1 none)", (void *)5},
    {"judge_why", (getter)policy_get, NULL, NULL, (void *)6},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PolicyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvpatch._core.AgentPolicy",
    .tp_basicsize = sizeof(PolicyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AgentPolicy(min_dwell_s, native_settle_s, judge_hold_s=1.0): agent.c's policy",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)policy_init,
    .tp_methods = policy_methods,
    .tp_getset = policy_getset,
};

/* ---- Agent -------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    struct pvagent *a;
    PolicyObject *policy;
    PyObject *apply, *observe;
} AgentObject;

static int py_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* The agent's thread keeps one Python thread state for its whole life: created at its first
 * callback (PyGILState_Ensure), parked with the GIL released between callbacks, and deleted
 * when the thread ends (agent_thread_exit).  A state created and deleted per callback cost
 * more than the rest of the hand-over into Python. */
static __thread PyThreadState *agent_ts;

static void gil_take(void)
{
    if (agent_ts == NULL) {
        PyGILState_Ensure();
        agent_ts = PyThreadState_Get();
    } else {
        PyEval_RestoreThread(agent_ts);
    }
}

static void gil_drop(void)
{
    PyEval_SaveThread();
}

static void agent_thread_exit(void *arg)
{
    if (agent_ts == NULL || py_finalizing())
        return; /* no state, or too late to delete it */
    PyEval_RestoreThread(agent_ts);
    agent_ts = NULL;
    PyGILState_Release(PyGILState_UNLOCKED); /* deletes the state, releases the GIL */
}

/* Build the Python arguments that describe an observation: status, problem, page bytes or
 * None, seen_ns, cause_ns or None. */
static PyObject *obs_args(const struct pvagent_obs *o)
{
    if (o->valid)
        return Py_BuildValue("ssy#KK", pvagent_status_name(o->status), o->problem,
                             (const char *)&o->page, (Py_ssize_t)PVAGENT_SIZE_V1,
                             (unsigned long long)o->seen_ns, (unsigned long long)o->cause_ns);
    return Py_BuildValue("ssOKO", pvagent_status_name(o->status), o->problem, Py_None,
                         (unsigned long long)o->seen_ns, Py_None);
}

/* apply(group, variant) on the agent's thread: apply(mode, reason, attempt, *observation) in
 * Python, with the GIL.  It returns None for success or a message; an exception is a refusal
 * carrying its text. */
static int agent_apply(const char *group, const char *variant, void *arg, struct pvrt_error *e)
{
    AgentObject *self = arg;
    if (py_finalizing()) {
        snprintf(e->msg, sizeof(e->msg), "interpreter finalizing");
        return -1;
    }
    const struct pvagent_switch *s = pvagent_in_progress(NULL);
    gil_take();
    int rc = 0;
    PyObject *r = NULL, *head = Py_BuildValue("(ssI)", s->mode == PVAGENT_MODE_FAST ? "fast"
                                                                                  : "safe",
                                              s->reason, s->attempt);
    PyObject *tail = obs_args(pvagent_in_progress_obs(NULL));
    PyObject *all = head && tail ? PySequence_Concat(head, tail) : NULL;
    if (all != NULL)
        r = PyObject_Call(self->apply, all, NULL);
    Py_XDECREF(head);
    Py_XDECREF(tail);
    Py_XDECREF(all);
    if (r == NULL) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyObject *str = v ? PyObject_Str(v) : NULL;
        snprintf(e->msg, sizeof(e->msg), "%s", str ? PyUnicode_AsUTF8(str) : "error");
        PyErr_Clear();
        Py_XDECREF(str);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        rc = -1;
    } else if (r != Py_None) {
        PyObject *str = PyObject_Str(r);
        snprintf(e->msg, sizeof(e->msg), "%s", str ? PyUnicode_AsUTF8(str) : "refused");
        if (str == NULL)
            PyErr_Clear();
        Py_XDECREF(str);
        rc = -1;
    }
    Py_XDECREF(r);
    gil_drop();
    return rc;
}

/* observe(status, problem, page_bytes or None, seen_ns, cause_ns) after every observation */
static void agent_observe(const struct pvagent_obs *o, void *arg)
{
    AgentObject *self = arg;
    if (self->observe == Py_None || py_finalizing())
        return;
    gil_take();
    PyObject *r = NULL, *args = obs_args(o);
    if (args != NULL)
        r = PyObject_Call(self->observe, args, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(self->observe);
    Py_XDECREF(args);
    Py_XDECREF(r);
    gil_drop();
}
static void agent_stop_c(AgentObject *self)
{
    if (self->a == NULL)
        return;
    struct pvagent *a = self->a;
    self->a = NULL;
    /* The thread may be waiting for the GIL inside apply or observe: join without it. */
    Py_BEGIN_ALLOW_THREADS
    pvagent_destroy(a);
    Py_END_ALLOW_THREADS
    if (self->policy)
        self->policy->busy = 0;
}

static int agent_init(AgentObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path",   "policy",  "poll_s",     "apply", "observe",
                             "publisher_uid", "stack_size", "retry_initial_s", "retry_max_s",
                             NULL};
    const char *path = NULL;
    PyObject *policy, *apply, *observe, *uid = Py_None;
    double poll_s, ri = 0, rm = 0;
    Py_ssize_t stack = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "zO!dOO|Ondd", kwlist, &path, &PolicyType,
                                     &policy, &poll_s, &apply, &observe, &uid, &stack, &ri,
                                     &rm))
        return -1;
    if (self->a != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Agent: already running");
        return -1;
    }
    if (((PolicyObject *)policy)->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Agent: the policy is driven by another agent");
        return -1;
    }
    struct pvagent_config c = {0};
    c.hints_path = path;
    c.poll_s = poll_s;
    c.group = "auto"; /* Python applies every group of the mode itself */
    c.fast = "fast";
    c.safe = "safe";
    c.apply = agent_apply;
    c.apply_arg = self;
    c.on_observe = agent_observe;
    c.observe_arg = self;
    c.on_exit = agent_thread_exit;
    c.policy = &((PolicyObject *)policy)->p;
    c.stack_size = (size_t)(stack > 0 ? stack : 0);
    c.retry_initial_s = ri;
    c.retry_max_s = rm;
    if (uid != Py_None) {
        c.publisher_uid = PyLong_AsLongLong(uid);
        if (PyErr_Occurred())
            return -1;
        c.publisher_uid_set = 1;
    }
    Py_INCREF(policy);
    Py_XSETREF(self->policy, (PolicyObject *)policy);
    Py_INCREF(apply);
    Py_XSETREF(self->apply, apply);
    Py_INCREF(observe);
    Py_XSETREF(self->observe, observe);
    struct pvrt_error e = {0};
    self->policy->busy = 1;
    self->a = pvagent_create(&c, &e);
    if (self->a == NULL) {
        self->policy->busy = 0;
        if (e.err) {
            errno = e.err;
            core_oserror(e.syscall);
        } else {
            PyErr_SetString(PyExc_ValueError, e.msg);
        }
        return -1;
    }
    return 0;
}

static PyObject *agent_stop(AgentObject *self, PyObject *unused)
{
    agent_stop_c(self);
    Py_RETURN_NONE;
}

static PyObject *agent_stats(AgentObject *self, PyObject *unused)
{
    if (self->a == NULL)
        Py_RETURN_NONE;
    struct pvagent_stats s;
    pvagent_stats_of(self->a, &s);
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKss}", "observations", s.observations, "wakeups",
                         s.wakeups, "timeouts", s.timeouts, "decisions", s.decisions,
                         "switches", s.switches, "failures", s.failures, "retries", s.retries,
                         "held_back", s.held_back, "records", s.records, "status",
                         pvagent_status_name(s.status));
}

static PyObject *agent_alive(AgentObject *self, void *unused)
{
    return PyBool_FromLong(self->a != NULL);
}

static void agent_dealloc(AgentObject *self)
{
    agent_stop_c(self);
    Py_XDECREF(self->policy);
    Py_XDECREF(self->apply);
    Py_XDECREF(self->observe);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef agent_methods[] = {
    {"stop", (PyCFunction)agent_stop, METH_NOARGS, "stop and join the agent's thread"},
    {"stats", (PyCFunction)agent_stats, METH_NOARGS, "counters, or None once stopped"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef agent_getset[] = {
    {"alive", (getter)agent_alive, NULL, "the thread runs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AgentType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pvpatch._core.Agent",
    .tp_basicsize = sizeof(AgentObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Agent(path, policy, poll_s, apply, observe, publisher_uid=None, stack_size=0, "
              "retry_initial_s=0, retry_max_s=0): agent.c's worker thread",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)agent_init,
    .tp_dealloc = (destructor)agent_dealloc,
    .tp_methods = agent_methods,
    .tp_getset = agent_getset,
};

int core_agent_export(PyObject *m)
{
    if (PyType_Ready(&PolicyType) < 0 || PyType_Ready(&AgentType) < 0)
        return -1;
    Py_INCREF(&PolicyType);
    if (PyModule_AddObject(m, "AgentPolicy", (PyObject *)&PolicyType) < 0) {
        Py_DECREF(&PolicyType);
        return -1;
    }
    Py_INCREF(&AgentType);
    if (PyModule_AddObject(m, "Agent", (PyObject *)&AgentType) < 0) {
        Py_DECREF(&AgentType);
        return -1;
    }
    return 0;
}

PyMethodDef core_agent_methods[] = {
    {"hint_validate", py_hint_validate, METH_VARARGS,
     "hint_validate(page_bytes, file_size, now_ns) -> None or (field, problem)"},
    {"hint_trust", py_hint_trust, METH_VARARGS,
     "hint_trust(st_mode, st_uid, trusted_uids) -> '' or why the page is not trusted"},
    {"hint_snapshot", py_hint_snapshot, METH_VARARGS,
     "hint_snapshot(fd, length) -> (True, bytes, tries) or (False, field, problem)"},
    {NULL, NULL, 0, NULL},
};
