/* core.h - what the C files of pvpatch._core share.  Nothing here is public: the public header is
 * include/pvpatch.h. */
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

/* poke.c */
int core_poke_init(void); /* at import: membarrier registration */
int core_sync(void);      /* membarrier SYNC_CORE + a local serialising instruction */
/* The C-level unregister (docs/extensions.md, "Lifecycle"), exported as the capsule
 * pvpatch._core._unregister: forget the module whose descriptor is desc.  0, or -1 when it was
 * not registered.  Takes only the batch lock: callable from a destructor inside dlclose. */
int pvpatch_core_unregister(const void *desc);

/* masks.c */
int core_own_masks(void); /* keep SIGTRAP out of masks set through every object's GOT */
struct sigaction;
int core_sigaction_real(int sig, const struct sigaction *act, struct sigaction *old);
/* poke.c: sigaction(SIGTRAP) through an owned GOT entry; 0 if handled, -1: make the call */
int core_trap_sigaction(const struct sigaction *act, struct sigaction *old);

#include "pvpatch.h" /* after Python.h, so that pvpatch_export() is there */

/* capi.c: add the C API capsule `_C_API` to the module */
int core_capi_export(PyObject *module);

/* selftest_sites.c */
extern const struct pvpatch_op core_selftest_ops[];
extern const char *const core_selftest_variants[];

#endif
