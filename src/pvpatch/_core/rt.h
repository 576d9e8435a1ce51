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

struct pvrt_error {
    int err;
    char syscall[32];
    char msg[480];
    /* Added to the contract: the call's whole name when it does not fit in syscall[] (the
     * writer names its calls at length, "pwrite (/proc/self/mem)"); static storage, or NULL. */
    const char *syscall_long;
    long long bad_addr; /* added: a refused batch's site address, or -1 */
};

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

#endif
