/*
 * sites.c - the preload library's pvpatch module: one op group, `lock`, over the project's
 * queued spinlocks (src/pvpatch/_core/locks.c), with the same variants and renderings as the
 * core's own lock group (docs/locks.md):
 *
 *            lock                 unlock
 *   native   pvp_native_lock      inline `movb $0,(%rdi)` (c6 07 00)
 *   pv       pvp_pv_lock          call pvp_kick_unlock
 *   hybrid   pvp_native_lock      call pvp_kick_unlock
 *
 * The slots (what a site calls before the module registers, and what the default rendering
 * calls) hold pv's lock and the *kicking* unlock, never a plain store: a thread inside a called
 * function is beyond any sync (docs/locks.md, H1), and pv's lock is correct in every mode (a
 * stealing spinner while the mode is not PV).  So a lock taken before the constructor
 * registered the module (another library's constructor runs first) is correct in every later
 * mode; and a library that cannot register (control.c) runs pv, the safe default, by setting
 * the mode word to PV over these slots.
 */
#include "preload.h"

static const uint8_t unlock_native_tmpl[] = {0xc6, 0x07, 0x00}; /* movb $0x0,(%rdi) */

enum { V_NATIVE, V_PV, V_HYBRID, V_N };

PVPATCH_DEFINE_SLOTS(lock) = {
    [PVPATCH_OP_ID(lock, lock)] = (void *)pvp_pv_lock,
    [PVPATCH_OP_ID(lock, unlock)] = (void *)pvp_kick_unlock,
};

static const struct pvpatch_impl lock_impls[V_N] = {
    [V_NATIVE] = {.fn = (void *)pvp_native_lock},
    [V_PV] = {.fn = (void *)pvp_pv_lock},
    [V_HYBRID] = {.fn = (void *)pvp_native_lock},
};
static const struct pvpatch_impl unlock_impls[V_N] = {
    [V_NATIVE] = {.fn = (void *)pvp_kick_unlock,
                  .tmpl = unlock_native_tmpl,
                  .tmpl_len = sizeof(unlock_native_tmpl)},
    [V_PV] = {.fn = (void *)pvp_kick_unlock},
    [V_HYBRID] = {.fn = (void *)pvp_kick_unlock},
};
static const struct pvpatch_op lock_ops[] = {
    [PVPATCH_OP_ID(lock, lock)] = {"lock", &PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, lock)],
                                   lock_impls},
    [PVPATCH_OP_ID(lock, unlock)] = {"unlock",
                                     &PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, unlock)],
                                     unlock_impls},
};
static const char *const lock_variants[V_N] = {[V_NATIVE] = "native", [V_PV] = "pv",
                                               [V_HYBRID] = "hybrid"};

static const struct pvpatch_group groups[] = {
    [PVPATCH_GROUP_ID(lock)] = {.name = "lock",
                                .variants = lock_variants,
                                .nvariants = V_N,
                                .native = V_NATIVE,
                                .ops = lock_ops,
                                .nops = PVPATCH_NOPS(lock)},
};

PVPATCH_MODULE("pvpatch-preload", groups);
