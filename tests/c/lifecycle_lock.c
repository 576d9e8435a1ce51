/*
 * lifecycle_lock.c - a plain shared library whose sites join pvpatch's own `lock` group, for
 * tests/test_lifecycle.py.  It brings no lock of its own: lk_set() hands it the core's lock
 * functions (read from the core's descriptor) before it registers, and its unlock's native
 * rendering is the same inline byte store as the core's.  Variants, in the group's order:
 * native, pv, hybrid (src/pvpatch/_core/lock_sites.c).
 */
#include <stdint.h>

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(lock) = 0 };
enum { PVPATCH_OP_ID(lock, lock), PVPATCH_OP_ID(lock, unlock), PVPATCH_NOPS(lock) };
PVPATCH_DECLARE_SLOTS(lock);
PVPATCH_DEFINE_SLOTS(lock);

static const uint8_t unlock_native_tmpl[] = {0xc6, 0x07, 0x00}; /* movb $0x0,(%rdi) */
static struct pvpatch_impl lock_impls[3], unlock_impls[3];
static const struct pvpatch_op lk_ops[] = {
    {"lock", &PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, lock)], lock_impls},
    {"unlock", &PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, unlock)], unlock_impls},
};
static const char *const lk_variants[] = {"native", "pv", "hybrid"};
static const struct pvpatch_group lk_groups[] = {
    {"lock", lk_variants, 3, 0, lk_ops, PVPATCH_NOPS(lock)},
};
PVPATCH_MODULE("lc_lock", lk_groups);

__attribute__((visibility("default"))) const void *lk_desc(void) { return &pvpatch_module; }

/* native_lock, pv_lock, kick_unlock: the core's functions.  Before any site runs. */
__attribute__((visibility("default"))) void lk_set(void *native_lock, void *pv_lock,
                                                   void *kick_unlock)
{
    lock_impls[0].fn = native_lock;
    lock_impls[1].fn = pv_lock;
    lock_impls[2].fn = native_lock;
    unlock_impls[0].fn = kick_unlock;
    unlock_impls[0].tmpl = unlock_native_tmpl;
    unlock_impls[0].tmpl_len = sizeof(unlock_native_tmpl);
    unlock_impls[1].fn = kick_unlock;
    unlock_impls[2].fn = kick_unlock;
    PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, lock)] = native_lock;
    PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, unlock)] = kick_unlock;
}

/* iters times: lock; a non-atomic increment of *counter; unlock. */
__attribute__((visibility("default"), noinline)) void lk_hammer(uint32_t *lock, long *counter,
                                                                  long iters)
{
    for (long i = 0; i < iters; i++) {
        PVPATCH_CALL1(lock, lock, 6, 0, lock);
        long v = *(volatile long *)counter;
        *(volatile long *)counter = v + 1;
        PVPATCH_CALL1(lock, unlock, 6, 0, lock);
    }
}
