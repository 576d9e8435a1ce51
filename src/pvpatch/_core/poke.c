/*
 * poke.c - the write primitive, the batch protocol and the SIGTRAP handler.
 *
 * Mechanism only: Python decides which bytes go where; this file writes them so that no thread
 * ever executes a torn site and no mapping is ever writable and executable at once.
 *
 * Writer (W^X).  Every code write goes through text_write() of writer.c: pwrite() to
 * /proc/self/mem into the object's own private mapping, or, where the kernel forbids that, an rw-
 * alias that exists only during a batch.  No mapping changes protection, ever.
 *
 * The batch protocol (apply_batch), for any number of sites (docs/protocol.md, "One batch"):
 *
 *   0. Validate every entry (registered, no overlap, current bytes == old); refuse before any
 *      write.  Classify each new rendering; prepare pending words and out-of-line slots; strip
 *      SIGTRAP from handlers' masks; publish (live_seq odd).
 *   1. Write int3 on the first byte of every trapping site.                 sync #1
 *   2. Write every byte but the first.                                      sync #2
 *   3. Write the first bytes, the atomic call flips, disarm the slots.      sync #3
 *   4. Unpublish; verify every site reads back as new.
 *
 * A thread that traps on a site of the live batch does not finish the site: the handler runs
 * the batch's new instruction in its place (emulates a call or a NOP, sends it to an
 * out-of-line slot for an inline instruction) and writes nothing, so no thread ever waits for
 * another and the patcher takes three syncs whatever the traps.  A call -> call change whose
 * displacement lies in one aligned 8-byte word takes no int3 at all (one store, one sync) --
 * on a writer path whose write of such a word is one 8-byte store (pvp_writer_atomic_store_ok);
 * elsewhere it takes the int3 protocol like any other entry.
 */
#define _GNU_SOURCE
#include "rt.h"
#include "writer.h"

#include <errno.h>
#include <link.h>
#include <stdio.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define INT3 0xcc
#define SITE_MAX 15

/* ---- errors ----------------------------------------------------------------------------- */

int pvrt_fail(struct pvrt_error *e, int err, const char *syscall, const char *fmt, ...)
{
    if (e == NULL)
        return -1;
    e->err = err;
    snprintf(e->syscall, sizeof(e->syscall), "%s", syscall ? syscall : "");
    e->syscall_long = syscall; /* callers pass literals or the writer's static names */
    e->bad_addr = -1;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
    } else {
        snprintf(e->msg, sizeof(e->msg), "%s", err ? strerror(err) : "");
    }
    return -1;
}

/* ---- sync ------------------------------------------------------------------------------- */

static int membarrier_ok; /* registered for SYNC_CORE at import */
static int membarrier_errno;
static void fork_prepare(void);
static void fork_parent(void);
static void fork_child(void);

static long sys_membarrier(int cmd, unsigned flags) { return syscall(__NR_membarrier, cmd, flags, 0); }

/* cpuid is serialising; membarrier guarantees serialisation of the *other* threads only. */
static inline void serialize_self(void)
{
    unsigned a = 0, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d) : : "memory");
}

/* Every running thread of the process executes a core-serialising instruction before this
 * returns, and so does the caller.  Async-signal-safe. */
int core_sync(void)
{
    pvp_writer_sync_flush(); /* the writes this sync publishes are in memory first */
    if (sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0) != 0)
        return -1;
    serialize_self();
    return 0;
}

static void poke_init_once(void);
static pthread_once_t poke_once = PTHREAD_ONCE_INIT;
static struct pvrt_error poke_init_error;
static int poke_init_rc;

/* Idempotent: the first call does the work, every later one returns its result. */
int pvrt_poke_init(struct pvrt_error *e)
{
    pthread_once(&poke_once, poke_init_once);
    if (poke_init_rc != 0 && e != NULL)
        *e = poke_init_error;
    return poke_init_rc;
}

void pvrt_membarrier_status(int *ok, int *err)
{
    *ok = membarrier_ok;
    *err = membarrier_errno;
}

int pvrt_sync(struct pvrt_error *e)
{
    if (!membarrier_ok)
        return pvrt_fail(e, membarrier_errno, "membarrier", NULL);
    if (core_sync() != 0)
        return pvrt_fail(e, errno, "membarrier", NULL);
    return 0;
}

static int poke_init(struct pvrt_error *e);
static void poke_init_once(void) { poke_init_rc = poke_init(&poke_init_error); }

static int poke_init(struct pvrt_error *e)
{
    /* The writer first: it chooses its path before any code range exists.  Coalescing of the
     * proc-mem path keeps its default gap: the patcher is the only writer of code (the handler
     * writes none, rule H0), so rewriting a gap with the bytes it holds is invisible. */
    if (pvp_writer_init() != 0)
        return pvrt_fail(e, errno, pvp_writer_syscall, NULL);
    /* Registering is cheap while the process has one thread and costs tens of milliseconds
     * later, which is why it happens here, at import. */
    long cmds = sys_membarrier(MEMBARRIER_CMD_QUERY, 0);
    if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)) {
        membarrier_errno = cmds < 0 ? errno : ENOSYS;
        return 0; /* reported by membarrier_status(); batches then refuse */
    }
    if (sys_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0) != 0) {
        membarrier_errno = errno;
        return 0;
    }
    membarrier_ok = 1;
    int err = pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (err != 0)
        return pvrt_fail(e, err, "pthread_atfork", NULL);
    return 0;
}

/* ---- known sites ------------------------------------------------------------------------ */

/* One table per registered module: sorted site addresses and, for each site, its pending word
 * (what a thread that traps on the site must execute instead, while a batch holding the site is
 * live).  Tables are immutable once published, except for the pending words and `retired`, and
 * never freed: the trap handler reads them without locks (publication: release in
 * add_known_sites, partner the acquire in site_pending).
 *
 * Unregistering a module retires its table (retire_owner, docs/extensions.md "Lifecycle"):
 *   1. Under the batch lock, so no batch is between its steps 0 and 4: no pending word of any
 *      table is set to the live generation, except a parked batch's, whose entries of the
 *      retired table are dropped in the same step (they are never restored: the module may be
 *      gone).  A retired table's pending words are therefore never again read as live.
 *   2. `retired` becomes 1 (release; partner: the acquire in site_lookup).  From then on the
 *      patcher does not find the site (a batch drops entries naming it, sites_match does not
 *      read it), so no batch writes, or reads, the module's memory.
 *   3. The handler still finds it, but only after every live table (a later module may have
 *      sites at the same addresses), and then treats it as a site with no batch: a thread that
 *      trapped on an int3 of an earlier batch and is handled only now is rewound (H3), an int3
 *      there is foreign (H5).  Whether the handler read `retired` as 0 or 1 makes no difference
 *      to what it does, since the pending words hold no live generation (step 1).
 *   4. Nothing is freed: the table stays (16 bytes a site) and its index is never reused. */
#define MAX_SITE_TABLES 1024
struct site_table {
    const uintptr_t *addr;
    _Atomic uint64_t *pending;
    size_t n;
    uintptr_t owner;              /* the module's descriptor address: the unregister key */
    uintptr_t text_start, text_len; /* its code range */
    _Atomic int retired;
};
static struct site_table *_Atomic site_tables[MAX_SITE_TABLES];
static _Atomic size_t n_site_tables;
static pthread_mutex_t site_tables_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t no_batch_word; /* the pending word of a retired site: always 0 */
static _Atomic unsigned long retire_gen; /* tables retired so far (Python polls it) */

