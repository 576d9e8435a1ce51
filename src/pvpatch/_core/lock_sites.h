/* lock_sites.h - the `lock` op group: ids, variants and the site macros C code locks with. */
#ifndef PVPATCH_LOCK_SITES_H
#define PVPATCH_LOCK_SITES_H

#include "locks.h"
#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(lock) = 1 };
enum {
    PVPATCH_OP_ID(lock, lock),   /* (pvp_lock_t *) */
    PVPATCH_OP_ID(lock, unlock), /* (pvp_lock_t *); native renders inline: movb $0,(%rdi) */
    PVPATCH_NOPS(lock)
};
PVPATCH_DECLARE_SLOTS(lock);

enum { LK_NATIVE = 0, LK_PV = 1, LK_HYBRID = 2, LK_NVARIANTS = 3 };

/* Sites: 6 bytes, the shortest a site may be; the 3-byte native unlock template fits. */
#define PVP_LOCK(l) ((void)PVPATCH_CALL1(lock, lock, 6, 0, (l)))
#define PVP_UNLOCK(l) ((void)PVPATCH_CALL1(lock, unlock, 6, 0, (l)))

/* The same, out of line (each holds one site). */
void pvp_lock_acquire(pvp_lock_t *l);
void pvp_lock_release(pvp_lock_t *l);

extern const struct pvpatch_op core_lock_ops[];
extern const char *const core_lock_variants[];

#endif
