/*
 * rt.c - the runtime's registry of groups and site tables, registration and the plain switch.
 *
 * Python-free (rt.h).  The Python package records its modules' tables here too (registry.py,
 * through the extension), so that a switch is one implementation whoever asks for it: Python's
 * runtime_patch, the lock group's transition, the preload's agent.
 *
 * The commit rule (docs/protocol.md): a group's variant is what the bytes of its sites hold.  It
 * is read from them before a switch (the batch's old bytes) and after it (the commit), whether
 * the batch was applied, refused or failed half-way; the record kept in struct rt_group is used
 * only for a group with no site left, and is itself re-derived from the bytes whenever they
 * hold a variant whole.  So an error at any point leaves the record right where it matters.
 *
 * Locking: rt_lock serialises registration, table changes and switches (the batch lock of
 * poke.c is taken inside it, by pvrt_apply_batch, never the other way round).  Tables of a
 * module retired by the C-level unregister (pvpatch_core_unregister, e.g. from a destructor
 * inside dlclose) are dropped here, unread, at the next look: pvrt_sites_match answers -2 for
 * them under the batch lock, and pvrt_apply_batch drops their entries itself.
 */
#define _GNU_SOURCE
#include "rt.h"
#include "writer.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_GROUPS 256

struct rt_slot {           /* one op slot of one module: default sites call through it */
    uintptr_t owner;
    void **slot;
    uintptr_t *fns;        /* per variant */
    bool in_code;          /* the slot lives in a code range: written with the writer */
};

struct rt_table {          /* one module's runtime sites of one group */
    uintptr_t owner;
    char *module;
    size_t n;
    uint64_t *addrs;
    uint8_t *lens;
    uint8_t *ops;          /* each site's op, as an index into the group's ops */
    uint32_t *index;       /* each site's index in its section (for messages) */
    uint8_t *flat;         /* nv + 1 blocks of n * 16 bytes: each variant, then the default */
    struct rt_table *next;
};

struct rt_group {
    char *name;
    char **variants;
    unsigned nv, native;
    char **ops;
    unsigned nops;
    int record;            /* the variant when no site says (see the commit rule) */
    struct rt_table *tables;
    struct rt_slot *slots;
    size_t nslots;
};

static struct rt_group groups[MAX_GROUPS];
static unsigned ngroups;
static pthread_mutex_t rt_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t feature_mask; /* CPU features policy masked (pvrt_set_feature_mask) */

/* Scratch of the switch, grown as needed and kept: a switch allocates nothing once warm. */
static struct {
    uint64_t *addrs;
    uint8_t *lens, *old, *new_;
    size_t cap;
} scratch;

/* fork: no child inherits rt_lock held by a thread it does not have.  Registered after poke.c's
 * handlers (pvrt_poke_init first), so that prepare takes rt_lock before the batch lock -- the
 * order every switch takes them in -- and the child releases both. */
static void rt_fork_prepare(void) { pthread_mutex_lock(&rt_lock); }
static void rt_fork_release(void) { pthread_mutex_unlock(&rt_lock); }
static pthread_once_t rt_fork_once = PTHREAD_ONCE_INIT;
static void rt_fork_init(void)
{
    pvrt_poke_init(NULL);
    pthread_atfork(rt_fork_prepare, rt_fork_release, rt_fork_release);
}

static void rt_lock_acquire(void)
{
    pthread_once(&rt_fork_once, rt_fork_init);
    pthread_mutex_lock(&rt_lock);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

void pvrt_block_async_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGTRAP);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGFPE);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : strdup("");
}

/* A group's variants, native variant and record, from a declaration (its old variants freed
 * by the caller). */
static void group_take_declaration(struct rt_group *g, const char *const *variants, unsigned nv,
                                   unsigned native)
{
    g->variants = calloc(nv, sizeof(char *));
    for (unsigned i = 0; i < nv; i++)
        g->variants[i] = xstrdup(variants[i]);
    g->nv = nv;
    g->native = native;
    g->record = (int)native;
}

static struct rt_group *group_find(const char *name)
{
    for (unsigned i = 0; i < ngroups; i++)
        if (strcmp(groups[i].name, name) == 0)
            return &groups[i];
    return NULL;
}

static int variant_index(const struct rt_group *g, const char *v)
{
    for (unsigned i = 0; i < g->nv; i++)
        if (strcmp(g->variants[i], v) == 0)
            return (int)i;
    return -1;
}