/* The pending word of the registered site starting at ip, or NULL.  want_retired: look at
 * retired tables too, after the live ones (the handler), and answer no_batch_word there.
 * Async-signal-safe. */
static _Atomic uint64_t *site_lookup(uintptr_t ip, bool want_retired)
{
    size_t n = atomic_load_explicit(&n_site_tables, memory_order_acquire);
    bool in_retired = false;
    for (size_t t = 0; t < n; t++) {
        const struct site_table *tb = atomic_load_explicit(&site_tables[t], memory_order_acquire);
        bool retired = atomic_load_explicit(&tb->retired, memory_order_acquire);
        if (retired && (!want_retired || in_retired))
            continue;
        size_t lo = 0, hi = tb->n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (tb->addr[mid] < ip)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < tb->n && tb->addr[lo] == ip) {
            if (!retired)
                return &tb->pending[lo];
            in_retired = true;
        }
    }
    return in_retired ? &no_batch_word : NULL;
}

static _Atomic uint64_t *site_pending(uintptr_t ip) { return site_lookup(ip, false); }

static int cmp_uptr(const void *x, const void *y)
{
    uintptr_t a = *(const uintptr_t *)x, b = *(const uintptr_t *)y;
    return a < b ? -1 : a > b;
}

/* ---- renderings ------------------------------------------------------------------------- */

/* What the handler does in place of a rendering (rule H2 of docs/protocol.md). */
enum { K_NONE = 0, K_CALL = 1, K_ICALL = 2, K_NOP = 3, K_SLOT = 4 };

/* Pending word: generation (24 bits) | site length (4) | kind (4) | argument (32): the call's
 * rel32, the rel32 of call *slot(%rip), or an out-of-line slot number.  One word, so the
 * handler reads it in one load. */
#define GEN_MASK 0xffffffull
static inline uint64_t pw_make(uint64_t gen, unsigned len, unsigned kind, uint32_t arg)
{
    return (gen & GEN_MASK) << 40 | (uint64_t)(len & 15) << 36 | (uint64_t)(kind & 15) << 32 |
           arg;
}
#define PW_ARG(w) ((uint32_t)(w))
#define PW_KIND(w) ((unsigned)((w) >> 32) & 15)
#define PW_LEN(w) ((unsigned)((w) >> 36) & 15)
#define PW_GEN(w) ((w) >> 40)

static inline bool is_seg_prefix(uint8_t b) { return b == 0x2e || b == 0x3e || b == 0x26 || b == 0x36; }

/* Length of the NOP instruction at b[0..n) (prefixes 66/segment/REX, then 90 or 0f 1f /0), or 0
 * when there is none. */
static size_t nop_len(const uint8_t *b, size_t n)
{
    size_t i = 0;
    bool rex = false;
    while (i < n && (b[i] == 0x66 || is_seg_prefix(b[i]) || (b[i] & 0xf0) == 0x40)) {
        rex = (b[i] & 0xf0) == 0x40;
        i++;
    }
    if (i < n && b[i] == 0x90 && !rex) /* REX.B 90 is xchg %r8,%rax */
        return i + 1;
    if (i + 3 > n || b[i] != 0x0f || b[i + 1] != 0x1f)
        return 0;
    uint8_t modrm = b[i + 2];
    unsigned mod = modrm >> 6, rm = modrm & 7;
    size_t len = i + 3;
    if (mod != 3 && rm == 4) {
        if (len >= n)
            return 0;
        if (mod == 0 && (b[len] & 7) == 5)
            len += 4; /* SIB without a base: disp32 */
        len++;        /* the SIB byte */
    }
    if (mod == 1)
        len += 1;
    else if (mod == 2 || (mod == 0 && rm == 5))
        len += 4;
    return len <= n ? len : 0;
}

/* Does b[0..k) hold only whole NOPs and segment prefixes (of the instruction at k)? */
static bool nops_then(const uint8_t *b, size_t k)
{
    size_t i = 0;
    while (i < k) {
        size_t j = i;
        while (j < k && is_seg_prefix(b[j]))
            j++;
        if (j == k)
            return true;
        size_t l = nop_len(b + i, k - i);
        if (l == 0)
            return false;
        i += l;
    }
    return true;
}

static inline int32_t rd32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Classify a rendering of `len` bytes: K_CALL / K_ICALL (arg: rel32), K_NOP, or K_SLOT (an
 * inline instruction, run out of line).  Everything that is not a call or NOPs is taken for a
 * position-independent inline template, which is what x86.render emits. */
static unsigned classify(const uint8_t *b, unsigned len, uint32_t *arg)
{
    *arg = 0;
    if (len >= 5 && b[len - 5] == 0xe8 && nops_then(b, len - 5)) {
        *arg = (uint32_t)rd32(b + len - 4);
        return K_CALL;
    }
    if (len >= 6 && b[len - 6] == 0xff && b[len - 5] == 0x15 && nops_then(b, len - 6)) {
        *arg = (uint32_t)rd32(b + len - 4);
        return K_ICALL;
    }
    size_t i = 0;
    while (i < len) {
        size_t l = nop_len(b + i, len - i);
        if (l == 0)
            break;
        i += l;
    }
    return i == len ? K_NOP : K_SLOT;
}

/* ---- out-of-line slots ------------------------------------------------------------------ */

/* A slot runs an inline rendering of one site away from the site:
 *     <the rendering> ; jmp *0(%rip) ; .quad site_end        (at most 15 + 6 + 8 bytes)
 * One slot per (site, rendering), created the first time a batch moves the site to that
 * rendering and reused by every later batch that does it again; never freed, because a thread
 * may sit at a slot, descheduled, for any time.  Its first byte is the rendering's ("armed")
 * only while such a batch is live, int3 otherwise ("disarmed"): see rule H4 and step 3.
 * Slots live in arenas of generated code (writer.h: pvp_code_range_map; r-x, written through
 * text_write like registered text, copied for a forked child like it); every byte of a fresh
 * arena is int3. */
#define SLOT_SIZE 32
#define ARENA_SLOTS 2048
#define ARENA_BYTES (SLOT_SIZE * ARENA_SLOTS)
#define MAX_ARENAS 256
struct arena {
    uintptr_t exec;
    uintptr_t site[ARENA_SLOTS]; /* owner site (release before the slot can be used) */
};
static struct arena *_Atomic arenas[MAX_ARENAS];
static _Atomic size_t n_arenas;
static uint32_t n_slots; /* batch_lock */

static inline uintptr_t slot_addr(uint32_t no)
{
    const struct arena *a = atomic_load_explicit(&arenas[no / ARENA_SLOTS], memory_order_acquire);
    return a->exec + (uintptr_t)(no % ARENA_SLOTS) * SLOT_SIZE;
}

/* The site owning the slot that starts at ip, or 0.  Async-signal-safe. */
static uintptr_t slot_site(uintptr_t ip)
{
    size_t n = atomic_load_explicit(&n_arenas, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        const struct arena *a = atomic_load_explicit(&arenas[i], memory_order_acquire);
        if (ip >= a->exec && ip < a->exec + ARENA_BYTES && (ip - a->exec) % SLOT_SIZE == 0)
            return __atomic_load_n(&a->site[(ip - a->exec) / SLOT_SIZE], __ATOMIC_ACQUIRE);
    }
    return 0;
}

/* Patcher side (batch_lock): (site, rendering) -> slot number, open addressing. */
struct slot_key {
    uintptr_t site; /* 0: empty */
    uint8_t len;
    uint8_t bytes[SITE_MAX];
    uint32_t no;
};
static struct slot_key *slot_map;
static size_t slot_map_cap, slot_map_n;

