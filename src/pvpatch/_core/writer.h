/* writer.h - how pvpatch writes code: the code ranges it may write and the write primitive.
 *
 * Two paths, chosen once, at the first use (pvp_writer_init):
 *
 *   proc-mem  pwrite() to /proc/self/mem at the executable address.  The kernel writes through
 *             FOLL_FORCE, so a read-only private mapping is written by copy-on-write of the page
 *             (mm/memory.c, the same path as a debugger's PTRACE_POKETEXT).  Registered text
 *             stays the object's own private file mapping: nothing is remapped.
 *   alias     where the kernel forbids those writes (proc_mem.force_override=never, a security
 *             module, no /proc): registered text is moved into a memfd mapped shared r-x at its
 *             address, and an rw- alias of it is mapped only between pvp_writer_begin() and
 *             pvp_writer_end().
 *
 * Neither path ever makes a mapping writable and executable.
 *
 * Use, for one batch, from one thread holding the batch lock:
 *     pvp_writer_begin(); text_write(...)...; pvp_writer_flush(); <sync> ...; pvp_writer_end();
 * text_write() may keep a write pending so that writes of one pass coalesce into few system
 * calls; pvp_writer_flush() makes every pending write visible.  A sync (core_sync) issued by the
 * batch's thread flushes first by itself, so no sync can overtake the writes it publishes;
 * anything else that relies on the writes being in memory (the selftest hook) flushes.
 * Coalescing may rewrite the bytes between two writes of a pass with the values they hold,
 * which is invisible because the patcher is the only writer of code (the SIGTRAP handler writes
 * none).  Errors: -1 with errno set and pvp_writer_syscall naming the call.
 */
#ifndef PVPATCH_WRITER_H
#define PVPATCH_WRITER_H

#include <stddef.h>
#include <stdint.h>

int pvp_writer_init(void);          /* idempotent; 0, or -1 (nothing usable: see status) */
const char *pvp_writer_path(void);  /* "proc-mem" or "alias" (after init) */
extern const char *pvp_writer_syscall; /* the call behind the last -1 */

int pvp_writer_begin(void);
int text_write(uintptr_t exec_addr, const void *src, size_t len);
int pvp_writer_flush(void);
int pvp_writer_end(void);
void pvp_writer_sync_flush(void); /* core_sync() calls it: see writer.c */

/* Is a text_write() of 8 bytes at an 8-aligned address ONE aligned 8-byte store, single-copy
 * atomic for a thread fetching those bytes (Intel SDM vol. 3, "Atomic Operations")?  Alias path:
 * yes, a plain store through the rw- view.  proc-mem path: no, the kernel copies the bytes of a
 * /proc/self/mem write with memcpy (rep movsb), so another thread may fetch half a field.  The
 * atomic call flip of poke.c is used only where this holds; a single byte is one store on
 * both paths. */
int pvp_writer_atomic_store_ok(void);

/* Code ranges: registered text and generated code.  Only these are ever written. */
int pvp_code_range_add_text(uintptr_t start, size_t len, const char *name);  /* registration */
int pvp_code_range_map(size_t len, const char *name, uintptr_t near, uintptr_t *exec);
int pvp_code_range_find(uintptr_t addr, size_t len); /* index, or -1 */
int pvp_code_range_release(uintptr_t start, size_t len); /* a module of the text is gone */

/* fork: called from poke.c's pthread_atfork handlers (batch lock held around them). */
void pvp_writer_fork_prepare(void);
void pvp_writer_fork_parent(void);
void pvp_writer_fork_child(void);
int pvp_writer_child_ok(void); /* 0: a child could not get its own copy of shared code */

void pvp_writer_status(int *forced, int *probe_errno, const char **probe_syscall,
                       size_t *max_gap, unsigned long *syscalls, unsigned long *bytes,
                       unsigned long *alias_maps, size_t *n_ranges);

#endif
