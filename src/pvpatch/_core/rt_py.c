/*
 * rt_py.c - the Python face of plan.c and rt.c: the renderings x86.py returns, the trusted
 * templates registry.py reads, the CPU features cpufeatures.py reads, and the runtime's group
 * tables and switch that patcher.py drives.  No rule lives here: argument parsing and
 * exceptions only.
 */
#define _GNU_SOURCE
#include "core.h"
#include "rt.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <string.h>

/* ---- renderings ------------------------------------------------------------------------- */

static PyObject *render_error(const struct pvrt_error *e)
{
    PyErr_SetString(PyExc_ValueError, e->msg);
    return NULL;
}

/* render(site, length, fn, template, is_nop, inline_ok) -> (kind, bytes) */
static PyObject *py_render(PyObject *self, PyObject *args)
{
    unsigned long long site, fn;
    unsigned int length;
    Py_buffer tmpl = {0};
    int is_nop, inline_ok;
    if (!PyArg_ParseTuple(args, "KIKz*pp", &site, &length, &fn, &tmpl, &is_nop, &inline_ok))
        return NULL;
    uint8_t out[PVPATCH_SITE_MAX + 1];
    struct pvrt_error e = {0};
    int kind = pvrt_render((uintptr_t)site, length, (uintptr_t)fn, tmpl.buf,
                           (unsigned)(tmpl.buf ? tmpl.len : 0), is_nop, inline_ok, out, &e);
    PyBuffer_Release(&tmpl); /* a no-op for None */
    if (kind < 0)
        return render_error(&e);
    return Py_BuildValue("(sy#)", pvrt_kind_name(kind), out, (Py_ssize_t)length);
}

/* default_site(site, slot, length), call_slot(site, slot, length), call_rel32(site, target,
 * length) -> bytes */
#define ENCODER(pyname, cfn)                                                                    \
    static PyObject *pyname(PyObject *self, PyObject *args)                                    \
    {                                                                                          \
        unsigned long long site, target;                                                       \
        unsigned int length;                                                                   \
        if (!PyArg_ParseTuple(args, "KKI", &site, &target, &length))                           \
            return NULL;                                                                       \
        uint8_t out[PVPATCH_SITE_MAX + 1];                                                     \
        struct pvrt_error e = {0};                                                             \
        if (cfn((uintptr_t)site, (uintptr_t)target, length, out, &e) != 0)                     \
            return render_error(&e);                                                           \
        return PyBytes_FromStringAndSize((const char *)out, length);                           \
    }
ENCODER(py_default_site, pvrt_default_site)
ENCODER(py_call_slot, pvrt_call_slot)
ENCODER(py_call_rel32, pvrt_call_rel32)

static PyObject *py_nop(PyObject *self, PyObject *arg)
{
    long length = PyLong_AsLong(arg);
    if (length == -1 && PyErr_Occurred())
        return NULL;
    uint8_t out[PVPATCH_SITE_MAX + 1];
    struct pvrt_error e = {0};
    if (length < 0 || length > PVPATCH_SITE_MAX) {
        PyErr_Format(PyExc_ValueError, "no single NOP is %ld bytes long (1..%d)", length,
                     PVPATCH_SITE_MAX);
        return NULL;
    }
    if (pvrt_nop((unsigned)length, out, &e) != 0)
        return render_error(&e);
    return PyBytes_FromStringAndSize((const char *)out, length);
}

/* shipped_templates() -> {bytes: disassembly} */
static PyObject *py_shipped_templates(PyObject *self, PyObject *unused)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (const struct pvrt_shipped_template *t = pvrt_shipped_templates; t->bytes; t++) {
        PyObject *k = PyBytes_FromStringAndSize((const char *)t->bytes, t->len);
        PyObject *v = PyUnicode_FromString(t->asm_);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) != 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

static PyObject *py_trust_template(PyObject *self, PyObject *args)
{
    Py_buffer t;
    if (!PyArg_ParseTuple(args, "y*", &t))
        return NULL;
    struct pvrt_error e = {0};
    int rc = pvrt_trust_template(t.buf, (size_t)t.len, &e);
    PyBuffer_Release(&t);
    if (rc != 0)
        return render_error(&e);
    Py_RETURN_NONE;
}

static PyObject *py_template_trusted(PyObject *self, PyObject *args)
{
    Py_buffer t;
    if (!PyArg_ParseTuple(args, "y*", &t))
        return NULL;
    int r = pvrt_template_trusted(t.buf, (size_t)t.len);
    PyBuffer_Release(&t);
    return PyBool_FromLong(r);
}

static PyObject *py_cpu_features(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(pvrt_cpu_detected());
}

