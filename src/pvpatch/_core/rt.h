/* rt.h - the C runtime of pvpatch, without Python.
 *
 * Everything declared here is plain C (no Python.h): it is compiled into the extension
 * pvpatch._core, whose binding files (*_py.c, module.c, and the other files that include core.h)
 * turn it into Python functions and exceptions, and into programs that never load Python (the
 * preload library, the C tests of tests/c/).  One implementation of each piece: the batch
 * protocol, the SIGTRAP handler, the writer (writer.h), the masks, the planner and the switch.
 *
 * Errors: every function that can fail fills a struct pvrt_error.  err is the errno of the failed
 * call and syscall names it; err == 0 with msg set is a refusal or a validation error (nothing
 * was written).  The Python bindings turn the first into SyscallError (through OSError) and the
 * second into BatchRefused / RegistryError / SiteError.
 */
#ifndef PVPATCH_RT_H
#define PVPATCH_RT_H

#include <signal.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "pvpatch.h"

#include "rt_error.h" /* struct pvrt_error */

/* Block every asynchronous signal in the calling thread (old mask into *old if not NULL), for
 * the runtime's and its consumers' own threads: signals stay with the program's threads.
 * SIGTRAP (the patcher's) and the synchronous SIGSEGV, SIGBUS, SIGILL, SIGFPE stay open. */
void pvrt_block_async_signals(sigset_t *old);