static int op_index(const struct rt_group *g, const char *op)
{
    for (unsigned i = 0; i < g->nops; i++)
        if (strcmp(g->ops[i], op) == 0)
            return (int)i;
    return -1;
}

static void table_free(struct rt_table *t)
{
    free(t->module);
    free(t->addrs);
    free(t->lens);
    free(t->ops);
    free(t->index);
    free(t->flat);
    free(t);
}

static inline const uint8_t *flat_of(const struct rt_table *t, unsigned v)
{
    return t->flat + (size_t)v * t->n * PVRT_STRIDE;
}

/* ---- init ------------------------------------------------------------------------------- */

static void own_masks_once(void) { core_own_masks(); }

int pvrt_init(struct pvrt_error *e)
{
    if (pvrt_poke_init(e) != 0)
        return -1;
    /* Every time (one sigaction read): a handler replaced behind pvpatch's back by a raw
     * system call is put back before the next batch. */
    if (pvrt_install_trap_handler(e) < 0)
        return -1;
    /* Once: SIGTRAP kept out of the masks set through every loaded object's GOT (best effort;
     * each trapping batch looks again for objects loaded since, masks.c). */
    static pthread_once_t masks_once = PTHREAD_ONCE_INIT;
    pthread_once(&masks_once, own_masks_once);
    return 0;
}

void pvrt_set_feature_mask(uint32_t mask) { __atomic_store_n(&feature_mask, mask, __ATOMIC_RELAXED); }

static uint32_t detected_features;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static void detect_features(void) { detected_features = pvrt_cpu_detected(); }

uint32_t pvrt_cpu_effective(void)
{
    pthread_once(&detect_once, detect_features);
    return detected_features & ~__atomic_load_n(&feature_mask, __ATOMIC_RELAXED);
}

/* ---- groups and tables ------------------------------------------------------------------ */

/* Declare a group (idempotent when the variants agree) and add ops it did not have. */
int pvrt_group_declare(const char *name, const char *const *variants, unsigned nv,
                       unsigned native, const char *const *ops, unsigned nops,
                       struct pvrt_error *e)
{
    if (nv == 0)
        return pvrt_fail(e, 0, "", "group '%s' has no variants", name);
    if (native >= nv)
        return pvrt_fail(e, 0, "", "group '%s': native variant index %u out of range", name,
                         native);
    rt_lock_acquire();
    struct rt_group *g = group_find(name);
    int rc = 0;
    if (g != NULL) {
        bool same = g->nv == nv;
        for (unsigned i = 0; same && i < nv; i++)
            same = strcmp(g->variants[i], variants[i]) == 0;
        if (!same && (g->tables != NULL || g->nslots != 0)) {
            rc = pvrt_fail(e, 0, "", "group '%s' declares other variants than registered", name);
            goto out;
        }
        if (!same) {
            /* A group left behind by a registration that failed: nothing uses it, so it takes
             * the new declaration. */
            for (unsigned i = 0; i < g->nv; i++)
                free(g->variants[i]);
            free(g->variants);
            group_take_declaration(g, variants, nv, native);
        }
    } else {
        if (ngroups == MAX_GROUPS) {
            rc = pvrt_fail(e, 0, "", "too many groups (%d)", MAX_GROUPS);
            goto out;
        }
        g = &groups[ngroups];
        memset(g, 0, sizeof(*g));
        g->name = xstrdup(name);
        group_take_declaration(g, variants, nv, native);
        ngroups++;
    }
    for (unsigned i = 0; i < nops; i++) {
        if (op_index(g, ops[i]) >= 0)
            continue;
        char **o = realloc(g->ops, (g->nops + 1) * sizeof(char *));
        if (o == NULL) {
            rc = pvrt_fail(e, ENOMEM, "malloc", NULL);
            goto out;
        }
        g->ops = o;
        g->ops[g->nops++] = xstrdup(ops[i]);
    }
out:
    pthread_mutex_unlock(&rt_lock);
    return rc;
}

/* Record (or replace) `owner`'s table of group d->group.  d->flat: (nv + 1) * n * 16 bytes,
 * each variant in the group's order, then the default rendering.  d->ops: op names indices
 * into d->op_names. */
