/*
 * poke_py.c - the Python face of poke.c and writer.c: argument parsing, the GIL, exceptions.
 * No mechanism here: every function calls the Python-free runtime (rt.h, writer.h).
 */
#define _GNU_SOURCE
#include "core.h"
#include "rt.h"
#include "writer.h"

#include <errno.h>
#include <string.h>

PyObject *core_oserror_errno(int err, const char *syscall)
{
    PyObject *args = Py_BuildValue("(iss)", err, strerror(err), syscall);
    if (args != NULL) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

PyObject *core_oserror(const char *syscall) { return core_oserror_errno(errno, syscall); }

/* A struct pvrt_error as a Python exception: OSError(errno, msg, syscall) for a failed call,
 * else `refusal` (ValueError unless said) with the message. */
PyObject *core_rt_error(const struct pvrt_error *e, PyObject *refusal)
{
    if (e->err != 0) {
        PyObject *a = Py_BuildValue("(iss)", e->err, e->msg[0] ? e->msg : strerror(e->err),
                                    e->syscall_long ? e->syscall_long : e->syscall);
        if (a != NULL) {
            PyErr_SetObject(PyExc_OSError, a);
            Py_DECREF(a);
        }
    } else {
        PyErr_SetString(refusal ? refusal : PyExc_ValueError, e->msg);
    }
    return NULL;
}

int core_poke_init(void)
{
    struct pvrt_error e = {0};
    if (pvrt_poke_init(&e) != 0) {
        core_rt_error(&e, PyExc_RuntimeError);
        return -1;
    }
    return 0;
}

/* apply_batch(addrs, lens, old, new, hook=0, hook_step=1) -> dict
 *
 * addrs: native-endian uint64 array (n entries); lens: n bytes; old, new: n * 16 bytes
 * (site i's bytes at [16 i, 16 i + lens[i])).  hook: address of a `long (*)(void)` called right
 * after the writes of step `hook_step` (1..3), before that step's sync (the selftest makes the
 * patcher trap on its own int3 with it; tests fail a sync with it).
 *
 * Refusals raise ValueError(reason, address) and write nothing; OSError(errno, ..., "membarrier")
 * for a sync that failed, after the recovery of docs/protocol.md ("A failed sync"). */
static PyObject *py_apply_batch(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"addrs", "lens", "old", "new", "hook", "hook_step", NULL};
    Py_buffer addrs, lens, old, new;
    unsigned long long hook = 0;
    int hook_step = 1;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*y*|Ki", kwlist, &addrs, &lens, &old, &new,
                                     &hook, &hook_step))
        return NULL;
    size_t n = (size_t)lens.len;
    if ((size_t)addrs.len != n * 8 || (size_t)old.len != n * 16 || (size_t)new.len != n * 16) {
        PyErr_SetString(PyExc_TypeError, "apply_batch: buffer sizes do not agree");
        goto out;
    }
    if (hook_step < 1 || hook_step > 3) {
        PyErr_SetString(PyExc_ValueError, "apply_batch: hook_step is 1, 2 or 3");
        goto out;
    }
    struct pvrt_batch_result r;
    struct pvrt_error e = {0};
    long long bad;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pvrt_apply_batch(addrs.buf, lens.buf, old.buf, new.buf, n, (uintptr_t)hook, hook_step,
                          &r, &e, &bad);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        if (e.err != 0) {
            core_rt_error(&e, NULL);
        } else {
            PyObject *v = Py_BuildValue("(sL)", e.msg, bad);
            if (v != NULL) {
                PyErr_SetObject(PyExc_ValueError, v);
                Py_DECREF(v);
            }
        }
        goto out;
    }
    result = Py_BuildValue("{s:n,s:i,s:d,s:k,s:k,s:k,s:k,s:n,s:n,s:i,s:n}", "sites",
                           (Py_ssize_t)r.sites, "syncs", r.syncs, "ns", r.ns, "traps", r.traps,
                           "traps_helped", r.traps_helped, "traps_on_patcher",
                           r.traps_on_patcher, "stale_traps", r.stale_traps, "flips",
                           (Py_ssize_t)r.flips, "trapping", (Py_ssize_t)r.trapping,
                           "late_sync_errno", r.late_sync_errno, "dropped_retired",
                           (Py_ssize_t)r.dropped_retired);
out:
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&old);
    PyBuffer_Release(&new);
    return result;
}

/* Install the handler, chaining to whatever is there, unless it is ours already. */
static PyObject *py_install_trap_handler(PyObject *self, PyObject *unused)
{
    struct pvrt_error e = {0};
    int r = pvrt_install_trap_handler(&e);
    if (r < 0)
        return core_rt_error(&e, PyExc_RuntimeError);
    return PyBool_FromLong(r);
}