static size_t slot_hash(uintptr_t site, const uint8_t *b, unsigned len)
{
    uint64_t h = 1469598103934665603ull ^ site;
    for (unsigned i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29));
}

static struct slot_key *slot_find(uintptr_t site, const uint8_t *b, unsigned len)
{
    if (slot_map_cap == 0)
        return NULL;
    for (size_t i = slot_hash(site, b, len) & (slot_map_cap - 1);; i = (i + 1) & (slot_map_cap - 1)) {
        struct slot_key *k = &slot_map[i];
        if (k->site == 0)
            return NULL;
        if (k->site == site && k->len == len && memcmp(k->bytes, b, len) == 0)
            return k;
    }
}

static int slot_map_put(uintptr_t site, const uint8_t *b, unsigned len, uint32_t no)
{
    if (2 * (slot_map_n + 1) > slot_map_cap) {
        size_t cap = slot_map_cap ? 2 * slot_map_cap : 256;
        struct slot_key *m = calloc(cap, sizeof(*m));
        if (m == NULL)
            return -1;
        struct slot_key *old = slot_map;
        size_t oldcap = slot_map_cap;
        slot_map = m;
        slot_map_cap = cap;
        slot_map_n = 0;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].site != 0)
                slot_map_put(old[i].site, old[i].bytes, old[i].len, old[i].no);
        free(old);
    }
    size_t i = slot_hash(site, b, len) & (slot_map_cap - 1);
    while (slot_map[i].site != 0)
        i = (i + 1) & (slot_map_cap - 1);
    slot_map[i].site = site;
    slot_map[i].len = (uint8_t)len;
    memcpy(slot_map[i].bytes, b, len);
    slot_map[i].no = no;
    slot_map_n++;
    return 0;
}

static int new_arena(void);

/* The slot of (site, rendering), created if need be.  A created slot is armed; an existing one
 * is left as it is (the caller arms it).  Returns 0 with *no set and *created, or -1 + errno. */
static int slot_get(uintptr_t site, const uint8_t *b, unsigned len, uint32_t *no, bool *created)
{
    struct slot_key *k = slot_find(site, b, len);
    *created = false;
    if (k != NULL) {
        *no = k->no;
        return 0;
    }
    if (n_slots == atomic_load(&n_arenas) * ARENA_SLOTS && new_arena() != 0)
        return -1;
    uint32_t s = n_slots;
    uint8_t code[SLOT_SIZE];
    uint64_t back = site + len;
    memset(code, INT3, sizeof(code));
    memcpy(code, b, len);
    code[len] = 0xff; /* jmp *0(%rip) */
    code[len + 1] = 0x25;
    memset(code + len + 2, 0, 4);
    memcpy(code + len + 6, &back, 8);
    /* The slot's bytes, then its owner: both before the batch that uses it is published. */
    if (text_write(slot_addr(s), code, len + 14) != 0)
        return -1;
    if (slot_map_put(site, b, len, s) != 0) {
        errno = ENOMEM;
        return -1;
    }
    struct arena *a = atomic_load(&arenas[s / ARENA_SLOTS]);
    __atomic_store_n(&a->site[s % ARENA_SLOTS], site, __ATOMIC_RELEASE);
    n_slots++;
    *no = s;
    *created = true;
    return 0;
}

/* ---- the batch -------------------------------------------------------------------------- */

struct entry {
    uintptr_t addr; /* executable address */
    uint8_t len;
    uint8_t old[SITE_MAX];
    uint8_t new[SITE_MAX];
    uint8_t kind;  /* K_* of the new rendering; K_NONE for an atomic call flip (no int3) */
    bool armed;    /* its slot was armed in step 0 and is disarmed in step 3 */
    uint32_t arg;  /* rel32 or slot number (see the pending word) */
    _Atomic uint64_t *pending;
};

struct batch {
    struct entry *e; /* sorted by addr */
    size_t n, cap;
};

/* The patcher's private batch.  Handlers never see it: what they need is in the sites' pending
 * words and in the slots, both permanent, so nothing is ever reclaimed under them and the
 * patcher never waits for a handler. */
static struct batch the_batch;
static pthread_mutex_t batch_lock = PTHREAD_MUTEX_INITIALIZER;
/* Odd while a batch is live; the low 24 bits of the odd value are its generation.  Written by
 * the patcher (seq_cst), read twice by every handler (rule H1). */
static _Atomic uint64_t live_seq;
static _Atomic pid_t patcher_tid; /* the thread inside apply_batch, for the counters */
/* A batch left live after its sync #2 failed (the sites emulate their old renderings behind
 * int3); the next apply_batch restores it first.  batch_lock. */
static bool parked;

static _Atomic unsigned long ctr_traps, ctr_traps_emulated, ctr_traps_on_patcher,
    ctr_stale_traps, ctr_slot_traps, ctr_batches, ctr_sites, ctr_flips, ctr_sync_failures;

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

/* ---- SIGTRAP ---------------------------------------------------------------------------- */

/* The handler pvpatch's chains to ("prev"), in two copies: a writer fills the copy not in use
 * and then flips prev_seq (+2); the handler reads the copy prev_seq names and retries if prev_seq
 * moved meanwhile.  A handler that interrupts a writer reads the copy in use, never a half-written
 * one, so the read never waits.  Writers are serialised by prev_writing (taken with a CAS, never
 * waited for in a signal handler). */
static struct sigaction prev_copy[2];
static _Atomic unsigned prev_seq;
static _Atomic int prev_writing;
static _Atomic int prev_reset; /* the previous handler had SA_RESETHAND and has been run */
static _Atomic int trap_installed;

static void prev_read(struct sigaction *out, bool *reset)
{
    for (;;) {
        unsigned s = atomic_load(&prev_seq);
        *out = prev_copy[(s >> 1) & 1];
        *reset = atomic_load(&prev_reset);
        if (atomic_load(&prev_seq) == s)
            return;
    }
}

/* Replace prev with *act (if act) and report the one it replaces in *old (if old), as
 * sigaction() would.  Returns false if another writer is inside. */
static bool prev_write(const struct sigaction *act, struct sigaction *old)
{
    int idle = 0;
    if (!atomic_compare_exchange_strong(&prev_writing, &idle, 1))
        return false;
    unsigned s = atomic_load(&prev_seq);
    if (old != NULL) {
        *old = prev_copy[(s >> 1) & 1];
        if (atomic_load(&prev_reset))
            old->sa_handler = SIG_DFL;
    }
    if (act != NULL) {
        prev_copy[((s >> 1) + 1) & 1] = *act;
        atomic_store(&prev_reset, 0);
        atomic_store(&prev_seq, s + 2); /* partner: prev_read's two loads */
    }
    atomic_store(&prev_writing, 0);
    return true;
}

enum { D_EMULATED, D_REWOUND, D_FOREIGN };

