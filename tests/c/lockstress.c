/*
 * lockstress.c - the lock algorithms and the switching protocol, without the patcher.
 *
 *   gcc -O2 -pthread -Isrc/pvpatch/_core tests/c/lockstress.c src/pvpatch/_core/locks.c
 *
 * Writers loop {lock; critical section that detects a second owner; unlock} on one lock while
 * the main thread switches the variant native <-> pv.  A *site* is modelled by a function
 * pointer read inside a window that a writer announces (an odd sequence number); `sync()` waits
 * until every writer has left the window it was in, which is what the patcher's final
 * membarrier guarantees for real sites: afterwards no thread executes the old bytes of a site.
 * The native unlock is inline, so its byte store happens inside the window; every other
 * rendering is a call, which a thread may still be inside long after the sync.
 *
 * Switching protocols (-s):
 *   protocol  the one in docs/locks.md (and pvpatch/locks.py): via hybrid, mode word, grace
 *   nograce   the same without waiting for the grace period (must lose wake-ups)
 *   direct    flip native <-> pv in one step (must lose wake-ups)
 *   none      no switching; -m picks the variant
 * -N ends the run once that many switches are done (-d stays the upper bound).
 * -p sets the pv spin bound: a small one makes pv waiters sleep at nearly every wait, which is
 * what a switching bug needs to show.
 *
 * Output: key=value lines.  Exit 0: success; 1: a mutual-exclusion failure, a lost wake-up or
 * a lost update; 3: a stall (no progress for -S seconds) or writers that never stopped, after
 * a state dump.  Never hangs.
 */
#define _GNU_SOURCE
#include "locks.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { IMPL_NATIVE, IMPL_PV };
enum { UNLOCK_INLINE, UNLOCK_KICK };

struct writer {
    pthread_t th;
    int id;
    uint32_t seq;    /* odd while inside a site window */
    uint64_t writes; /* written by the writer, read by main */
    uint64_t fails;
} __attribute__((aligned(64)));

static pvp_lock_t the_lock __attribute__((aligned(64)));
static struct {
    int owner;
    uint64_t counter;
} cs __attribute__((aligned(64)));

static int lock_impl = IMPL_NATIVE, unlock_impl = UNLOCK_INLINE; /* the "sites" */
static int stop;
static uint64_t hold_ns;
static struct writer *writers;
static int nwriters = 8;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Enter a site window: seq_cst so that sync()'s "store pointer; read seq" and our "write seq;
 * read pointer" cannot both miss each other (membarrier provides this for real sites). */