int pvrt_table_set(const struct pvrt_table_desc *d, struct pvrt_error *e)
{
    rt_lock_acquire();
    struct rt_group *g = group_find(d->group);
    struct rt_table *t = NULL;
    int rc = 0;
    if (g == NULL) {
        rc = pvrt_fail(e, 0, "", "unknown group '%s'", d->group);
        goto out;
    }
    t = calloc(1, sizeof(*t));
    size_t n = d->n, fb = (size_t)(g->nv + 1) * n * PVRT_STRIDE;
    if (t == NULL || (t->addrs = malloc(n * 8 + 8)) == NULL || (t->lens = malloc(n + 1)) == NULL ||
        (t->ops = malloc(n + 1)) == NULL || (t->index = malloc(n * 4 + 4)) == NULL ||
        (t->flat = malloc(fb + 1)) == NULL || (t->module = xstrdup(d->module)) == NULL) {
        rc = pvrt_fail(e, ENOMEM, "malloc", NULL);
        goto out;
    }
    t->owner = d->owner;
    t->n = n;
    memcpy(t->addrs, d->addrs, n * 8);
    memcpy(t->lens, d->lens, n);
    memcpy(t->flat, d->flat, fb);
    for (size_t i = 0; i < n; i++) {
        int oi = op_index(g, d->op_names[d->ops[i]]);
        if (oi < 0) {
            rc = pvrt_fail(e, 0, "", "group '%s' has no op '%s'", g->name, d->op_names[d->ops[i]]);
            goto out;
        }
        t->ops[i] = (uint8_t)oi;
        t->index[i] = d->index ? d->index[i] : (uint32_t)i;
    }
    /* Replace the owner's table of this group, if any. */
    for (struct rt_table **p = &g->tables; *p != NULL; p = &(*p)->next)
        if ((*p)->owner == d->owner) {
            struct rt_table *old = *p;
            t->next = old->next;
            *p = t;
            table_free(old);
            t = NULL;
            goto out;
        }
    t->next = g->tables;
    g->tables = t;
    t = NULL;
out:
    if (t != NULL)
        table_free(t);
    pthread_mutex_unlock(&rt_lock);
    return rc;
}

/* An op slot of `owner` in group `group`: fns has one function per variant. */
int pvrt_slot_add(const char *group, uintptr_t owner, void **slot, const uintptr_t *fns,
                  int in_code, struct pvrt_error *e)
{
    rt_lock_acquire();
    struct rt_group *g = group_find(group);
    int rc = 0;
    if (g == NULL) {
        rc = pvrt_fail(e, 0, "", "unknown group '%s'", group);
        goto out;
    }
    struct rt_slot *s = realloc(g->slots, (g->nslots + 1) * sizeof(*s));
    uintptr_t *f = malloc(g->nv * sizeof(uintptr_t));
    if (s == NULL || f == NULL) {
        free(f);
        if (s != NULL)
            g->slots = s;
        rc = pvrt_fail(e, ENOMEM, "malloc", NULL);
        goto out;
    }
    g->slots = s;
    memcpy(f, fns, g->nv * sizeof(uintptr_t));
    g->slots[g->nslots++] = (struct rt_slot){owner, slot, f, in_code != 0};
out:
    pthread_mutex_unlock(&rt_lock);
    return rc;
}

/* Forget everything of `owner` (its tables and slots), in every group.  rt_lock held. */
static void drop_owner_locked(uintptr_t owner)
{
    for (unsigned gi = 0; gi < ngroups; gi++) {
        struct rt_group *g = &groups[gi];
        for (struct rt_table **p = &g->tables; *p != NULL;) {
            if ((*p)->owner == owner) {
                struct rt_table *t = *p;
                *p = t->next;
                table_free(t);
            } else {
                p = &(*p)->next;
            }
        }
        size_t k = 0;
        for (size_t i = 0; i < g->nslots; i++)
            if (g->slots[i].owner == owner)
                free(g->slots[i].fns);
            else
                g->slots[k++] = g->slots[i];
        g->nslots = k;
    }
}

void pvrt_owner_drop(uintptr_t owner)
{
    rt_lock_acquire();
    drop_owner_locked(owner);
    pthread_mutex_unlock(&rt_lock);
}

/* ---- the bytes say ---------------------------------------------------------------------- */

/* Does every site of every table of g hold variant v (v == nv: the default)?  Tables of a
 * retired owner are dropped unread.  rt_lock held. */
static bool holds_locked(struct rt_group *g, unsigned v)
{
    for (struct rt_table **p = &g->tables; *p != NULL;) {
        struct rt_table *t = *p;
        long r = pvrt_sites_match(t->addrs, t->lens, flat_of(t, v), t->n, t->owner);
        if (r == -2) {
            *p = t->next;
            table_free(t);
            continue;
        }
        if (r >= 0)
            return false;
        p = &t->next;
    }
    return true;
}