/* Rules H1-H3 for a thread that trapped at `site` (or at one of its slots). */
static int dispatch(ucontext_t *uc, uintptr_t site, _Atomic uint64_t *pend)
{
    greg_t *g = uc->uc_mcontext.gregs;
    for (;;) {
        /* H1: a snapshot of (live batch, pending word, first byte) with no publish or
         * unpublish in between.  Partner: the seq_cst stores of live_seq in apply_batch. */
        uint64_t s1 = atomic_load(&live_seq);
        uint64_t w = atomic_load(pend);
        uint8_t first = *(volatile const uint8_t *)site;
        uint64_t s2 = atomic_load(&live_seq);
        if (s1 != s2)
            continue;
        if ((s1 & 1) && PW_KIND(w) != K_NONE && PW_GEN(w) == (s1 & GEN_MASK) && first == INT3) {
            /* H2: run the live batch's new instruction in the thread's place. */
            uintptr_t end = site + PW_LEN(w);
            uintptr_t target = 0;
            switch (PW_KIND(w)) {
            case K_ICALL:
                target = __atomic_load_n((uintptr_t *)(end + (int32_t)PW_ARG(w)), __ATOMIC_RELAXED);
                /* fall through */
            case K_CALL: {
                if (PW_KIND(w) == K_CALL)
                    target = end + (int32_t)PW_ARG(w);
                /* The push a call makes, where it makes it (the site's ABI keeps that word
                 * free, as for the real call). */
                uintptr_t sp = (uintptr_t)g[REG_RSP] - 8;
                *(uintptr_t *)sp = end;
                g[REG_RSP] = (greg_t)sp;
                g[REG_RIP] = (greg_t)target;
                break;
            }
            case K_NOP:
                g[REG_RIP] = (greg_t)end;
                break;
            default: /* K_SLOT */
                /* The slot was written before the batch was published; serialising here makes
                 * this thread fetch it as written (cross-modifying code, Intel SDM vol. 3,
                 * "Handling Self- and Cross-Modifying Code"). */
                serialize_self();
                g[REG_RIP] = (greg_t)slot_addr(PW_ARG(w));
                break;
            }
            return D_EMULATED;
        }
        if (first != INT3) {
            /* H3: the site is whole; run it again. */
            g[REG_RIP] = (greg_t)site;
            return D_REWOUND;
        }
        return D_FOREIGN; /* H5 */
    }
}

/* The kernel's default action for a synchronous SIGTRAP: terminate with a core dump. */
static void die_by_sigtrap(void)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    core_sigaction_real(SIGTRAP, &dfl, NULL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTRAP);
    pthread_sigmask(SIG_UNBLOCK, &s, NULL);
    raise(SIGTRAP);
}

/* A SIGTRAP that is not ours, delivered as the kernel would have delivered it to the handler
 * installed before pvpatch's (rule H5). */
static void chain(int sig, siginfo_t *si, void *ucv)
{
    struct sigaction prev;
    bool reset;
    prev_read(&prev, &reset);
    const struct sigaction *p = &prev;
    ucontext_t *uc = ucv;
    /* si_code > 0: generated by the kernel (int3, a debug trap): forced.  The kernel resets a
     * forced signal that is ignored to SIG_DFL (kernel/signal.c, force_sig_info_to_task), so an
     * ignored SIGTRAP from an int3 kills, as without pvpatch; a sent one is discarded. */
    bool forced = si->si_code > 0;
    void (*h)(int) = reset ? SIG_DFL : p->sa_handler;
    if (h == SIG_IGN) {
        if (forced)
            die_by_sigtrap();
        return;
    }
    if (h == SIG_DFL) {
        die_by_sigtrap();
        return;
    }
    if (p->sa_flags & SA_RESETHAND) {
        int no = 0;
        atomic_compare_exchange_strong(&prev_reset, &no, 1);
    }
    /* The mask the kernel would have set for it: the interrupted mask, its sa_mask and the
     * signal itself unless SA_NODEFER -- all but SIGTRAP, which must stay deliverable (a site
     * under patch reached with SIGTRAP blocked kills the process). */
    sigset_t m, saved;
    sigorset(&m, &uc->uc_sigmask, &p->sa_mask);
    sigdelset(&m, SIGTRAP);
    pthread_sigmask(SIG_SETMASK, &m, &saved);
    if (p->sa_flags & SA_SIGINFO)
        p->sa_sigaction(sig, si, ucv);
    else
        h(sig);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

/* Async-signal-safe by construction: no lock, no allocation, no thread-local storage, no code
 * write, no membarrier; errno preserved. */
static void trap_handler(int sig, siginfo_t *si, void *ucv)
{
    int saved_errno = errno;
    ucontext_t *uc = ucv;
    if (si->si_code == SI_KERNEL) { /* int3 */
        uintptr_t ip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP] - 1;
        uintptr_t site = ip;
        _Atomic uint64_t *pend = site_lookup(ip, true);
        bool at_slot = false;
        if (pend == NULL && (site = slot_site(ip)) != 0) {
            pend = site_lookup(site, true);
            at_slot = true;
        }
        if (pend != NULL) {
            int r = dispatch(uc, site, pend);
            if (r == D_FOREIGN && at_slot) {
                /* H4: a disarmed slot whose site carries a foreign int3: meet it there. */
                uc->uc_mcontext.gregs[REG_RIP] = (greg_t)site;
                r = D_REWOUND;
            }
            if (r != D_FOREIGN) {
                atomic_fetch_add(&ctr_traps, 1);
                if (at_slot)
                    atomic_fetch_add(&ctr_slot_traps, 1);
                pid_t pt = atomic_load(&patcher_tid);
                if (pt != 0 && pt == gettid_())
                    atomic_fetch_add(&ctr_traps_on_patcher, 1);
                else if (r == D_EMULATED)
                    atomic_fetch_add(&ctr_traps_emulated, 1);
                else
                    atomic_fetch_add(&ctr_stale_traps, 1);
                errno = saved_errno;
                return;
            }
        }
    }
    chain(sig, si, ucv);
    errno = saved_errno;
}

/* Install the handler, chaining to whatever is there, unless it is ours already.  SA_NODEFER:
 * a signal handler that runs while we handle a trap may trap again on this thread, and a
 * blocked SIGTRAP from int3 kills the process. */
int pvrt_install_trap_handler(struct pvrt_error *e)
{
    struct sigaction cur, sa;
    if (core_sigaction_real(SIGTRAP, NULL, &cur) != 0)
        return pvrt_fail(e, errno, "sigaction", NULL);
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == trap_handler)
        return 0;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = trap_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int spins = 0; !prev_write(&cur, NULL); spins++)
        if (spins > 100000) {
            return pvrt_fail(e, EBUSY, "sigaction",
                             "install_trap_handler: the previous handler is being changed");
        } else {
            sched_yield();
        }
    if (core_sigaction_real(SIGTRAP, &sa, NULL) != 0)
        return pvrt_fail(e, errno, "sigaction", NULL);
    atomic_store(&trap_installed, 1);
    return 1;
}

/* sigaction(SIGTRAP, ...) made by the program through an owned GOT entry (masks.c) while
 * pvpatch's handler is installed: the new action becomes the one pvpatch chains to, and pvpatch's
 * stays in place, so that no int3 of a batch can reach another handler.  *old gets what the
 * program would have seen.  Returns 0 if done here, -1 if the caller must make the real call
 * (pvpatch's handler is not installed, or a concurrent change is in progress). */
int core_trap_sigaction(const struct sigaction *act, struct sigaction *old)
{
    struct sigaction cur;
    if (!atomic_load(&trap_installed) || core_sigaction_real(SIGTRAP, NULL, &cur) != 0 ||
        !(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != trap_handler)
        return -1;
    if (act != NULL && (act->sa_flags & SA_SIGINFO) && act->sa_sigaction == trap_handler)
        return -1;
    return prev_write(act, old) ? 0 : -1;
}

/* ---- SIGTRAP blocked -------------------------------------------------------------------- */

/* Remove SIGTRAP from the sa_mask of every installed handler: a handler installed with
 * sigfillset(&sa.sa_mask) would otherwise run with SIGTRAP blocked, and the first site under
 * patch it reached would kill the process.  One sigaction() read per signal, and a write only
 * for a handler whose mask has SIGTRAP. */
static unsigned long ctr_masks_stripped;
static void strip_sigtrap_from_handlers(void)
{
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction cur;
        if (sig == SIGKILL || sig == SIGSTOP || sig == SIGTRAP)
            continue;
        if (sigaction(sig, NULL, &cur) != 0) /* EINVAL: reserved by the C library */
            continue;
        if (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN ||
            !sigismember(&cur.sa_mask, SIGTRAP))
            continue;
        sigdelset(&cur.sa_mask, SIGTRAP);
        if (sigaction(sig, &cur, NULL) == 0)
            ctr_masks_stripped++;
    }
}