/* Fill e (if not NULL): errno-style failure of `syscall`, or (err == 0) a refusal.  Return -1. */
int pvrt_fail(struct pvrt_error *e, int err, const char *syscall, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- poke.c: sync, site tables, the batch, the SIGTRAP handler --------------------------- */

/* Once per process, at the first use: the writer chooses its path, membarrier SYNC_CORE is
 * registered (cheap while the process has one thread), the fork handlers are installed.  A
 * kernel without membarrier SYNC_CORE is not an error here: batches then refuse, naming it. */
int pvrt_poke_init(struct pvrt_error *e);
void pvrt_membarrier_status(int *ok, int *err);

/* Every running thread of the process executes a core-serialising instruction before this
 * returns, and so does the caller.  Async-signal-safe.  -1 + errno. */
int core_sync(void);
int pvrt_sync(struct pvrt_error *e); /* core_sync, refused when membarrier is not registered */

/* Install the SIGTRAP handler, chaining to whatever is there: 1 installed, 0 it was there, -1. */
int pvrt_install_trap_handler(struct pvrt_error *e);

/* One batch of the int3 protocol (docs/protocol.md).  Site i: addrs[i], lens[i] bytes; its
 * old and new bytes at old[16 i], new[16 i].  hook: a `long (*)(void)` run after the writes of
 * step hook_step (1..3), before its sync (the selftest).  Returns 0 and fills r, or -1: e->err
 * != 0 for a failed call (e->syscall), or err == 0 and *bad_addr naming the refused site (-1
 * when no site is at fault) with nothing written. */
struct pvrt_batch_result {
    size_t sites, flips, trapping, dropped_retired;
    int syncs, late_sync_errno;
    double ns;
    unsigned long traps, traps_helped, traps_on_patcher, stale_traps;
};
#define PVRT_STRIDE 16
int pvrt_apply_batch(const uint64_t *addrs, const uint8_t *lens, const uint8_t *old,
                     const uint8_t *new_, size_t n, uintptr_t hook, int hook_step,
                     struct pvrt_batch_result *r, struct pvrt_error *e, long long *bad_addr);

/* The trap handler knows these site starts from now on: the table's index, or -1 (e). */
long pvrt_add_known_sites(const uint64_t *addrs, size_t n, uintptr_t owner, uintptr_t text_start,
                          size_t text_len, struct pvrt_error *e);
/* Retire every live site table of owner (the C-level unregister): how many were retired. */
int pvpatch_core_retire_owner(uintptr_t owner);
int pvpatch_core_unregister(const void *desc); /* 0, or -1 when it was not registered */
unsigned long pvrt_retire_gen(void);
/* The owners whose tables are all retired, at most max of them; *gen: retire_gen before. */
size_t pvrt_retired_owners(uintptr_t *out, size_t max, unsigned long *gen);

/* Index of the first site whose bytes are not its part of flat (16 bytes a site), -1 when all
 * match, -2 (nothing read) when owner != 0 was unregistered. */
long pvrt_sites_match(const uint64_t *addrs, const uint8_t *lens, const uint8_t *flat, size_t n,
                      uintptr_t owner);

/* Write bytes into a code range outside the batch protocol (code no thread runs yet, op slots
 * in code pages), serialised with batches.  The range must be a code range (checked). */
int pvrt_write_code(uintptr_t addr, const void *data, size_t len, struct pvrt_error *e);

/* The executable PT_LOAD holding addr (page-aligned bounds and the object's path): 1, or 0. */
int pvrt_text_segment(uintptr_t addr, uintptr_t *start, uintptr_t *end, char *path, size_t n);

struct pvrt_trap_counters {
    unsigned long traps, traps_helped, traps_on_patcher, stale_traps, slot_traps, batches,
        sites_patched, atomic_flips, sync_failures, masks_stripped, slots;
};
void pvrt_trap_counters(struct pvrt_trap_counters *c);

/* ---- masks.c ----------------------------------------------------------------------------- */
int core_own_masks(void); /* keep SIGTRAP out of masks set through every object's GOT */
int core_sigaction_real(int sig, const struct sigaction *act, struct sigaction *old);
/* poke.c: sigaction(SIGTRAP) through an owned GOT entry; 0 if handled, -1: make the call */
int core_trap_sigaction(const struct sigaction *act, struct sigaction *old);
void core_masks_counters(unsigned long *got_entries, size_t *objects, unsigned long *stripped);

/* ---- cpuid.c ----------------------------------------------------------------------------- */
void pvrt_cpuid(unsigned leaf, unsigned subleaf, unsigned out[4]);
uint64_t pvrt_xgetbv(unsigned index); /* only when CPUID says OSXSAVE */

/* ---- plan.c: renderings (x86.py's rules; -1 with e->msg worded as its EncodeError) ------- */
enum { PVRT_KIND_DEFAULT = 0, PVRT_KIND_NOP = 1, PVRT_KIND_INLINE = 2, PVRT_KIND_CALL = 3 };
int pvrt_nop(unsigned len, uint8_t *out, struct pvrt_error *e);
int pvrt_call_rel32(uintptr_t site, uintptr_t target, unsigned len, uint8_t *out,
                    struct pvrt_error *e);
int pvrt_call_slot(uintptr_t site, uintptr_t slot, unsigned len, uint8_t *out,
                   struct pvrt_error *e);
int pvrt_default_site(uintptr_t site, uintptr_t slot, unsigned len, uint8_t *out,
                      struct pvrt_error *e);
/* One variant's rendering of a site: its PVRT_KIND_*, or -1.  A NOP implementation renders as
 * one NOP; a template inline when inline_ok and it fits; otherwise a call to fn. */
int pvrt_render(uintptr_t site, unsigned len, uintptr_t fn, const uint8_t *tmpl,
                unsigned tmpl_len, int is_nop, int inline_ok, uint8_t *out,
                struct pvrt_error *e);
const char *pvrt_kind_name(int kind);
struct pvrt_shipped_template {
    const uint8_t *bytes;
    unsigned len;
    const char *asm_; /* its disassembly (AT&T), as capstone prints it */
};
extern const struct pvrt_shipped_template pvrt_shipped_templates[]; /* ends with {NULL} */
/* Trusted: shipped with pvpatch, or marked by the caller after checking it with a decoder. */
int pvrt_template_trusted(const uint8_t *t, size_t n);
int pvrt_trust_template(const uint8_t *t, size_t n, struct pvrt_error *e);
#define PVPATCH_IMPL_NEEDS_MASK 0x7f00u
uint32_t pvrt_cpu_detected(void);  /* PVPATCH_IMPL_NEEDS_* bits of this CPU and OS */
uint32_t pvrt_cpu_effective(void); /* detected and not masked */
void pvrt_set_feature_mask(uint32_t mask);

/* ---- rt.c: the contract's runtime ------------------------------------------------------- */

/* Idempotent: membarrier registration, trap handler, SIGTRAP mask ownership, writer. */
int pvrt_init(struct pvrt_error *e);
/* Check and render every site (registry.plan_sites' rules), record the module's group tables
 * and op slots, and patch default -> each group's current variant in one batch. */
int pvrt_register(const struct pvpatch_module *m, struct pvrt_error *e);

struct pvrt_switch_stats {
    unsigned sites, batches, syncs, traps;
    uint64_t ns;
    /* added to the contract: */
    double batch_ns;     /* the C batch alone */
    unsigned traps_helped, traps_on_patcher;
    int late_sync_errno; /* sync #3 failed after the sites were whole and new (committed) */
};
/* One PLAIN batch (no group transition protocol); the commit is read from the bytes. */
int pvrt_switch(const char *group, const char *variant, struct pvrt_switch_stats *st,
                struct pvrt_error *e);
/* Added: several groups in one batch; hook as pvrt_apply_batch's (step 1).  from and now (may
 * be NULL): each group's variant as the bytes held it before, and after the commit. */
int pvrt_switch_many(const char *const *groups, const char *const *variants, size_t k,
                     uintptr_t hook, struct pvrt_switch_stats *st, struct pvrt_error *e,
                     const char **from, const char **now);
const char *pvrt_current(const char *group); /* from the bytes; NULL: unknown group */
/* 1 when every site of group.op holds variant's rendering; 0 when not; -1 unknown names. */
int pvrt_group_site_bytes_match(const char *group, const char *op, const char *variant);

/* Added: the tables under registration, for a registry that renders its own modules (Python's,
 * for generated code and extension modules alike). */
int pvrt_group_declare(const char *name, const char *const *variants, unsigned nv,
                       unsigned native, const char *const *ops, unsigned nops,
                       struct pvrt_error *e);
struct pvrt_table_desc {
    uintptr_t owner;
    const char *module, *group;
    size_t n;
    const uint64_t *addrs;
    const uint8_t *lens;
    const uint8_t *ops;           /* per site: index into op_names */
    const char *const *op_names;
    const uint32_t *index;        /* per site: index in its section (messages), or NULL */
    const uint8_t *flat;          /* (nvariants + 1) * n * 16: variants in order, then default */
};
int pvrt_table_set(const struct pvrt_table_desc *d, struct pvrt_error *e); /* add or replace */
int pvrt_slot_add(const char *group, uintptr_t owner, void **slot, const uintptr_t *fns,
                  int in_code, struct pvrt_error *e);
void pvrt_owner_drop(uintptr_t owner);
int pvrt_reconcile(const char *group, struct pvrt_error *e); /* record and slots from the bytes */

#endif