/* The variant the bytes hold (the record kept when it holds, else the first that does), or the
 * record when the bytes hold none whole.  Updates the record.  rt_lock held. */
static int current_locked(struct rt_group *g)
{
    if (g->tables == NULL || holds_locked(g, (unsigned)g->record))
        return g->record;
    for (unsigned v = 0; v < g->nv; v++)
        if ((int)v != g->record && holds_locked(g, v)) {
            g->record = (int)v;
            return (int)v;
        }
    return g->record;
}

/* Point every op slot of g at variant v's function (each written only when it differs: this
 * is also how a stale slot is repaired).  rt_lock held. */
static int set_slots_locked(struct rt_group *g, unsigned v, struct pvrt_error *e)
{
    for (size_t i = 0; i < g->nslots; i++) {
        struct rt_slot *s = &g->slots[i];
        uintptr_t fn = s->fns[v];
        if (__atomic_load_n((uintptr_t *)s->slot, __ATOMIC_RELAXED) == fn)
            continue;
        if (s->in_code) {
            if (pvrt_write_code((uintptr_t)s->slot, &fn, sizeof(fn), e) != 0)
                return -1;
        } else {
            __atomic_store_n((uintptr_t *)s->slot, fn, __ATOMIC_RELEASE);
        }
    }
    return 0;
}

const char *pvrt_current(const char *group)
{
    rt_lock_acquire();
    struct rt_group *g = group_find(group);
    const char *v = NULL;
    if (g != NULL)
        v = g->variants[current_locked(g)];
    pthread_mutex_unlock(&rt_lock);
    return v;
}

/* The commit of a group: record from the bytes, slots after the record. */
int pvrt_reconcile(const char *group, struct pvrt_error *e)
{
    rt_lock_acquire();
    struct rt_group *g = group_find(group);
    int rc = g == NULL ? pvrt_fail(e, 0, "", "unknown group '%s'", group)
                       : set_slots_locked(g, (unsigned)current_locked(g), e);
    pthread_mutex_unlock(&rt_lock);
    return rc;
}

int pvrt_group_site_bytes_match(const char *group, const char *op, const char *variant)
{
    rt_lock_acquire();
    int r = 1;
    struct rt_group *g = group_find(group);
    int oi = g ? op_index(g, op) : -1, vi = g ? variant_index(g, variant) : -1;
    if (oi < 0 || vi < 0) {
        r = -1;
        goto out;
    }
    for (struct rt_table *t = g->tables; t != NULL && r == 1; t = t->next)
        for (size_t i = 0; i < t->n; i++) {
            if (t->ops[i] != oi)
                continue;
            long m = pvrt_sites_match(&t->addrs[i], &t->lens[i], flat_of(t, (unsigned)vi) +
                                      i * PVRT_STRIDE, 1, t->owner);
            if (m == -2)
                break; /* retired: not this module's to say */
            if (m >= 0) {
                r = 0;
                break;
            }
        }
out:
    pthread_mutex_unlock(&rt_lock);
    return r;
}

/* ---- the switch ------------------------------------------------------------------------- */

static int scratch_reserve(size_t n)
{
    if (n <= scratch.cap)
        return 0;
    size_t cap = n < 64 ? 64 : n;
    uint64_t *a = realloc(scratch.addrs, cap * 8);
    if (a)
        scratch.addrs = a;
    uint8_t *l = realloc(scratch.lens, cap);
    if (l)
        scratch.lens = l;
    uint8_t *o = realloc(scratch.old, cap * PVRT_STRIDE);
    if (o)
        scratch.old = o;
    uint8_t *w = realloc(scratch.new_, cap * PVRT_STRIDE);
    if (w)
        scratch.new_ = w;
    if (!a || !l || !o || !w)
        return -1;
    scratch.cap = cap;
    return 0;
}

/* Name the site at addr for a message: "module:runtime[i] group.op at 0x...". */
static void site_name(uintptr_t addr, char *out, size_t n)
{
    for (unsigned gi = 0; gi < ngroups; gi++)
        for (struct rt_table *t = groups[gi].tables; t != NULL; t = t->next)
            for (size_t i = 0; i < t->n; i++)
                if (t->addrs[i] == addr) {
                    snprintf(out, n, "%s:runtime[%u] %s.%s at 0x%lx", t->module, t->index[i],
                             groups[gi].name, groups[gi].ops[t->ops[i]], (unsigned long)addr);
                    return;
                }
    snprintf(out, n, "at 0x%lx", (unsigned long)addr);
}