/* ---- the patcher ------------------------------------------------------------------------ */

static int cmp_entry(const void *x, const void *y)
{
    uintptr_t a = ((const struct entry *)x)->addr, b = ((const struct entry *)y)->addr;
    return a < b ? -1 : a > b;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* One of the patcher's syncs.  membarrier does not fail once registered, short of memory
 * (ENOMEM) or a seccomp filter; a transient failure is retried, a lasting one reported. */
static int step_sync(int *syncs)
{
    (*syncs)++;
    for (int attempt = 0; attempt < 3; attempt++) {
        if (core_sync() == 0)
            return 0;
        atomic_fetch_add(&ctr_sync_failures, 1);
        if (errno != ENOMEM && errno != EAGAIN && errno != EINTR)
            break;
        sched_yield();
    }
    return -1;
}

/* Is this entry an atomic call flip: call rel32 -> call rel32, same prefixes, rel32 field in
 * one aligned 8-byte word? */
static bool is_atomic_flip(const struct entry *e)
{
    uint32_t a;
    /* Only where the writer's 8-byte write is one aligned store (the alias path): the kernel
     * copies a /proc/self/mem write with memcpy, which is not single-copy atomic. */
    if (!pvp_writer_atomic_store_ok() || e->len < 5 || classify(e->old, e->len, &a) != K_CALL ||
        classify(e->new, e->len, &a) != K_CALL || memcmp(e->old, e->new, e->len - 4) != 0)
        return false;
    uintptr_t field = e->addr + e->len - 4;
    return (field & 7) <= 4;
}

/* Write the rel32 field of an atomic flip with one aligned 8-byte store, its neighbours written
 * back unchanged (the patcher is the only writer of code: handlers write none). */
static int flip_store(const struct entry *e)
{
    uintptr_t field = e->addr + e->len - 4, word = field & ~(uintptr_t)7;
    if (pvp_writer_flush() != 0) /* the neighbours are read from memory: nothing pending */
        return -1;
    uint64_t v = __atomic_load_n((const uint64_t *)word, __ATOMIC_RELAXED);
    memcpy((uint8_t *)&v + (field - word), e->new + e->len - 4, 4);
    return text_write(word, &v, 8);
}

/* Set the pending word of every trapping entry for generation `gen`, using `from_old` renderings
 * (the rollback of a parked batch) or new ones; arms slots.  Returns -1 + errno.
 *   1. Create or arm the slots.
 *   2. Flush: the slots' bytes are in memory (the proc-mem writer keeps writes pending) before
 *      any pending word can send a thread there -- at once for a parked batch, which is live.
 *   3. The pending words. */
static int prepare_pending(struct batch *b, uint64_t gen, bool from_old)
{
    for (size_t i = 0; i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->kind == K_NONE)
            continue;
        const uint8_t *r = from_old ? e->old : e->new;
        uint32_t arg;
        unsigned kind = classify(r, e->len, &arg);
        if (kind == K_SLOT) {
            bool created;
            if (slot_get(e->addr, r, e->len, &arg, &created) != 0)
                return -1;
            if (!created && text_write(slot_addr(arg), r, 1) != 0) /* arm */
                return -1;
            e->armed = true;
            e->arg = arg;
        }
    }
    if (pvp_writer_flush() != 0)
        return -1;
    for (size_t i = 0; i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->kind == K_NONE)
            continue;
        uint32_t arg;
        unsigned kind = classify(from_old ? e->old : e->new, e->len, &arg);
        if (kind == K_SLOT)
            arg = e->arg;
        atomic_store(e->pending, pw_make(gen, e->len, kind, arg));
    }
    return 0;
}

/* Disarm the slots armed for this batch: int3 on their first byte. */
static int disarm_slots(struct batch *b)
{
    static const uint8_t int3 = INT3;
    for (size_t i = 0; i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->armed) {
            if (text_write(slot_addr(e->arg), &int3, 1) != 0)
                return -1;
            e->armed = false;
        }
    }
    return 0;
}

/* Unpublish, after flushing: a thread that traps on an int3 this batch has replaced must find
 * the replacement in memory once the batch is no longer live (rule H3), not a pending write.
 * Returns the flush's result (-1 + errno); the batch is unpublished either way. */
static int unpublish(struct batch *b)
{
    int rc = pvp_writer_flush();
    atomic_fetch_add(&live_seq, 1); /* even: no batch is live (partner: H1's loads) */
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].kind != K_NONE)
            atomic_store(b->e[i].pending, 0);
    return rc;
}

/* Finish a parked batch (see the failure rules in docs/protocol.md): its sites hold int3 and
 * their old tails, and handlers emulate the old renderings.  Sync, so that every thread sees the
 * old tails; write the old first bytes; disarm; unpublish.  The caller's own batch then takes
 * its three syncs, which make all of this visible. */
static int restore_parked(int *syncs)
{
    struct batch *b = &the_batch;
    if (step_sync(syncs) != 0)
        return -1;
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].kind != K_NONE && text_write(b->e[i].addr, b->e[i].old, 1) != 0)
            return -1;
    if (disarm_slots(b) != 0)
        return -1;
    if (unpublish(b) != 0)
        return -1;
    parked = false;
    b->n = 0;
    return 0;
}

/* pvrt_apply_batch (rt.h): the batch protocol of the comment at the top of this file.
 * Refusals write nothing and name the site by address (*bad_addr); a failed sync is reported as
 * membarrier's errno after the recovery of docs/protocol.md ("A failed sync"). */
int pvrt_apply_batch(const uint64_t *addrs, const uint8_t *lens, const uint8_t *old,
                     const uint8_t *new_, size_t n, uintptr_t hook, int hook_step,
                     struct pvrt_batch_result *r, struct pvrt_error *e, long long *bad_addr)
{
    *bad_addr = -1;
    memset(r, 0, sizeof(*r));
    if (hook_step < 1 || hook_step > 3)
        return pvrt_fail(e, 0, "", "apply_batch: hook_step is 1, 2 or 3");
    if (pvrt_poke_init(e) != 0)
        return -1;
    if (!membarrier_ok)
        return pvrt_fail(e, membarrier_errno, "membarrier", NULL);
    if (!pvp_writer_child_ok())
        /* After a fork whose child handler could not copy the code: it is still shared with
         * the parent, whose threads this process cannot sync (alias path only). */
        return pvrt_fail(e, EXDEV, "fork (code still shared with the parent)", NULL);