static PyObject *py_set_feature_mask(PyObject *self, PyObject *arg)
{
    unsigned long m = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    pvrt_set_feature_mask((uint32_t)m);
    Py_RETURN_NONE;
}

/* ---- the runtime's groups and tables ---------------------------------------------------- */

/* A list of str as a NULL-terminated array of UTF-8 pointers (borrowed from the list's
 * objects, valid while the list lives).  At most max. */
static int str_list(PyObject *l, const char **out, size_t max, size_t *n)
{
    if (!PyList_Check(l) && !PyTuple_Check(l)) {
        PyErr_SetString(PyExc_TypeError, "a list of str is expected");
        return -1;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(l);
    if ((size_t)k > max) {
        PyErr_Format(PyExc_ValueError, "at most %zu names, not %zd", max, k);
        return -1;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(l, i);
        if ((out[i] = PyUnicode_AsUTF8(s)) == NULL)
            return -1;
    }
    *n = (size_t)k;
    return 0;
}

/* rt_group_declare(name, variants, native, ops) */
static PyObject *py_rt_group_declare(PyObject *self, PyObject *args)
{
    const char *name;
    PyObject *vl, *ol;
    unsigned int native;
    if (!PyArg_ParseTuple(args, "sOIO", &name, &vl, &native, &ol))
        return NULL;
    const char *v[256], *o[256];
    size_t nv, no;
    if (str_list(vl, v, 256, &nv) != 0 || str_list(ol, o, 256, &no) != 0)
        return NULL;
    struct pvrt_error e = {0};
    if (pvrt_group_declare(name, v, (unsigned)nv, native, o, (unsigned)no, &e) != 0)
        return core_rt_error(&e, NULL);
    Py_RETURN_NONE;
}

/* rt_table_set(owner, module, group, op_names, addrs, lens, ops, index, flat) */
static PyObject *py_rt_table_set(PyObject *self, PyObject *args)
{
    unsigned long long owner;
    const char *module, *group;
    PyObject *ol;
    Py_buffer addrs, lens, ops, index, flat;
    if (!PyArg_ParseTuple(args, "KssOy*y*y*y*y*", &owner, &module, &group, &ol, &addrs, &lens,
                          &ops, &index, &flat))
        return NULL;
    const char *o[256];
    size_t no, n = (size_t)lens.len;
    PyObject *ret = NULL;
    if (str_list(ol, o, 256, &no) != 0)
        goto out;
    if ((size_t)addrs.len != 8 * n || (size_t)ops.len != n || (size_t)index.len != 4 * n ||
        flat.len % (PVRT_STRIDE * (n ? n : 1)) != 0) {
        PyErr_SetString(PyExc_TypeError, "rt_table_set: buffer sizes do not agree");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (((const uint8_t *)ops.buf)[i] >= no) {
            PyErr_SetString(PyExc_ValueError, "rt_table_set: op index out of range");
            goto out;
        }
    struct pvrt_table_desc d = {(uintptr_t)owner, module, group, n, addrs.buf, lens.buf, ops.buf,
                                o, index.buf, flat.buf};
    struct pvrt_error e = {0};
    if (pvrt_table_set(&d, &e) != 0) {
        core_rt_error(&e, NULL);
    } else {
        Py_INCREF(Py_None);
        ret = Py_None;
    }
out:
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&ops);
    PyBuffer_Release(&index);
    PyBuffer_Release(&flat);
    return ret;
}

/* rt_slot_add(group, owner, slot, fns, in_code) */
static PyObject *py_rt_slot_add(PyObject *self, PyObject *args)
{
    const char *group;
    unsigned long long owner, slot;
    PyObject *fl;
    int in_code;
    if (!PyArg_ParseTuple(args, "sKKOp", &group, &owner, &slot, &fl, &in_code))
        return NULL;
    uintptr_t fns[256];
    Py_ssize_t k = PySequence_Size(fl);
    if (k < 0 || k > 256) {
        PyErr_SetString(PyExc_ValueError, "rt_slot_add: 1..256 functions");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *x = PySequence_GetItem(fl, i);
        fns[i] = x ? (uintptr_t)PyLong_AsUnsignedLongLong(x) : 0;
        Py_XDECREF(x);
        if (PyErr_Occurred())
            return NULL;
    }
    struct pvrt_error e = {0};
    if (pvrt_slot_add(group, (uintptr_t)owner, (void **)(uintptr_t)slot, fns, in_code, &e) != 0)
        return core_rt_error(&e, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_rt_owner_drop(PyObject *self, PyObject *arg)
{
    unsigned long long owner = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    pvrt_owner_drop((uintptr_t)owner);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* rt_switch(groups, variants, hook=0) -> {sites, batches, syncs, traps, ns, batch_ns,
 * late_sync_errno}.  A refusal raises ValueError(message, address); a failed call OSError. */
static PyObject *py_rt_switch(PyObject *self, PyObject *args)
{
    PyObject *gl, *vl;
    unsigned long long hook = 0;
    if (!PyArg_ParseTuple(args, "OO|K", &gl, &vl, &hook))
        return NULL;
    const char *g[64], *v[64];
    size_t ng, nv;
    if (str_list(gl, g, 64, &ng) != 0 || str_list(vl, v, 64, &nv) != 0)
        return NULL;
    if (ng != nv) {
        PyErr_SetString(PyExc_TypeError, "rt_switch: as many variants as groups");
        return NULL;
    }
    struct pvrt_switch_stats st;
    struct pvrt_error e = {0};
    const char *from[64] = {0}, *now[64] = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pvrt_switch_many(g, v, ng, (uintptr_t)hook, &st, &e, from, now);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        if (e.err != 0)
            return core_rt_error(&e, NULL);
        PyObject *a = Py_BuildValue("(sL)", e.msg, e.bad_addr);
        if (a != NULL) {
            PyErr_SetObject(PyExc_ValueError, a);
            Py_DECREF(a);
        }
        return NULL;
    }
    PyObject *f = PyTuple_New((Py_ssize_t)ng), *w = PyTuple_New((Py_ssize_t)ng);
    for (size_t i = 0; f != NULL && w != NULL && i < ng; i++) {
        PyTuple_SET_ITEM(f, i, PyUnicode_FromString(from[i] ? from[i] : ""));
        PyTuple_SET_ITEM(w, i, PyUnicode_FromString(now[i] ? now[i] : ""));
    }
    if (f == NULL || w == NULL || PyErr_Occurred()) {
        Py_XDECREF(f);
        Py_XDECREF(w);
        return NULL;
    }
    return Py_BuildValue("{s:I,s:I,s:I,s:I,s:I,s:I,s:K,s:d,s:i,s:N,s:N}", "sites", st.sites,
                         "batches", st.batches, "syncs", st.syncs, "traps", st.traps,
                         "traps_helped", st.traps_helped, "traps_on_patcher",
                         st.traps_on_patcher, "ns", (unsigned long long)st.ns, "batch_ns",
                         st.batch_ns, "late_sync_errno", st.late_sync_errno, "from", f, "now", w);
}

static PyObject *py_rt_current(PyObject *self, PyObject *args)
{
    const char *group, *v;
    if (!PyArg_ParseTuple(args, "s", &group))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    v = pvrt_current(group);
    Py_END_ALLOW_THREADS
    if (v == NULL)
        Py_RETURN_NONE;
    return PyUnicode_FromString(v);
}

/* rt_reconcile(group) -> the variant the bytes hold (slots repaired to it) */
static PyObject *py_rt_reconcile(PyObject *self, PyObject *args)
{
    const char *group;
    if (!PyArg_ParseTuple(args, "s", &group))
        return NULL;
    struct pvrt_error e = {0};
    int rc;
    const char *v = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = pvrt_reconcile(group, &e);
    if (rc == 0)
        v = pvrt_current(group);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return core_rt_error(&e, NULL);
    return PyUnicode_FromString(v ? v : "");
}

static PyObject *py_rt_bytes_match(PyObject *self, PyObject *args)
{
    const char *group, *op, *variant;
    if (!PyArg_ParseTuple(args, "sss", &group, &op, &variant))
        return NULL;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = pvrt_group_site_bytes_match(group, op, variant);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(r);
}

PyMethodDef core_rt_methods[] = {
    {"render", py_render, METH_VARARGS, "One variant's rendering of a site: (kind, bytes)."},
    {"default_site", py_default_site, METH_VARARGS, "call *slot(%rip) stretched to a site."},
    {"call_slot", py_call_slot, METH_VARARGS, "call *slot(%rip) stretched."},
    {"call_rel32", py_call_rel32, METH_VARARGS, "call rel32 stretched."},
    {"nop", py_nop, METH_O, "One NOP of a length."},
    {"shipped_templates", py_shipped_templates, METH_NOARGS, "{bytes: asm} shipped templates."},
    {"trust_template", py_trust_template, METH_VARARGS, "Mark a checked template trusted."},
    {"template_trusted", py_template_trusted, METH_VARARGS, "Is a template trusted?"},
    {"cpu_features", py_cpu_features, METH_NOARGS, "IMPL_NEEDS bits of this CPU and OS."},
    {"set_feature_mask", py_set_feature_mask, METH_O, "Features policy masked (IMPL_NEEDS)."},
    {"rt_group_declare", py_rt_group_declare, METH_VARARGS, "Declare a group in the runtime."},
    {"rt_table_set", py_rt_table_set, METH_VARARGS, "Record a module's table of a group."},
    {"rt_slot_add", py_rt_slot_add, METH_VARARGS, "Record an op slot."},
    {"rt_owner_drop", py_rt_owner_drop, METH_O, "Forget a module's tables and slots."},
    {"rt_switch", py_rt_switch, METH_VARARGS, "Groups to variants in one plain batch."},
    {"rt_current", py_rt_current, METH_VARARGS, "A group's variant, from the bytes."},
    {"rt_reconcile", py_rt_reconcile, METH_VARARGS, "Record and slots from the bytes."},
    {"rt_bytes_match", py_rt_bytes_match, METH_VARARGS, "Do group.op's sites hold variant?"},
    {NULL, NULL, 0, NULL},
};

/* ---- pinning loaded objects around a patching call (patcher._modules_pinned) ------------ */

/* pin(paths, identities) -> (handles, gone): a reference (dlopen RTLD_NOLOAD) on every object
 * in `paths` that is loaded, as the bytes of an array of handles; `gone`, the indices of those
 * no longer loaded or loaded anew elsewhere (their (l_addr, l_ld) differ from identities[i]).
 * One C call for every module: no ctypes call per module.  The GIL is released around the
 * loader (a destructor that dlclose runs elsewhere may need it). */
static PyObject *py_pin(PyObject *self, PyObject *args)
{
    PyObject *pl, *il;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &pl, &PyList_Type, &il))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(pl);
    if (PyList_GET_SIZE(il) != n) {
        PyErr_SetString(PyExc_TypeError, "pin: as many identities as paths");
        return NULL;
    }
    PyObject *paths = PyList_New(n), *ret = NULL, *gone = NULL;
    unsigned long long *want = PyMem_Calloc(n ? n : 1, 2 * sizeof(unsigned long long));
    void **h = PyMem_Calloc(n ? n : 1, sizeof(void *));
    if (paths == NULL || want == NULL || h == NULL)
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyUnicode_EncodeFSDefault(PyList_GET_ITEM(pl, i));
        if (b == NULL)
            goto out;
        PyList_SET_ITEM(paths, i, b);
        if (!PyArg_ParseTuple(PyList_GET_ITEM(il, i), "KK", &want[2 * i], &want[2 * i + 1]))
            goto out;
    }
    char *gone_flag = PyMem_Calloc(n ? n : 1, 1);
    if (gone_flag == NULL)
        goto out;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *p = PyBytes_AS_STRING(PyList_GET_ITEM(paths, i));
        h[i] = p[0] ? dlopen(p, RTLD_LAZY | RTLD_NOLOAD) : NULL;
        struct link_map *lm = NULL;
        if (h[i] == NULL || dlinfo(h[i], RTLD_DI_LINKMAP, &lm) != 0 || lm == NULL ||
            (unsigned long long)lm->l_addr != want[2 * i] ||
            (unsigned long long)(uintptr_t)lm->l_ld != want[2 * i + 1])
            gone_flag[i] = 1;
    }
    Py_END_ALLOW_THREADS
    gone = PyList_New(0);
    for (Py_ssize_t i = 0; gone != NULL && i < n; i++)
        if (gone_flag[i]) {
            PyObject *x = PyLong_FromSsize_t(i);
            if (x == NULL || PyList_Append(gone, x) != 0)
                Py_CLEAR(gone);
            Py_XDECREF(x);
        }
    PyMem_Free(gone_flag);
    if (gone == NULL)
        goto out;
    /* Only the handles actually taken are returned (and later dropped). */
    size_t k = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (h[i] != NULL)
            h[k++] = h[i];
    ret = Py_BuildValue("(y#N)", (const char *)h, (Py_ssize_t)(k * sizeof(void *)), gone);
    gone = NULL;
    if (ret == NULL) /* the references would leak: drop them */
        for (size_t i = 0; i < k; i++)
            dlclose(h[i]);
out:
    Py_XDECREF(gone);
    Py_XDECREF(paths);
    PyMem_Free(want);
    PyMem_Free(h);
    return ret;
}

/* unpin(handles): drop the references pin took. */
static PyObject *py_unpin(PyObject *self, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    size_t n = (size_t)b.len / sizeof(void *);
    void *const *h = b.buf;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < n; i++)
        dlclose(h[i]);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

PyMethodDef core_rt_pin_methods[] = {
    {"pin", py_pin, METH_VARARGS, "References on loaded objects: (handles, gone indices)."},
    {"unpin", py_unpin, METH_VARARGS, "Drop the references pin took."},
    {NULL, NULL, 0, NULL},
};
