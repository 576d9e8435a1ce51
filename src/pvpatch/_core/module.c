/*
 * module.c - pvpatch._core: the method table and module init, nothing else.
 *
 * The C files each own one area and export a NULL-terminated method table; this file merges them.
 */
#include "core.h"
#include "bench_call.h"
#include "bits_sites.h"
#include "lock_sites.h"
#include "selftest_sites.h"

/* The op groups of the core, at their PVPATCH_GROUP_ID. */
static const struct pvpatch_group core_groups[] = {
    [PVPATCH_GROUP_ID(selftest)] = {"selftest", core_selftest_variants, ST_NVARIANTS, ST_NATIVE,
                                    core_selftest_ops, PVPATCH_NOPS(selftest)},
    [PVPATCH_GROUP_ID(lock)] = {"lock", core_lock_variants, LK_NVARIANTS, LK_NATIVE,
                                core_lock_ops, PVPATCH_NOPS(lock)},
    [PVPATCH_GROUP_ID(bench_call)] = {"bench_call", core_bench_call_variants, 1, 0,
                                      core_bench_call_ops, PVPATCH_NOPS(bench_call)},
    [PVPATCH_GROUP_ID(bits)] = {"bits", core_bits_variants, 1, 0, core_bits_ops,
                                PVPATCH_NOPS(bits)},
};

PVPATCH_MODULE("pvpatch._core", core_groups);

#define CORE_ABI 1 /* checked by pvpatch/__init__.py: a stale build says how to fix itself */

static PyMethodDef *const tables[] = {
    core_poke_methods,
    core_selftest_site_methods,
    core_selftest_methods,
    core_cpuid_methods,
    core_lock_methods,
    core_torture_methods,
    core_bench_call_methods,
    core_traptest_methods,
    core_masks_methods,
    core_forktest_methods,
    core_bits_methods,
    core_agent_methods,
    core_rt_methods,
    core_rt_pin_methods,
};

static struct PyModuleDef core_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "pvpatch._core",
    .m_doc = "pvpatch's C core: mechanism, no policy.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__core(void)
{
    /* Merge the tables once; the module keeps pointing at this array. */
    static PyMethodDef merged[128];
    size_t n = 0;
    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++)
        for (PyMethodDef *m = tables[t]; m->ml_name != NULL; m++) {
            if (n + 1 >= sizeof(merged) / sizeof(merged[0])) {
                PyErr_SetString(PyExc_SystemError, "pvpatch._core: method table too small");
                return NULL;
            }
            merged[n++] = *m;
        }
    core_module.m_methods = merged;

    if (core_poke_init() != 0)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", CORE_ABI) < 0 || pvpatch_export(m, &pvpatch_module) < 0 ||
        core_capi_export(m) < 0 || core_agent_export(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* The C-level unregister, until the C API capsule carries it: an extension takes the
     * pointer once, with the GIL (PyCapsule_Import("pvpatch._core._unregister", 0)), and may
     * call it later from anywhere, a destructor included. */
    PyObject *cap = PyCapsule_New((void *)pvpatch_core_unregister, "pvpatch._core._unregister",
                                  NULL);
    if (cap == NULL || PyModule_AddObject(m, "_unregister", cap) < 0) {
        Py_XDECREF(cap);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