    struct batch *b = &the_batch;
    double t0 = now_ns();
    unsigned long traps0 = atomic_load(&ctr_traps), emu0 = atomic_load(&ctr_traps_emulated),
                  onp0 = atomic_load(&ctr_traps_on_patcher), stale0 = atomic_load(&ctr_stale_traps);
    int syncs = 0, sync_errno = 0, failed_sync = 0, late_sync_errno = 0, io_errno = 0;
    const char *io_syscall = "text_write";
    size_t ntrap = 0, nflip = 0, dropped_retired = 0;
    long bad = -1;
    const char *why = NULL, *failure = NULL;
#define SYNC_OR_FAIL(k)                                                                          \
    do {                                                                                         \
        WRITE_OR_FAIL(pvp_writer_flush()); /* the sync publishes the pass's writes */            \
        if (step_sync(&syncs) != 0) {                                                            \
            sync_errno = errno;                                                                  \
            failed_sync = (k);                                                                   \
        }                                                                                        \
    } while (0)
#define WRITE_OR_FAIL(call)                                                                      \
    do {                                                                                         \
        if ((call) != 0 && io_errno == 0) {                                                      \
            io_errno = errno ? errno : EIO;                                                      \
            io_syscall = pvp_writer_syscall;                                                     \
        }                                                                                        \
    } while (0)
#define RUN_HOOK(k)                                                                              \
    do {                                                                                         \
        if (hook != 0 && hook_step == (k)) {                                                     \
            /* The hook runs a site: the step's writes must be in memory, not pending. */        \
            WRITE_OR_FAIL(pvp_writer_flush());                                                   \
            ((long (*)(void))(uintptr_t)hook)();                                                 \
        }                                                                                        \
    } while (0)

    pthread_mutex_lock(&batch_lock);
    /* The writer for this batch (the alias path maps its rw- view on first use, unmapped by
     * pvp_writer_end below, on every path out). */
    if (pvp_writer_begin() != 0) {
        io_errno = errno ? errno : EIO;
        io_syscall = pvp_writer_syscall;
        goto unlock_nowriter;
    }
    if (parked && restore_parked(&syncs) != 0) {
        sync_errno = errno;
        failure = "a batch parked after a failed sync could not be restored";
        goto unlock;
    }
    /* 0. Build, sort and validate; nothing is written unless every entry passes. */
    if (n > b->cap) {
        struct entry *ne = realloc(b->e, n * sizeof(*ne));
        if (ne == NULL) {
            why = "out of memory";
            goto unlock;
        }
        b->e = ne;
        b->cap = n;
    }
    const uint64_t *pa = addrs;
    const uint8_t *pl = lens, *po = old, *pn = new_;
    size_t filled = 0;
    for (size_t i = 0; i < n; i++) {
        struct entry *e = &b->e[filled];
        memset(e, 0, sizeof(*e));
        e->addr = pa[i];
        e->len = pl[i];
        if (e->len < 1 || e->len > SITE_MAX) {
            why = "bad site length";
            bad = (long)filled;
            b->n = 0;
            goto unlock;
        }
        /* A site of a module unregistered since the caller planned (retire_owner, e.g. from
         * the module's destructor while it is unloaded) is dropped unread: its memory may be
         * gone or reused. */
        if (site_pending(e->addr) == NULL && site_lookup(e->addr, true) != NULL) {
            dropped_retired++;
            continue;
        }
        memcpy(e->old, po + 16 * i, e->len);
        memcpy(e->new, pn + 16 * i, e->len);
        filled++;
    }
    n = b->n = filled;
    qsort(b->e, n, sizeof(struct entry), cmp_entry);
    for (size_t i = 0; i < n && why == NULL; i++) {
        struct entry *e = &b->e[i];
        if (i + 1 < n && e->addr + e->len > b->e[i + 1].addr) {
            why = "sites overlap";
            bad = (long)i;
        } else if ((e->pending = site_pending(e->addr)) == NULL) {
            why = "not a registered site";
            bad = (long)i;
        } else if (memcmp((const void *)e->addr, e->old, e->len) != 0) {
            why = "bytes at the site are not the expected old bytes";
            bad = (long)i;
        } else if (pvp_code_range_find(e->addr, e->len) < 0) {
            why = "not in a registered code range";
            bad = (long)i;
        }
    }
    if (why != NULL) {
        bad = bad >= 0 ? (long)b->e[bad].addr : -1; /* report the address; Python names it */
        b->n = 0;
        goto unlock;
    }
    /* Entries whose new bytes are their old ones need no write: drop them (the kernel skips
     * them too).  A batch left empty takes no sync.  Classify the rest. */
    {
        size_t kept = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(b->e[i].old, b->e[i].new, b->e[i].len) != 0) {
                if (kept != i)
                    memcpy(&b->e[kept], &b->e[i], sizeof(struct entry));
                struct entry *e = &b->e[kept++];
                if (is_atomic_flip(e)) {
                    e->kind = K_NONE;
                    nflip++;
                } else {
                    e->kind = (uint8_t)classify(e->new, e->len, &e->arg);
                    ntrap++;
                }
            }
        n = b->n = kept;
        if (n == 0)
            goto unlock;
    }
    atomic_store(&patcher_tid, gettid_());
    if (ntrap > 0) {
        /* Pending words and slots, then publish.  A failure here has written nothing to a
         * site (a created slot stays, disarmed by nobody: no thread is sent to it). */
        /* Handlers installed through an owned sigaction never block SIGTRAP; the sweep is for
         * those installed before their object's GOT was rewritten, so it runs when objects
         * were rewritten (or the rewrite failed: best effort, then every time). */
        if (core_own_masks() != 0)
            strip_sigtrap_from_handlers();
        uint64_t gen = atomic_load(&live_seq) + 1;
        if (prepare_pending(b, gen, false) != 0) {
            io_errno = errno ? errno : EIO;
            io_syscall = pvp_writer_syscall;
            for (size_t i = 0; i < n; i++)
                if (b->e[i].kind != K_NONE)
                    atomic_store(b->e[i].pending, 0);
            disarm_slots(b);
            failure = "preparing the out-of-line slots failed";
            goto unlock_batch;
        }
        atomic_store(&live_seq, gen); /* publish (partner: H1's loads) */

        /* 1. int3 on every first byte. */
        static const uint8_t int3 = INT3;
        for (size_t i = 0; i < n; i++)
            if (b->e[i].kind != K_NONE)
                WRITE_OR_FAIL(text_write(b->e[i].addr, &int3, 1));
        RUN_HOOK(1);
        /* sync #1: after it, nobody can fetch an old first byte; it also makes the slots of
         * step 0 visible to threads that a handler did not send there. */
        SYNC_OR_FAIL(1);
        if (failed_sync == 1) {
            /* The tails are untouched: putting the old first bytes back needs no sync (a
             * thread fetches int3 or the old byte, ahead of the old tail either way). */
            for (size_t i = 0; i < n; i++)
                if (b->e[i].kind != K_NONE)
                    WRITE_OR_FAIL(text_write(b->e[i].addr, b->e[i].old, 1));
            WRITE_OR_FAIL(disarm_slots(b));
            WRITE_OR_FAIL(unpublish(b));
            goto unlock_batch;
        }

        /* 2. Every byte but the first. */
        for (size_t i = 0; i < n; i++) {
            struct entry *e = &b->e[i];
            if (e->kind != K_NONE)
                WRITE_OR_FAIL(text_write(e->addr + 1, e->new + 1, e->len - 1));
        }
        RUN_HOOK(2);
        /* sync #2: no thread can see the new tail behind the old first byte, which is int3
         * for every thread since sync #1. */
        SYNC_OR_FAIL(2);
        if (failed_sync == 2) {
            /* Without a sync the first bytes cannot change.  Roll back behind the int3s: old
             * tails, handlers emulating the old renderings; the batch stays live ("parked")
             * and the next apply_batch restores the old first bytes after a sync. */
            for (size_t i = 0; i < n; i++) {
                struct entry *e = &b->e[i];
                if (e->kind != K_NONE)
                    WRITE_OR_FAIL(text_write(e->addr + 1, e->old + 1, e->len - 1));
            }
            disarm_slots(b);
            WRITE_OR_FAIL(prepare_pending(b, atomic_load(&live_seq), true));
            /* Only the trapping entries stay in the parked batch. */
            size_t kept = 0;
            for (size_t i = 0; i < n; i++)
                if (b->e[i].kind != K_NONE)
                    memmove(&b->e[kept++], &b->e[i], sizeof(struct entry));
            b->n = kept;
            parked = true;
            goto unlock_parked;
        }
    }

    /* 3. First bytes; then the atomic call flips; then disarm the slots, after the first bytes
     *    (rule H4: a thread sent to a slot disarmed meanwhile must find a whole site). */
    for (size_t i = 0; i < n; i++) {
        struct entry *e = &b->e[i];
        if (e->kind != K_NONE)
            WRITE_OR_FAIL(text_write(e->addr, e->new, 1));
    }
    for (size_t i = 0; i < n; i++)
        if (b->e[i].kind == K_NONE)
            WRITE_OR_FAIL(flip_store(&b->e[i]));
    WRITE_OR_FAIL(disarm_slots(b));
    RUN_HOOK(3);
    /* sync #3: the sites are whole and new for every thread, and no thread can start a slot of
     * this batch.  A failure here leaves the sites whole and new: reported, not undone. */
    WRITE_OR_FAIL(pvp_writer_flush());
    if (step_sync(&syncs) != 0)
        late_sync_errno = errno;

    /* 4. Unpublish; verify. */
    if (ntrap > 0)
        WRITE_OR_FAIL(unpublish(b));
    for (size_t i = 0; i < n; i++)
        if (memcmp((const void *)b->e[i].addr, b->e[i].new, b->e[i].len) != 0) {
            why = "a site does not read back as written";
            bad = (long)b->e[i].addr;
            break;
        }
    atomic_fetch_add(&ctr_batches, 1);
    atomic_fetch_add(&ctr_sites, n);
    atomic_fetch_add(&ctr_flips, nflip);
