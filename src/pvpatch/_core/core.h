/* core.h - what the Python binding files of pvpatch._core share.  Nothing here is public: the
 * public header is include/pvpatch.h.  Only binding files include it (it pulls in Python.h); the
 * runtime itself is Python-free and declared in rt.h. */
#ifndef PVPATCH_CORE_H
#define PVPATCH_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Raise OSError(errno, strerror(errno), syscall): the syscall's name lands in .filename so that
 * Python can tell which call failed.  Returns NULL for `return core_oserror("mmap");`. */
PyObject *core_oserror(const char *syscall);
PyObject *core_oserror_errno(int err, const char *syscall);

/* Method tables of the C files, merged by module.c (each ends with a NULL entry). */
extern PyMethodDef core_poke_methods[];
extern PyMethodDef core_selftest_site_methods[];
extern PyMethodDef core_selftest_methods[];
extern PyMethodDef core_cpuid_methods[];
extern PyMethodDef core_lock_methods[];    /* lock_sites.c */
extern PyMethodDef core_torture_methods[]; /* torture.c */
extern PyMethodDef core_bench_call_methods[]; /* bench_call.c */
extern PyMethodDef core_traptest_methods[]; /* traptest.c */
extern PyMethodDef core_masks_methods[];    /* masks.c */
extern PyMethodDef core_forktest_methods[]; /* forktest.c */
extern PyMethodDef core_agent_methods[];    /* agent_py.c */
int core_agent_export(PyObject *module);     /* agent_py.c: AgentPolicy, Agent */
extern PyMethodDef core_rt_methods[];       /* rt_py.c */
extern PyMethodDef core_rt_pin_methods[];   /* rt_py.c */

/* poke_py.c: the runtime's init at import, as a Python exception on failure */
int core_poke_init(void);
/* A struct pvrt_error as a Python exception (OSError for a failed call, else `refusal`). */
struct pvrt_error;
PyObject *core_rt_error(const struct pvrt_error *e, PyObject *refusal);

#include "pvpatch.h" /* after Python.h, so that pvpatch_export() is there */
#include "rt.h"       /* the Python-free runtime the bindings call */

/* capi.c: add the C API capsule `_C_API` to the module */
int core_capi_export(PyObject *module);

/* selftest_sites.c */
extern const struct pvpatch_op core_selftest_ops[];
extern const char *const core_selftest_variants[];

#endif