/* Move groups[i] to variants[i], all in one plain batch, and commit from the bytes. */
int pvrt_switch_many(const char *const *gnames, const char *const *variants, size_t k,
                     uintptr_t hook, struct pvrt_switch_stats *st, struct pvrt_error *e,
                     const char **from, const char **now)
{
    struct pvrt_switch_stats local;
    if (st == NULL)
        st = &local;
    memset(st, 0, sizeof(*st));
    double t0 = now_ns();
    if (pvrt_init(e) != 0)
        return -1;
    rt_lock_acquire();
    int rc = 0;
    struct rt_group *gs[64];
    int target[64], cur[64];
    if (k > 64) {
        rc = pvrt_fail(e, 0, "", "at most 64 groups in one switch, not %zu", k);
        goto out;
    }
    /* 0. Check every name first: nothing is written for a bad one. */
    for (size_t i = 0; i < k; i++) {
        gs[i] = group_find(gnames[i]);
        if (gs[i] == NULL) {
            rc = pvrt_fail(e, 0, "", "unknown group '%s'", gnames[i]);
            goto out;
        }
        target[i] = variant_index(gs[i], variants[i]);
        if (target[i] < 0) {
            rc = pvrt_fail(e, 0, "", "unknown variant '%s' of group '%s'", variants[i], gnames[i]);
            goto out;
        }
    }
    /* 1. What the bytes hold now: the batch's old bytes. */
    size_t n = 0;
    for (size_t i = 0; i < k; i++) {
        cur[i] = current_locked(gs[i]);
        if (from != NULL)
            from[i] = gs[i]->variants[cur[i]];
        if (cur[i] == target[i])
            continue;
        for (struct rt_table *t = gs[i]->tables; t != NULL; t = t->next)
            n += t->n;
    }
    if (scratch_reserve(n) != 0) {
        rc = pvrt_fail(e, ENOMEM, "malloc", NULL);
        goto out;
    }
    size_t at = 0;
    for (size_t i = 0; i < k; i++) {
        if (cur[i] == target[i])
            continue;
        for (struct rt_table *t = gs[i]->tables; t != NULL; t = t->next) {
            memcpy(scratch.addrs + at, t->addrs, t->n * 8);
            memcpy(scratch.lens + at, t->lens, t->n);
            memcpy(scratch.old + at * PVRT_STRIDE, flat_of(t, (unsigned)cur[i]), t->n * PVRT_STRIDE);
            memcpy(scratch.new_ + at * PVRT_STRIDE, flat_of(t, (unsigned)target[i]),
                   t->n * PVRT_STRIDE);
            at += t->n;
        }
        /* A group with no site left has no bytes to say what it is: the record moves, and a
         * module joining later is rendered to it. */
        if (gs[i]->tables == NULL)
            gs[i]->record = target[i];
    }
    /* 2. One batch. */
    if (n > 0) {
        struct pvrt_batch_result r;
        long long bad;
        rc = pvrt_apply_batch(scratch.addrs, scratch.lens, scratch.old, scratch.new_, n, hook, 1,
                              &r, e, &bad);
        if (rc == 0) {
            st->sites = (unsigned)r.sites;
            st->batches = r.sites ? 1 : 0;
            st->syncs = (unsigned)r.syncs;
            st->traps = (unsigned)r.traps;
            st->traps_helped = (unsigned)r.traps_helped;
            st->traps_on_patcher = (unsigned)r.traps_on_patcher;
            st->batch_ns = r.ns;
            st->late_sync_errno = r.late_sync_errno;
        } else if (e != NULL && e->err == 0) {
            char what[200], why[200];
            snprintf(why, sizeof(why), "%.190s", e->msg);
            site_name((uintptr_t)bad, what, sizeof(what));
            pvrt_fail(e, 0, "", "refused: site %s: %s. Nothing was written.", what, why);
            e->bad_addr = bad;
        }
    }
    /* 3. The commit, whatever happened: the bytes say, the slots follow. */
    for (size_t i = 0; i < k; i++) {
        struct pvrt_error e2;
        int v = current_locked(gs[i]);
        if (now != NULL)
            now[i] = gs[i]->variants[v];
        if (set_slots_locked(gs[i], (unsigned)v, &e2) != 0 && rc == 0) {
            if (e != NULL)
                *e = e2;
            rc = -1;
        }
    }
out:
    pthread_mutex_unlock(&rt_lock);
    st->ns = (uint64_t)(now_ns() - t0);
    return rc;
}