unlock_batch:
    b->n = 0;
unlock_parked:
    atomic_store(&patcher_tid, 0);
unlock:
    /* Everything written is in memory (a write left pending by a failure path is flushed
     * here); alias path: the rw- view goes.  A parked batch needs no writer: its handlers
     * write nothing. */
    WRITE_OR_FAIL(pvp_writer_end());
unlock_nowriter:
    pthread_mutex_unlock(&batch_lock);
#undef SYNC_OR_FAIL
#undef WRITE_OR_FAIL
#undef RUN_HOOK

    if (io_errno != 0)
        return pvrt_fail(e, io_errno, io_syscall ? io_syscall : "text_write", NULL);
    if (failure != NULL || failed_sync != 0) {
        /* errno of membarrier; msg: "strerror; what happened" */
        char what[160];
        if (failure != NULL)
            snprintf(what, sizeof(what), "%s", failure);
        else if (failed_sync == 1)
            snprintf(what, sizeof(what), "sync #1 failed: the old bytes are back, nothing changed");
        else
            snprintf(what, sizeof(what), "sync #2 failed: the sites run their old renderings "
                                         "behind int3 until the next batch restores them");
        int err = sync_errno ? sync_errno : EIO;
        return pvrt_fail(e, err, "membarrier", "%s; %s", strerror(err), what);
    }
    if (why != NULL) {
        *bad_addr = (long long)bad;
        return pvrt_fail(e, 0, "", "%s", why);
    }
    r->sites = n;
    r->syncs = syncs;
    r->ns = now_ns() - t0;
    r->traps = atomic_load(&ctr_traps) - traps0;
    r->traps_helped = atomic_load(&ctr_traps_emulated) - emu0;
    r->traps_on_patcher = atomic_load(&ctr_traps_on_patcher) - onp0;
    r->stale_traps = atomic_load(&ctr_stale_traps) - stale0;
    r->flips = nflip;
    r->trapping = ntrap;
    r->late_sync_errno = late_sync_errno;
    r->dropped_retired = dropped_retired;
    return 0;
}

/* ---- text ------------------------------------------------------------------------------- */

/* pthread_atfork: no fork lands in the middle of a batch, of a table update or of a code range
 * update (prepare takes the locks; both sides release them).  So the child's copy of the text
 * -- copy-on-write of the private mappings, or the writer's copy of the shared ones on the
 * fallback path -- is never taken from a text that a batch is writing. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&batch_lock);
    pthread_mutex_lock(&site_tables_lock);
    pvp_writer_fork_prepare();
}

static void fork_parent(void)
{
    pvp_writer_fork_parent();
    pthread_mutex_unlock(&site_tables_lock);
    pthread_mutex_unlock(&batch_lock);
}

/* In the child (one thread). */
static void fork_child(void)
{
    pvp_writer_fork_child();
    /* Handlers hold nothing (rule H0): a batch parked at the fork is restored by the child's
     * next batch like any other. */
    pthread_mutex_unlock(&site_tables_lock);
    pthread_mutex_unlock(&batch_lock);
}

/* A fresh arena of out-of-line slots: generated code of the writer (so text_write reaches it
 * and a forked child gets its own copy, as for registered text), every byte int3 before any
 * slot in it is used.  batch_lock, inside the batch's pvp_writer_begin/end. */
static int new_arena(void)
{
    size_t a = atomic_load(&n_arenas);
    if (a == MAX_ARENAS) {
        errno = ENOSPC;
        pvp_writer_syscall = "slot arenas (256 at most)";
        return -1;
    }
    struct arena *ar = calloc(1, sizeof(*ar));
    uint8_t *fill = malloc(ARENA_BYTES);
    uintptr_t x;
    if (ar == NULL || fill == NULL) {
        free(ar);
        free(fill);
        errno = ENOMEM;
        pvp_writer_syscall = "malloc";
        return -1;
    }
    memset(fill, INT3, ARENA_BYTES);
    /* A failure after the mapping leaves an unused code range behind (ranges are never
     * removed); nothing runs there. */
    if (pvp_code_range_map(ARENA_BYTES, "pvpatch-slots", 0, &x) < 0 ||
        text_write(x, fill, ARENA_BYTES) != 0 || pvp_writer_flush() != 0) {
        int e = errno;
        free(ar);
        free(fill);
        errno = e;
        return -1;
    }
    free(fill);
    ar->exec = x;
    atomic_store_explicit(&arenas[a], ar, memory_order_release);
    atomic_store_explicit(&n_arenas, a + 1, memory_order_release); /* partner: slot_site */
    return 0;
}

struct seg_query {
    uintptr_t addr;
    uintptr_t start, end;
    char path[4096];
    int found;
};

static int seg_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct seg_query *q = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
        if (q->addr >= s && q->addr < e) {
            long pg = sysconf(_SC_PAGESIZE);
            q->start = s & ~(uintptr_t)(pg - 1);
            q->end = (e + pg - 1) & ~(uintptr_t)(pg - 1);
            snprintf(q->path, sizeof(q->path), "%s", info->dlpi_name ? info->dlpi_name : "");
            q->found = 1;
            return 1;
        }
    }
    return 0;
}

int pvrt_text_segment(uintptr_t addr, uintptr_t *start, uintptr_t *end, char *path, size_t n)
{
    struct seg_query q = {0};
    q.addr = addr;
    dl_iterate_phdr(seg_cb, &q);
    if (!q.found)
        return 0;
    *start = q.start;
    *end = q.end;
    if (path != NULL && n > 0)
        snprintf(path, n, "%s", q.path);
    return 1;
}