/* text_segment(addr) -> (start, end, path) of the executable PT_LOAD holding addr (page
 * aligned), or None. */
static PyObject *py_text_segment(PyObject *self, PyObject *arg)
{
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLongLong(arg), s, e;
    char path[4096];
    if (PyErr_Occurred())
        return NULL;
    if (!pvrt_text_segment(addr, &s, &e, path, sizeof(path)))
        Py_RETURN_NONE;
    return Py_BuildValue("(KKs)", (unsigned long long)s, (unsigned long long)e, path);
}

/* register_text(start, length, name): [start, start+length) becomes a code range pvpatch may
 * write (writer.c).  proc-mem path: nothing moves.  Alias path: the text moves into a memfd,
 * mapped shared r-x over the same address.  Idempotent for a range that is already one. */
static PyObject *py_register_text(PyObject *self, PyObject *args)
{
    unsigned long long start, length;
    const char *name;
    if (!PyArg_ParseTuple(args, "KKs", &start, &length, &name))
        return NULL;
    if (pvp_code_range_add_text((uintptr_t)start, (size_t)length, name) < 0)
        return core_oserror(pvp_writer_syscall);
    Py_RETURN_NONE;
}

/* map_code(length, name, near=0) -> exec: fresh zeroed code memory, r-x (within 1 GiB below
 * `near` when given, so that rel32 calls reach code there).  Write it with write_code. */
static PyObject *py_map_code(PyObject *self, PyObject *args)
{
    unsigned long long length, near = 0;
    const char *name;
    uintptr_t x;
    if (!PyArg_ParseTuple(args, "Ks|K", &length, &name, &near))
        return NULL;
    if (pvp_code_range_map((size_t)length, name, (uintptr_t)near, &x) < 0)
        return core_oserror(pvp_writer_syscall);
    return PyLong_FromUnsignedLongLong(x);
}

/* write_code(addr, data): write bytes into a code range with the writer, outside the batch
 * protocol: for code no thread runs yet (generated functions), op slots that live in code
 * pages, and tests.  Serialised with batches. */
static PyObject *py_write_code(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Ky*", &addr, &data))
        return NULL;
    struct pvrt_error e = {0};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = pvrt_write_code((uintptr_t)addr, data.buf, (size_t)data.len, &e);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (rc != 0)
        return core_rt_error(&e, PyExc_ValueError);
    Py_RETURN_NONE;
}

/* writer_status() -> dict: which path writes code, and why; atomic_store: whether an aligned
 * 8-byte write is one store (atomic call flips are used only then). */
static PyObject *py_writer_status(PyObject *self, PyObject *unused)
{
    int forced, probe_errno;
    const char *probe_syscall;
    size_t max_gap, n;
    unsigned long syscalls, bytes, alias_maps;
    pvp_writer_status(&forced, &probe_errno, &probe_syscall, &max_gap, &syscalls, &bytes,
                      &alias_maps, &n);
    return Py_BuildValue("{s:s,s:O,s:O,s:i,s:s,s:n,s:k,s:k,s:k,s:n}", "path",
                         pvp_writer_path(), "forced", forced ? Py_True : Py_False,
                         "atomic_store", pvp_writer_atomic_store_ok() ? Py_True : Py_False,
                         "probe_errno", probe_errno,
                         "probe_syscall", probe_syscall, "max_gap", (Py_ssize_t)max_gap,
                         "write_syscalls", syscalls, "bytes_written", bytes, "alias_maps",
                         alias_maps, "code_ranges", (Py_ssize_t)n);
}

/* add_known_sites(addrs, owner=0, text_start=0, text_len=0) -> index: addrs is a uint64 array
 * of site starts (any order); the trap handler recognises them from now on. */
static PyObject *py_add_known_sites(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    unsigned long long owner = 0, text_start = 0, text_len = 0;
    if (!PyArg_ParseTuple(args, "y*|KKK", &buf, &owner, &text_start, &text_len))
        return NULL;
    struct pvrt_error e = {0};
    long t = pvrt_add_known_sites(buf.buf, (size_t)buf.len / sizeof(uint64_t), (uintptr_t)owner,
                                  (uintptr_t)text_start, (size_t)text_len, &e);
    PyBuffer_Release(&buf);
    if (t < 0) {
        if (e.err == ENOMEM)
            return PyErr_NoMemory();
        return core_rt_error(&e, PyExc_OverflowError);
    }
    return PyLong_FromLong(t);
}

/* retire_owner(owner) -> number of tables retired (Python's unregister, after its batch). */
static PyObject *py_retire_owner(PyObject *self, PyObject *arg)
{
    unsigned long long owner = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = pvpatch_core_retire_owner((uintptr_t)owner);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(r);
}