static inline void site_enter(struct writer *w)
{
    __atomic_store_n(&w->seq, w->seq + 1, __ATOMIC_SEQ_CST);
}
static inline void site_exit(struct writer *w)
{
    __atomic_store_n(&w->seq, w->seq + 1, __ATOMIC_RELEASE);
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        /* lock site: a call rendering (the thread may stay inside the function) */
        site_enter(w);
        int li = __atomic_load_n(&lock_impl, __ATOMIC_SEQ_CST);
        site_exit(w);
        if (li == IMPL_PV)
            pvp_pv_lock(&the_lock);
        else
            pvp_native_lock(&the_lock);

        /* critical section: a second owner shows as a wrong owner or a lost update */
        if (__atomic_load_n(&cs.owner, __ATOMIC_RELAXED) != 0)
            w->fails++;
        __atomic_store_n(&cs.owner, w->id + 1, __ATOMIC_RELAXED);
        uint64_t c = __atomic_load_n(&cs.counter, __ATOMIC_RELAXED);
        if (hold_ns) {
            uint64_t end = now_ns() + hold_ns;
            while (now_ns() < end)
                ;
        }
        __atomic_store_n(&cs.counter, c + 1, __ATOMIC_RELAXED);
        if (__atomic_load_n(&cs.owner, __ATOMIC_RELAXED) != w->id + 1)
            w->fails++;
        __atomic_store_n(&cs.owner, 0, __ATOMIC_RELAXED);

        /* unlock site: inline byte store (inside the window) or a call */
        site_enter(w);
        int ui = __atomic_load_n(&unlock_impl, __ATOMIC_SEQ_CST);
        if (ui == UNLOCK_INLINE) {
            pvp_native_unlock(&the_lock);
            site_exit(w);
        } else {
            site_exit(w);
            pvp_kick_unlock(&the_lock);
        }
        __atomic_store_n(&w->writes, w->writes + 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

/* Every writer leaves the site window it is in now (bounded by -S via the caller's clock). */
static int sync_sites(uint64_t deadline)
{
    for (int i = 0; i < nwriters; i++) {
        uint32_t s = __atomic_load_n(&writers[i].seq, __ATOMIC_SEQ_CST);
        if (!(s & 1))
            continue;
        while (__atomic_load_n(&writers[i].seq, __ATOMIC_ACQUIRE) == s) {
            if (now_ns() > deadline)
                return -1;
            sched_yield();
        }
    }
    return 0;
}

static void set_sites(int li, int ui)
{
    __atomic_store_n(&lock_impl, li, __ATOMIC_SEQ_CST);
    __atomic_store_n(&unlock_impl, ui, __ATOMIC_SEQ_CST);
}

static uint64_t grace_ns = 1000000000ull, stall_ns = 10000000000ull;
static long incomplete;

/* The transition of docs/locks.md: the library's own pvlock_transition (the one Python and
 * the preload library run), with the modelled sites as its apply and check. */
struct apply_arg {
    uint64_t deadline;
    int stalled;
};

static int apply_sites(const char *variant, void *arg, struct pvrt_error *e)
{
    struct apply_arg *a = arg;
    if (!strcmp(variant, "native"))
        set_sites(IMPL_NATIVE, UNLOCK_INLINE);
    else if (!strcmp(variant, "pv"))
        set_sites(IMPL_PV, UNLOCK_KICK);
    else
        set_sites(IMPL_NATIVE, UNLOCK_KICK); /* hybrid */
    if (sync_sites(a->deadline) == 0)
        return 0;
    a->stalled = 1;
    snprintf(e->msg, sizeof(e->msg), "sync stalled");
    return -1;
}

static int check_sites(void *arg, struct pvrt_error *e)
{
    return __atomic_load_n(&unlock_impl, __ATOMIC_SEQ_CST) == UNLOCK_KICK;
}

/* Returns -1 if a sync stalled. */
static int switch_protocol(int to_pv, uint64_t deadline)
{
    struct apply_arg a = {deadline, 0};
    struct pvrt_error e = {0, "", ""};
    int r = pvlock_transition_checked(to_pv ? "native" : "pv", to_pv ? "pv" : "native",
                                      apply_sites, &a, check_sites, NULL, grace_ns / 1e9, &e);
    if (r == PVLOCK_INCOMPLETE) {
        incomplete++; /* left at hybrid: correct with anything still in flight */
        return 0;
    }
    if (r != 0 && !a.stalled) {
        fprintf(stderr, "lockstress: transition: %s\n", e.msg);
        exit(2);
    }
    return r == 0 ? 0 : -1;
}

static int switch_broken(int to_pv, int nograce, uint64_t deadline)
{
    if (nograce) {
        set_sites(IMPL_NATIVE, UNLOCK_KICK);
        if (sync_sites(deadline))
            return -1;
        pvp_lock_set_mode(to_pv ? PVP_MODE_PV : PVP_MODE_HYBRID);
        set_sites(to_pv ? IMPL_PV : IMPL_NATIVE, to_pv ? UNLOCK_KICK : UNLOCK_INLINE);
    } else {
        pvp_lock_set_mode(to_pv ? PVP_MODE_PV : PVP_MODE_NATIVE);
        set_sites(to_pv ? IMPL_PV : IMPL_NATIVE, to_pv ? UNLOCK_KICK : UNLOCK_INLINE);
    }
    return sync_sites(deadline);
}

static void dump(const char *why)
{
    uint32_t v = __atomic_load_n(&the_lock.val, __ATOMIC_RELAXED);
    printf("dump=%s\n", why);
    printf("lock_word=0x%08x locked=%u pending=%u tail_tid=%d tail_idx=%u\n", v, v & 0xff,
           (v >> 8) & 0xff, (int)(v >> 18) - 1, (v >> 16) & 3);
    printf("mode=%u pv_inflight=%ld lock_impl=%d unlock_impl=%d\n", pvp_lock_mode(),
           pvp_lock_pv_inflight(), lock_impl, unlock_impl);
    struct pvp_thread_state st[64];
    int n = pvp_lock_thread_states(st, 64, 0);
    for (int i = 0; i < n; i++)
        printf("thread tid=%u depth=%u pv_active=%u where=%s lock=%#lx node_wait=%u\n", st[i].tid,
               st[i].depth, st[i].pv_active, pvp_thread_where_names[st[i].where],
               (unsigned long)st[i].lock, st[i].node_wait);
    for (int i = 0; i < nwriters; i++)
        printf("writer=%d writes=%" PRIu64 " seq=%u\n", i,
               __atomic_load_n(&writers[i].writes, __ATOMIC_RELAXED), writers[i].seq);
    fflush(stdout);
}

static uint64_t total_writes(void)
{
    uint64_t t = 0;
    for (int i = 0; i < nwriters; i++)
        t += __atomic_load_n(&writers[i].writes, __ATOMIC_RELAXED);
    return t;
}

int main(int argc, char **argv)
{
    double duration = 3.0;
    long toggle_us = 1000, native_us = -1; /* -n: native phases this long (default -t) */
    long want_switches = 0;                /* -N: stop once this many switches are done */
    const char *sw = "protocol", *fixed = "native";
    int opt;
    while ((opt = getopt(argc, argv, "w:d:t:n:N:H:s:m:r:g:S:p:")) != -1) {
        switch (opt) {
        case 'w': nwriters = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 't': toggle_us = atol(optarg); break;
        case 'n': native_us = atol(optarg); break;
        case 'N': want_switches = atol(optarg); break;
        case 'H': hold_ns = strtoull(optarg, NULL, 10); break;
        case 's': sw = optarg; break;
        case 'm': fixed = optarg; break;
        case 'r': pvp_lock_set_rescue_ns(strtoull(optarg, NULL, 10) * 1000000ull); break;
        case 'g': grace_ns = strtoull(optarg, NULL, 10) * 1000000ull; break;
        case 'S': stall_ns = (uint64_t)(atof(optarg) * 1e9); break;
        case 'p': pvp_lock_set_pv_spin((uint32_t)atoi(optarg)); break;
        default:
            fprintf(stderr, "usage: %s [-w writers] [-d s] [-t toggle_us] [-n native_us] [-N switches] [-H hold_ns] "
                            "[-s protocol|nograce|direct|none] [-m native|pv] [-r rescue_ms] "
                            "[-g grace_ms] [-S stall_s] [-p pv_spin]\n", argv[0]);
            return 2;
        }
    }
    int mode_switch = !strcmp(sw, "protocol") ? 0 : !strcmp(sw, "nograce") ? 1
                    : !strcmp(sw, "direct") ? 2 : !strcmp(sw, "none") ? 3 : -1;
    if (mode_switch < 0 || nwriters < 1 || (strcmp(fixed, "native") && strcmp(fixed, "pv"))) {
        fprintf(stderr, "lockstress: bad -s, -m or -w\n");
        return 2;
    }
    int is_pv = !strcmp(fixed, "pv");
    if (is_pv) {
        pvp_lock_set_mode(PVP_MODE_PV);
        set_sites(IMPL_PV, UNLOCK_KICK);
    }

    writers = aligned_alloc(64, sizeof(*writers) * (size_t)nwriters);
    memset(writers, 0, sizeof(*writers) * (size_t)nwriters);
    for (int i = 0; i < nwriters; i++) {
        writers[i].id = i;
        if ((errno = pthread_create(&writers[i].th, NULL, writer_main, &writers[i])) != 0) {
            perror("pthread_create");
            return 2;
        }
    }

    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(duration * 1e9);
    uint64_t next_toggle = t0 + (uint64_t)toggle_us * 1000, last_total = 0, last_progress = t0;
    long switches = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end || (want_switches > 0 && switches >= want_switches))
            break;
        uint64_t total = total_writes();
        if (total != last_total) {
            last_total = total;
            last_progress = t;
        } else if (t - last_progress > stall_ns) {
            dump("stall");
            printf("result=STALL\n");
            fflush(stdout);
            _exit(3); /* the writers may never return: do not wait for them */
        }
        if (mode_switch != 3 && t >= next_toggle) {
            is_pv = !is_pv;
            int r = mode_switch == 0 ? switch_protocol(is_pv, t + stall_ns)
                                     : switch_broken(is_pv, mode_switch == 1, t + stall_ns);
            if (r != 0) {
                dump("sync stalled");
                printf("result=STALL\n");
                fflush(stdout);
                _exit(3);
            }
            switches++;
            next_toggle = now_ns() + (uint64_t)(is_pv || native_us < 0 ? toggle_us : native_us) * 1000;
            continue;
        }
        uint64_t sl = mode_switch != 3 && next_toggle - t < 1000000 ? next_toggle - t : 1000000;
        struct timespec ts = {0, (long)sl};
        nanosleep(&ts, NULL);
    }
    double elapsed = (now_ns() - t0) / 1e9;

    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    /* Writers asleep on a lost wake-up come back after the rescue timeout; a bound anyway. */
    uint64_t join_deadline = now_ns() + stall_ns;
    for (int i = 0; i < nwriters; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t left = join_deadline > now_ns() ? join_deadline - now_ns() : 0;
        ts.tv_sec += (time_t)(left / 1000000000ull);
        ts.tv_nsec += (long)(left % 1000000000ull);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_timedjoin_np(writers[i].th, NULL, &ts) != 0) {
            dump("writers did not stop");
            printf("result=STALL\n");
            fflush(stdout);
            _exit(3);
        }
    }

    uint64_t total = 0, fails = 0, mx = 0, mn = UINT64_MAX;
    for (int i = 0; i < nwriters; i++) {
        total += writers[i].writes;
        fails += writers[i].fails;
        mx = writers[i].writes > mx ? writers[i].writes : mx;
        mn = writers[i].writes < mn ? writers[i].writes : mn;
    }
    uint64_t st[PVP_STAT_N];
    pvp_lock_stats(st);
    printf("writers=%d duration=%.3f switch=%s\n", nwriters, elapsed, sw);
    printf("writes=%" PRIu64 " rate=%.0f max=%" PRIu64 " min=%" PRIu64 "\n", total,
           total / elapsed, mx, mn);
    printf("fails=%" PRIu64 " counter=%" PRIu64 " lost_updates=%" PRIu64 "\n", fails, cs.counter,
           total - cs.counter);
    uint64_t completed_c, incomplete_c;
    pvlock_switch_counts(&completed_c, &incomplete_c);
    printf("switches=%ld incomplete=%ld transitions_completed=%" PRIu64 "\n", switches, incomplete,
           completed_c);
    for (int s = 0; s < PVP_STAT_N; s++)
        printf("%s=%" PRIu64 "\n", pvp_lock_stat_names[s], st[s]);
    int ok = fails == 0 && cs.counter == total && st[PVP_STAT_LATE_WAKEUPS] == 0 &&
             st[PVP_STAT_FUTEX_ERRORS] == 0;
    printf("result=%s\n", ok ? "SUCCESS" : "FAILURE");
    return ok ? 0 : 1;
}