/* Serialised with batches (batch_lock). */
int pvrt_write_code(uintptr_t addr, const void *data, size_t len, struct pvrt_error *e)
{
    if (pvp_code_range_find(addr, len) < 0)
        return pvrt_fail(e, 0, "", "write_code: [%#lx, +%zu) is not in a code range of pvpatch",
                         (unsigned long)addr, len);
    int rc, err = 0;
    const char *syscall = NULL;
    pthread_mutex_lock(&batch_lock);
    rc = pvp_writer_begin();
    if (rc == 0)
        rc = text_write(addr, data, len);
    if (rc != 0) {
        err = errno;
        syscall = pvp_writer_syscall;
    }
    if (pvp_writer_end() != 0 && rc == 0) {
        rc = -1;
        err = errno;
        syscall = pvp_writer_syscall;
    }
    pthread_mutex_unlock(&batch_lock);
    return rc != 0 ? pvrt_fail(e, err, syscall, NULL) : 0;
}

/* The trap handler recognises these site starts (any order) from now on.  owner (the module's
 * descriptor address) is what retire_owner names; the text is the code range released with
 * it. */
long pvrt_add_known_sites(const uint64_t *addrs, size_t n, uintptr_t owner, uintptr_t text_start,
                          size_t text_len, struct pvrt_error *e)
{
    struct site_table *tb = calloc(1, sizeof(*tb));
    uintptr_t *a = malloc((n ? n : 1) * sizeof(uintptr_t));
    _Atomic uint64_t *pend = calloc(n ? n : 1, sizeof(*pend));
    if (tb == NULL || a == NULL || pend == NULL) {
        free(tb);
        free(a);
        free(pend);
        return pvrt_fail(e, ENOMEM, "malloc", NULL);
    }
    memcpy(a, addrs, n * sizeof(uintptr_t));
    qsort(a, n, sizeof(uintptr_t), cmp_uptr);
    tb->addr = a;
    tb->pending = pend;
    tb->n = n;
    tb->owner = owner;
    tb->text_start = text_start;
    tb->text_len = text_len;
    pthread_mutex_lock(&site_tables_lock);
    size_t t = atomic_load(&n_site_tables);
    if (t == MAX_SITE_TABLES) {
        pthread_mutex_unlock(&site_tables_lock);
        free(tb);
        free(a);
        free(pend);
        return pvrt_fail(e, 0, "", "too many site tables (1024 registrations)");
    }
    atomic_store_explicit(&site_tables[t], tb, memory_order_release);
    /* Partner: the acquire of n_site_tables in site_lookup. */
    atomic_store_explicit(&n_site_tables, t + 1, memory_order_release);
    pthread_mutex_unlock(&site_tables_lock);
    return (long)t;
}

/* Is `owner`'s table retired?  (Only the batch lock's holder may rely on a 0.) */
static bool owner_retired(uintptr_t owner)
{
    size_t n = atomic_load_explicit(&n_site_tables, memory_order_acquire);
    bool found = false;
    for (size_t t = 0; t < n; t++) {
        struct site_table *tb = atomic_load_explicit(&site_tables[t], memory_order_acquire);
        if (tb->owner != owner)
            continue;
        if (!atomic_load_explicit(&tb->retired, memory_order_acquire))
            return false;
        found = true;
    }
    return found;
}

/* Retire every live site table of `owner` (the steps are in the comment above struct
 * site_table) and release its code range.  Returns the number of tables retired.  Takes the
 * batch lock and nothing else (no GIL, no loader lock): callable from a destructor that runs
 * inside dlclose, on any thread.  The batch lock's holders never wait for the loader lock or
 * the GIL while holding it, so this cannot deadlock with a batch. */
int pvpatch_core_retire_owner(uintptr_t owner)
{
    int retired = 0;
    pthread_mutex_lock(&batch_lock);
    pthread_mutex_lock(&site_tables_lock);
    size_t n = atomic_load(&n_site_tables);
    for (size_t t = 0; t < n; t++) {
        struct site_table *tb = atomic_load(&site_tables[t]);
        if (owner == 0 || tb->owner != owner || atomic_load(&tb->retired))
            continue;
        if (parked) {
            /* 1. A parked batch's entries in this table are dropped, never restored. */
            struct batch *b = &the_batch;
            size_t kept = 0;
            for (size_t i = 0; i < b->n; i++)
                if (!(b->e[i].pending >= tb->pending && b->e[i].pending < tb->pending + tb->n))
                    memmove(&b->e[kept++], &b->e[i], sizeof(struct entry));
            b->n = kept;
        }
        /* 2. Partner: the acquire of `retired` in site_lookup / owner_retired. */
        atomic_store_explicit(&tb->retired, 1, memory_order_release);
        if (tb->text_len != 0)
            pvp_code_range_release(tb->text_start, tb->text_len);
        retired++;
    }
    pthread_mutex_unlock(&site_tables_lock);
    if (retired)
        atomic_fetch_add(&retire_gen, 1);
    pthread_mutex_unlock(&batch_lock);
    return retired;
}

/* The C-level unregister an extension calls (docs/extensions.md, "Lifecycle"): forget the
 * module whose descriptor is `desc`.  0 when it was registered, -1 when it was not. */
int pvpatch_core_unregister(const void *desc)
{
    return pvpatch_core_retire_owner((uintptr_t)desc) > 0 ? 0 : -1;
}

unsigned long pvrt_retire_gen(void) { return atomic_load(&retire_gen); }

size_t pvrt_retired_owners(uintptr_t *out, size_t max, unsigned long *gen)
{
    *gen = atomic_load(&retire_gen);
    size_t k = 0;
    size_t n = atomic_load_explicit(&n_site_tables, memory_order_acquire);
    for (size_t t = 0; t < n && k < max; t++) {
        struct site_table *tb = atomic_load_explicit(&site_tables[t], memory_order_acquire);
        if (tb->owner == 0 || !owner_retired(tb->owner))
            continue;
        out[k++] = tb->owner;
    }
    return k;
}

void pvrt_trap_counters(struct pvrt_trap_counters *c)
{
    c->traps = atomic_load(&ctr_traps);
    c->traps_helped = atomic_load(&ctr_traps_emulated);
    c->traps_on_patcher = atomic_load(&ctr_traps_on_patcher);
    c->stale_traps = atomic_load(&ctr_stale_traps);
    c->slot_traps = atomic_load(&ctr_slot_traps);
    c->batches = atomic_load(&ctr_batches);
    c->sites_patched = atomic_load(&ctr_sites);
    c->atomic_flips = atomic_load(&ctr_flips);
    c->sync_failures = atomic_load(&ctr_sync_failures);
    c->masks_stripped = ctr_masks_stripped;
    c->slots = n_slots;
}

/* Index of the first site whose bytes are not its part of flat (16 bytes per site, as
 * apply_batch's old/new), or -1 when every site matches.  What a group's recorded variant is
 * checked against.  With an owner: -2, and nothing read, when that module was unregistered (its
 * memory may be gone); the check and the reads are under the batch lock, so a retire_owner
 * cannot come between them.  The batch lock's holders never wait for the GIL: taking it with
 * the GIL held is safe, and cheap when no batch runs. */
long pvrt_sites_match(const uint64_t *addrs, const uint8_t *lens, const uint8_t *flat, size_t n,
                      uintptr_t owner)
{
    long bad = -1;
    if (owner != 0)
        pthread_mutex_lock(&batch_lock);
    if (owner != 0 && owner_retired(owner))
        bad = -2;
    else
        for (size_t i = 0; i < n; i++)
            if (lens[i] > 16 || memcmp((const void *)(uintptr_t)addrs[i], flat + 16 * i, lens[i]) != 0) {
                bad = (long)i;
                break;
            }
    if (owner != 0)
        pthread_mutex_unlock(&batch_lock);
    return bad;
}