/* retired() -> (generation, [owner, ...]): the owners whose tables are all retired. */
static PyObject *py_retired(PyObject *self, PyObject *unused)
{
    static uintptr_t owners[1024]; /* at most one per site table (GIL held) */
    unsigned long gen;
    size_t n = pvrt_retired_owners(owners, sizeof(owners) / sizeof(owners[0]), &gen);
    PyObject *l = PyList_New(0);
    if (l == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *o = PyLong_FromUnsignedLongLong(owners[i]);
        if (o == NULL || PyList_Append(l, o) != 0) {
            Py_XDECREF(o);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(o);
    }
    return Py_BuildValue("(kN)", gen, l);
}

static PyObject *py_retire_gen(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(pvrt_retire_gen());
}

static PyObject *py_sync(PyObject *self, PyObject *unused)
{
    struct pvrt_error e = {0};
    if (pvrt_sync(&e) != 0)
        return core_rt_error(&e, NULL);
    Py_RETURN_NONE;
}

static PyObject *py_membarrier_status(PyObject *self, PyObject *unused)
{
    int ok, err;
    pvrt_membarrier_status(&ok, &err);
    return Py_BuildValue("(Oi)", ok ? Py_True : Py_False, err);
}

static PyObject *py_trap_counters(PyObject *self, PyObject *unused)
{
    struct pvrt_trap_counters c;
    pvrt_trap_counters(&c);
    return Py_BuildValue("{s:k,s:k,s:k,s:k,s:k,s:k,s:k,s:k,s:k,s:k,s:k}", "traps", c.traps,
                         "traps_helped", c.traps_helped, "traps_on_patcher", c.traps_on_patcher,
                         "stale_traps", c.stale_traps, "slot_traps", c.slot_traps, "batches",
                         c.batches, "sites_patched", c.sites_patched, "atomic_flips",
                         c.atomic_flips, "sync_failures", c.sync_failures, "masks_stripped",
                         c.masks_stripped, "slots", c.slots);
}

/* sites_match(addrs, lens, flat, owner=0) -> index of the first site whose bytes are not its
 * part of flat, -1 when every site matches, -2 when owner was unregistered (rt.h). */
static PyObject *py_sites_match(PyObject *self, PyObject *args)
{
    Py_buffer addrs, lens, flat;
    unsigned long long owner = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*|K", &addrs, &lens, &flat, &owner))
        return NULL;
    size_t n = (size_t)lens.len;
    long bad = -1;
    if ((size_t)addrs.len != n * 8 || (size_t)flat.len != n * 16)
        PyErr_SetString(PyExc_TypeError, "sites_match: buffer sizes do not agree");
    else
        bad = pvrt_sites_match(addrs.buf, lens.buf, flat.buf, n, (uintptr_t)owner);
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&flat);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(bad);
}

/* read(addr, n) -> bytes */
static PyObject *py_read(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Kn", &addr, &n))
        return NULL;
    return PyBytes_FromStringAndSize((const char *)(uintptr_t)addr, n);
}

PyMethodDef core_poke_methods[] = {
    {"apply_batch", (PyCFunction)(void (*)(void))py_apply_batch, METH_VARARGS | METH_KEYWORDS,
     "Apply one batch of site writes with the int3 protocol."},
    {"install_trap_handler", py_install_trap_handler, METH_NOARGS,
     "Install the SIGTRAP handler (chaining to the previous one) unless it is already there."},
    {"text_segment", py_text_segment, METH_O, "Executable segment holding an address."},
    {"register_text", py_register_text, METH_VARARGS, "Make text a code range pvpatch writes."},
    {"map_code", py_map_code, METH_VARARGS, "Fresh r-x code memory; returns its address."},
    {"write_code", py_write_code, METH_VARARGS, "Write bytes into a code range (no protocol)."},
    {"writer_status", py_writer_status, METH_NOARGS, "The writer's path and counters."},
    {"add_known_sites", py_add_known_sites, METH_VARARGS, "Register site start addresses."},
    {"retire_owner", py_retire_owner, METH_O, "Forget a module's sites (unregister)."},
    {"retired", py_retired, METH_NOARGS, "(generation, owners whose sites are retired)."},
    {"retire_gen", py_retire_gen, METH_NOARGS, "How many retirements so far."},
    {"sync", py_sync, METH_NOARGS, "membarrier SYNC_CORE."},
    {"membarrier_status", py_membarrier_status, METH_NOARGS, "(registered, errno)."},
    {"trap_counters", py_trap_counters, METH_NOARGS, "Trap handler counters."},
    {"read", py_read, METH_VARARGS, "Read bytes from memory."},
    {"sites_match", py_sites_match, METH_VARARGS, "First site not holding the given bytes."},
    {NULL, NULL, 0, NULL},
};