int pvrt_switch(const char *group, const char *variant, struct pvrt_switch_stats *st,
                struct pvrt_error *e)
{
    return pvrt_switch_many(&group, &variant, 1, 0, st, e, NULL, NULL);
}

/* ---- registration (a process without Python) --------------------------------------------- */

static int cmp_rec(const void *x, const void *y)
{
    uintptr_t a = ((const uintptr_t *)x)[0], b = ((const uintptr_t *)y)[0];
    return a < b ? -1 : a > b;
}

/* One record, resolved: [0] the site address, [1] the record pointer, [2] boot?, [3] index. */
struct rec {
    uintptr_t addr;
    const struct pvpatch_site *r;
    uintptr_t boot, index;
};

int pvrt_register(const struct pvpatch_module *m, struct pvrt_error *e)
{
    if (pvrt_init(e) != 0)
        return -1;
    if (m == NULL || m->magic != PVPATCH_MODULE_MAGIC)
        return pvrt_fail(e, 0, "", "descriptor at %p: bad magic", (const void *)m);
    if (m->abi_version != PVPATCH_ABI_VERSION)
        return pvrt_fail(e, 0, "", "descriptor at %p: ABI version %u, this pvpatch reads %d; "
                         "rebuild the module", (const void *)m, m->abi_version,
                         PVPATCH_ABI_VERSION);
    const char *mname = m->name ? m->name : "?";
    uintptr_t owner = (uintptr_t)m;
    size_t nrt = m->runtime_start ? (size_t)(m->runtime_stop - m->runtime_start) : 0;
    size_t nbt = m->boot_start ? (size_t)(m->boot_stop - m->boot_start) : 0;
    size_t nall = nrt + nbt;
    if (nall == 0)
        return pvrt_fail(e, 0, "", "module %s has no sites", mname);
    /* Groups: the same variants as a group of the same name already registered. */
    for (uint32_t gi = 0; gi < m->ngroups; gi++) {
        const struct pvpatch_group *g = &m->groups[gi];
        if (g->nvariants == 0)
            return pvrt_fail(e, 0, "", "module %s: group '%s' has no variants", mname, g->name);
        if (g->native >= g->nvariants)
            return pvrt_fail(e, 0, "", "module %s: group '%s': native variant index %u out of "
                             "range", mname, g->name, g->native);
        rt_lock_acquire();
        struct rt_group *known = group_find(g->name);
        bool same = known == NULL || known->nv == g->nvariants;
        for (unsigned i = 0; known && same && i < known->nv; i++)
            same = strcmp(known->variants[i], g->variants[i]) == 0;
        bool dup = false;
        for (unsigned gj = 0; known && gj < ngroups && !dup; gj++)
            for (struct rt_table *t = groups[gj].tables; t && !dup; t = t->next)
                dup = t->owner == owner;
        pthread_mutex_unlock(&rt_lock);
        if (!same)
            return pvrt_fail(e, 0, "", "module %s: group '%s' declares other variants than "
                             "registered", mname, g->name);
        if (dup)
            return pvrt_fail(e, 0, "", "module %s is already registered", mname);
    }
    struct rec *recs = calloc(nall, sizeof(*recs));
    uint8_t *deflt = calloc(nall, PVRT_STRIDE), *start = calloc(nall, PVRT_STRIDE);
    uint8_t *lens = calloc(nall, 1);
    uint64_t *addrs = calloc(nall, 8);
    int rc = -1;
    if (!recs || !deflt || !start || !lens || !addrs) {
        pvrt_fail(e, ENOMEM, "malloc", NULL);
        goto out;
    }
    for (size_t i = 0; i < nall; i++) {
        const struct pvpatch_site *r = i < nrt ? &m->runtime_start[i] : &m->boot_start[i - nrt];
        recs[i] = (struct rec){(uintptr_t)&r->rel + r->rel, r, i >= nrt, i < nrt ? i : i - nrt};
    }
    qsort(recs, nall, sizeof(*recs), cmp_rec);
    uintptr_t ts, te;
    char path[256];
    if (!pvrt_text_segment(recs[0].addr, &ts, &te, path, sizeof(path))) {
        pvrt_fail(e, 0, "", "module %s: site 0x%lx is in no loaded object's executable segment",
                  mname, (unsigned long)recs[0].addr);
        goto out;
    }
    uint32_t effective = pvrt_cpu_effective();
    /* 1. Check every record and render every site for every variant; nothing is written
     *    before all pass.  (registry.plan_sites, the same rules and words.) */
    uintptr_t prev_end = 0;
    for (size_t i = 0; i < nall; i++) {
        const struct pvpatch_site *r = recs[i].r;
        uintptr_t a = recs[i].addr;
        const char *sec = recs[i].boot ? "boot" : "runtime";
        unsigned idx = (unsigned)recs[i].index;
        if (a < ts || a + r->len > te) {
            pvrt_fail(e, 0, "", "site %s:%s[%u] at 0x%lx: outside the module's text [0x%lx, "
                      "0x%lx)", mname, sec, idx, (unsigned long)a, (unsigned long)ts,
                      (unsigned long)te);
            goto out;
        }
        if (r->len < PVPATCH_SITE_MIN || r->len > PVPATCH_SITE_MAX) {
            pvrt_fail(e, 0, "", "site %s:%s[%u] at 0x%lx: length %u is not %d..%d", mname, sec,
                      idx, (unsigned long)a, r->len, PVPATCH_SITE_MIN, PVPATCH_SITE_MAX);
            goto out;
        }
        if (a < prev_end) {
            pvrt_fail(e, 0, "", "site %s:%s[%u] at 0x%lx: overlaps the previous site", mname,
                      sec, idx, (unsigned long)a);
            goto out;
        }
        prev_end = a + r->len;
        if (r->group >= m->ngroups || r->op >= m->groups[r->group].nops) {
            pvrt_fail(e, 0, "", "site %s:%s[%u] at 0x%lx: unknown group or op index", mname, sec,
                      idx, (unsigned long)a);
            goto out;
        }
        const struct pvpatch_group *g = &m->groups[r->group];
        const struct pvpatch_op *op = &g->ops[r->op];
        if (pvrt_default_site(a, (uintptr_t)op->slot, r->len, deflt + i * PVRT_STRIDE, e) != 0)
            goto out;
        if (memcmp((const void *)a, deflt + i * PVRT_STRIDE, r->len) != 0) {
            pvrt_fail(e, 0, "", "site %s:%s[%u] %s.%s at 0x%lx: bytes are not the default (call "
                      "*slot(%%rip) stretched with CS prefixes; a module built with an older "
                      "pvpatch.h must be rebuilt, or a debugger's breakpoint is there)", mname,
                      sec, idx, g->name, op->name, (unsigned long)a);
            goto out;
        }
        addrs[i] = a;
        lens[i] = r->len;
    }
    /* 2. Text, known sites, groups, tables, then one batch default -> current variant. */
    if (pvp_code_range_add_text(ts, te - ts, mname) < 0) {
        pvrt_fail(e, errno, pvp_writer_syscall, NULL);
        goto out;
    }
    if (pvrt_add_known_sites(addrs, nall, owner, ts, te - ts, e) < 0)
        goto out;
    for (uint32_t gi = 0; gi < m->ngroups; gi++) {
        const struct pvpatch_group *g = &m->groups[gi];
        const char *ops[256];
        for (uint32_t oi = 0; oi < g->nops && oi < 256; oi++)
            ops[oi] = g->ops[oi].name;
        if (pvrt_group_declare(g->name, (const char *const *)g->variants, g->nvariants,
                               g->native, ops, g->nops, e) != 0)
            goto retire;
    }
    rt_lock_acquire();
    for (size_t i = 0; i < nall; i++) {
        const struct pvpatch_site *r = recs[i].r;
        const struct pvpatch_group *g = &m->groups[r->group];
        const struct pvpatch_op *op = &g->ops[r->op];
        struct rt_group *rg = group_find(g->name);
        unsigned v = (unsigned)current_locked(rg);
        const struct pvpatch_impl *im = &op->impls[v];
        int inline_ok = !(r->flags & PVPATCH_F_NOINLINE) && im->tmpl &&
                        pvrt_template_trusted(im->tmpl, im->tmpl_len) &&
                        !((im->flags & PVPATCH_IMPL_NEEDS_MASK) & ~effective);
        if (pvrt_render(recs[i].addr, r->len, (uintptr_t)im->fn, im->tmpl, im->tmpl_len,
                        im->flags & PVPATCH_IMPL_NOP, inline_ok, start + i * PVRT_STRIDE, e) < 0) {
            pthread_mutex_unlock(&rt_lock);
            goto retire;
        }
    }
    pthread_mutex_unlock(&rt_lock);
    /* The tables: every variant of every runtime site (each rendered under the CPU features
     * now effective), and the default. */
    for (uint32_t gi = 0; gi < m->ngroups; gi++) {
        const struct pvpatch_group *g = &m->groups[gi];
        size_t n = 0;
        for (size_t i = 0; i < nall; i++)
            n += !recs[i].boot && recs[i].r->group == gi && !(recs[i].r->flags & PVPATCH_F_BOOT);
        uint64_t *ta = calloc(n + 1, 8);
        uint8_t *tl = calloc(n + 1, 1), *to = calloc(n + 1, 1);
        uint32_t *ti = calloc(n + 1, 4);
        uint8_t *tf = calloc((g->nvariants + 1) * (n + 1), PVRT_STRIDE);
        const char *opn[256];
        int bad = !ta || !tl || !to || !ti || !tf;
        size_t j = 0;
        for (uint32_t oi = 0; oi < g->nops && oi < 256; oi++)
            opn[oi] = g->ops[oi].name;
        for (size_t i = 0; i < nall && !bad; i++) {
            const struct pvpatch_site *r = recs[i].r;
            if (recs[i].boot || r->group != gi || (r->flags & PVPATCH_F_BOOT))
                continue;
            const struct pvpatch_op *op = &g->ops[r->op];
            ta[j] = recs[i].addr;
            tl[j] = r->len;
            to[j] = r->op;
            ti[j] = (uint32_t)recs[i].index;
            for (uint32_t v = 0; v < g->nvariants && !bad; v++) {
                const struct pvpatch_impl *im = &op->impls[v];
                int inline_ok = !(r->flags & PVPATCH_F_NOINLINE) && im->tmpl &&
                                pvrt_template_trusted(im->tmpl, im->tmpl_len) &&
                                !((im->flags & PVPATCH_IMPL_NEEDS_MASK) & ~effective);
                bad = pvrt_render(recs[i].addr, r->len, (uintptr_t)im->fn, im->tmpl,
                                  im->tmpl_len, im->flags & PVPATCH_IMPL_NOP, inline_ok,
                                  tf + ((size_t)v * n + j) * PVRT_STRIDE, e) < 0;
            }
            memcpy(tf + ((size_t)g->nvariants * n + j) * PVRT_STRIDE, deflt + i * PVRT_STRIDE,
                   PVRT_STRIDE);
            j++;
        }
        struct pvrt_table_desc d = {owner, mname, g->name, n, ta, tl, to, opn, ti, tf};
        if (!bad && n > 0)
            bad = pvrt_table_set(&d, e) != 0;
        for (uint32_t oi = 0; oi < g->nops && !bad; oi++) {
            uintptr_t fns[256];
            for (uint32_t v = 0; v < g->nvariants && v < 256; v++)
                fns[v] = (uintptr_t)g->ops[oi].impls[v].fn;
            if (g->ops[oi].slot)
                bad = pvrt_slot_add(g->name, owner, g->ops[oi].slot, fns,
                                    pvp_code_range_find((uintptr_t)g->ops[oi].slot, 8) >= 0,
                                    e) != 0;
        }
        free(ta);
        free(tl);
        free(to);
        free(ti);
        free(tf);
        if (bad) {
            if (e && e->msg[0] == 0)
                pvrt_fail(e, ENOMEM, "malloc", NULL);
            goto retire;
        }
    }
    {
        struct pvrt_batch_result br;
        long long bad;
        rt_lock_acquire();
        int r = pvrt_apply_batch(addrs, lens, deflt, start, nall, 0, 1, &br, e, &bad);
        if (r == 0)
            for (uint32_t gi = 0; gi < m->ngroups; gi++) {
                struct rt_group *rg = group_find(m->groups[gi].name);
                set_slots_locked(rg, (unsigned)current_locked(rg), NULL);
            }
        pthread_mutex_unlock(&rt_lock);
        if (r != 0) {
            if (e != NULL && e->err == 0) {
                char why[200];
                snprintf(why, sizeof(why), "%.190s", e->msg);
                pvrt_fail(e, 0, "", "module %s: registration refused at 0x%llx: %s. Nothing was "
                          "written.", mname, bad, why);
            }
            if (pvrt_sites_match(addrs, lens, deflt, nall, 0) != -1)
                goto out; /* written in part: it stays known (its bytes say what it is) */
            goto retire;
        }
    }
    rc = 0;
    goto out;
retire:
    pvrt_owner_drop(owner);
    pvpatch_core_retire_owner(owner);
out:
    free(recs);
    free(deflt);
    free(start);
    free(lens);
    free(addrs);
    return rc;
}
