/*
 * control.c - the library's life: read the environment, register the module, put the lock
 * group in the requested mode, keep it there (auto: the agent follows the host's hints;
 * PVPATCH_SWITCH_EVERY_MS: alternate native and pv), survive fork, report at exit.
 *
 * Environment (docs/run.md):
 *   PVPATCH_MODE=auto|native|pv        default auto
 *   PVPATCH_HINTS_PATH=P               the hint page auto follows (default: the agent's)
 *   PVPATCH_STATS=1                    print the statistics at exit, on stderr
 *   PVPATCH_STATS_JSON=F               write them to F at exit
 *   PVPATCH_SWITCH_EVERY_MS=N          alternate native and pv every N ms (1..60000), from the
 *                                      mode requested; a stress for tests
 *
 * A bad value is reported on stderr, one line naming the variable, and the library then stays
 * inert: the module is not registered, every lock runs through the sites' build-time
 * rendering, which calls pv's lock and the kicking unlock (sites.c), with the mode word at PV:
 * pv, the safe default, correct everywhere; nothing switches.

 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

#include "rt.h"
#include "agent.h"

enum { M_AUTO, M_NATIVE, M_PV };
static const char *const mode_names[] = {"auto", "native", "pv"};

static struct {
    int mode;
    const char *hints_path;
    int stats_print;
    const char *stats_json;
    long switch_every_ms;
    int registered; /* the module's sites are live */
    int inert;      /* a bad setting or a failure at load: nothing switches */
    pid_t root;     /* the process that reports at exit */
    int stats_fd;   /* stderr as it was at load: a program may close stderr before exit */
    char why[600];  /* why inert */
} cfg;

uint64_t pl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One line on stderr, with write(2): no stdio lock, usable in a constructor and a child. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[800];
    int n = snprintf(buf, sizeof(buf), "pvpatch-preload: error: ");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(buf) - 2)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    if (write(2, buf, (size_t)n) < 0)
        return;
}

static const char *pl_variant(void);
static void go_inert(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void go_inert(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cfg.why, sizeof(cfg.why), fmt, ap);
    va_end(ap);
    cfg.inert = 1;
    if (!cfg.registered) {
        /* Every site still holds its default rendering (pv's lock, the kicking unlock, through
         * the slots) and always will: PV is safe over it, and nothing else ever writes the
         * mode word in this process. */
        pvp_lock_set_mode(PVP_MODE_PV);
        say("%s; locks run pv, unswitched", cfg.why);
    } else {
        say("%s; the lock stays %s", cfg.why, pl_variant());
    }
}

/* ---- switches --------------------------------------------------------------------------- */

#define SAMPLES 65536
static struct {
    pthread_mutex_t lock; /* glibc's, called directly: serialises transitions, and fork */
    uint64_t count, failed, incomplete;
    uint64_t ns[SAMPLES]; /* the first SAMPLES latencies */
    uint64_t max_ns;
    char last_error[600];
} sw = {.lock = PTHREAD_MUTEX_INITIALIZER};

static const char *pl_variant(void)
{
    if (cfg.registered) {
        const char *v = pvrt_current("lock");
        return v ? v : "unknown";
    }
    return cfg.inert ? "pv (unregistered)" : "unregistered";
}

static int apply_variant(const char *variant, void *arg, struct pvrt_error *e)
{
    struct pvrt_switch_stats st;
    return pvrt_switch("lock", variant, &st, e);
}

/* The group to `target` by the lock protocol (pvlock_transition: through hybrid, the grace
 * period for pv -> native), starting from what the sites' bytes hold.  0, or -1 with e. */
static int do_switch(const char *target, struct pvrt_error *e)
{
    const struct pl_real *r = pl_real();
    r->mutex_lock(&sw.lock);
    const char *cur = pvrt_current("lock");
    uint64_t t0 = pl_now_ns();
    int rc = pvlock_transition(cur ? cur : "native", target, apply_variant, NULL, 2.0, e);
    uint64_t dt = pl_now_ns() - t0;
    if (rc == 0) {
        if (sw.count < SAMPLES)
            sw.ns[sw.count] = dt;
        sw.count++;
        if (dt > sw.max_ns)
            sw.max_ns = dt;
    } else {
        sw.failed++;
        snprintf(sw.last_error, sizeof(sw.last_error), "lock -> %s: %s%s%s%s", target, e->msg,
                 e->err ? " (" : "", e->err ? e->syscall : "", e->err ? ")" : "");
    }
    r->mutex_unlock(&sw.lock);
    return rc;
}

static int agent_apply(const char *group, const char *variant, void *arg, struct pvrt_error *e)
{
    return do_switch(variant, e);
}

/* ---- the stress switcher ---------------------------------------------------------------- */

static pthread_t switcher_thread __attribute__((unused));
static int switcher_running;
static int switcher_stop;

static void *switcher(void *arg)
{
    /* Signals are the program's: leave them to its threads (the synchronous ones cannot be
     * blocked usefully, and SIGTRAP is the patcher's). */
    pvrt_block_async_signals(NULL);
    int pv = cfg.mode == M_PV;
    struct timespec d = {cfg.switch_every_ms / 1000, (cfg.switch_every_ms % 1000) * 1000000L};
    while (!__atomic_load_n(&switcher_stop, __ATOMIC_RELAXED)) {
        nanosleep(&d, NULL);
        pv = !pv;
        struct pvrt_error e = {0};
        if (do_switch(pv ? "pv" : "native", &e) != 0 && e.err != 0) {
            /* A failed system call will fail again: stop switching, say so once.  A grace
             * period that timed out (err 0) left the group at hybrid: the next switch
             * retries. */
            say("PVPATCH_SWITCH_EVERY_MS: %s; switching stopped", sw.last_error);
            break;
        }
    }
    return NULL;
}

static void start_switcher(void)
{
    __atomic_store_n(&switcher_stop, 0, __ATOMIC_RELAXED);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 256 * 1024);
    int r = pthread_create(&switcher_thread, &a, switcher, NULL);
    pthread_attr_destroy(&a);
    if (r != 0)
        say("PVPATCH_SWITCH_EVERY_MS: pthread_create failed: %s", strerror(r));
    else
        switcher_running = 1;
}

/* ---- the agent (auto) ------------------------------------------------------------------- */

static int start_agent(void)
{
    struct pvagent_config c = {
        .hints_path = cfg.hints_path,
        /* pvpatch.auto()'s defaults (hints/guest.py) */
        .min_dwell_s = 1.0,
        .native_settle_s = 0.0,
        .poll_s = 0.5,
        .group = "lock",
        .fast = "native",
        .safe = "pv",
        .apply = agent_apply,
        .apply_arg = NULL,
        .local_judge = pvlock_local_judge,
        .judge_arg = NULL,
    };
    struct pvrt_error e = {0};
    if (pvagent_start(&c, &e) != 0) {
        say("PVPATCH_MODE=auto: the agent did not start: %s%s%s%s", e.msg, e.err ? " (" : "",
            e.err ? e.syscall : "", e.err ? ")" : "");
        return -1;
    }
    return 0;
}

/* ---- fork ------------------------------------------------------------------------------- */

/* No transition is half done across fork: the child starts from a group whose mode word and
 * sites agree (the patcher's own fork handlers cover its batch). */
static int agent_running;

static void fork_prepare(void) { pl_real()->mutex_lock(&sw.lock); }
static void fork_parent(void) { pl_real()->mutex_unlock(&sw.lock); }
static void fork_child(void)
{
    /* The child has only the forking thread: glibc's mutex, taken in prepare by this very
     * thread, is reinitialised rather than unlocked; the switcher is restarted. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    sw.lock = fresh;
    if (switcher_running) {
        switcher_running = 0;
        start_switcher();
    }
    /* The parent's agent thread is not in the child: forget it, start the child's own. */
    pvagent_atfork_child();
    if (agent_running && start_agent() != 0)
        agent_running = 0;
}

/* ---- statistics at exit ----------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

struct summary {
    struct pvlock_stats ls;
    uint64_t st[PVP_STAT_N];
    uint64_t switches, failed, n_samples, p50, p99, max;
};

static void summarise(struct summary *s)
{
    memset(s, 0, sizeof(*s));
    pvp_lock_stats(s->st);
    pvlock_stats_read(&s->ls);
    pl_real()->mutex_lock(&sw.lock);
    s->switches = sw.count;
    s->failed = sw.failed;
    s->max = sw.max_ns;
    uint64_t n = sw.count < SAMPLES ? sw.count : SAMPLES;
    s->n_samples = n;
    if (n > 0) {
        uint64_t *c = malloc(n * sizeof(*c));
        if (c != NULL) {
            memcpy(c, sw.ns, n * sizeof(*c));
            qsort(c, n, sizeof(*c), cmp_u64);
            s->p50 = c[n / 2];
            s->p99 = c[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
            free(c);
        }
    }
    pl_real()->mutex_unlock(&sw.lock);
}

static void write_json(const struct summary *s)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", cfg.stats_json, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        say("PVPATCH_STATS_JSON=%s: cannot write %s: %s", cfg.stats_json, tmp, strerror(errno));
        return;
    }
    fprintf(f, "{\n  \"pid\": %d,\n  \"program\": \"", (int)getpid());
    for (const char *p = program_invocation_short_name; *p; p++)
        fprintf(f, (*p == '"' || *p == '\\') ? "\\%c" : ((unsigned char)*p < 0x20 ? "?" : "%c"),
                *p);
    fprintf(f, "\",\n  \"mode\": \"%s\",\n  \"switch_every_ms\": %ld,\n", mode_names[cfg.mode],
            cfg.switch_every_ms);
    fprintf(f, "  \"registered\": %s,\n  \"variant\": \"%s\",\n",
            cfg.registered ? "true" : "false", pl_variant());
    fprintf(f, "  \"lock_mode\": %u,\n", pvp_lock_mode());
    fprintf(f, "  \"acquisitions\": %llu,\n  \"contended\": %llu,\n  \"sleeps\": %llu,\n"
               "  \"wakes\": %llu,\n  \"handovers\": %llu,\n  \"handover_ns\": %llu,\n",
            (unsigned long long)s->ls.acquisitions, (unsigned long long)s->ls.contended,
            (unsigned long long)s->ls.sleeps, (unsigned long long)s->ls.wakes,
            (unsigned long long)s->ls.handovers, (unsigned long long)s->ls.handover_ns);
    fprintf(f, "  \"lock_stats\": {");
    for (int i = 0; i < PVP_STAT_N; i++)
        fprintf(f, "%s\"%s\": %llu", i ? ", " : "", pvp_lock_stat_names[i],
                (unsigned long long)s->st[i]);
    fprintf(f, "},\n  \"switches\": {\"completed\": %llu, \"failed\": %llu, \"samples\": %llu, "
               "\"latency_ns\": {\"p50\": %llu, \"p99\": %llu, \"max\": %llu}",
            (unsigned long long)s->switches, (unsigned long long)s->failed,
            (unsigned long long)s->n_samples, (unsigned long long)s->p50,
            (unsigned long long)s->p99, (unsigned long long)s->max);
    struct pvagent_switch as[256];
    size_t na = pvagent_switches(as, 256);
    fprintf(f, ",\n    \"agent\": [");
    for (size_t i = 0; i < na; i++)
        fprintf(f, "%s{\"from\": \"%s\", \"to\": \"%s\", \"ok\": %s, \"t_publish\": %.6f, "
                   "\"t_done\": %.6f}",
                i ? ", " : "", as[i].from, as[i].to, as[i].ok ? "true" : "false",
                as[i].t_publish, as[i].t_done);
    fprintf(f, "]");
    fprintf(f, "},\n  \"inert\": %s,\n  \"why_inert\": \"", cfg.inert ? "true" : "false");
    for (const char *p = cfg.why; *p; p++)
        fprintf(f, (*p == '"' || *p == '\\') ? "\\%c" : ((unsigned char)*p < 0x20 ? "?" : "%c"),
                *p);
    fprintf(f, "\"\n}\n");
    if (fclose(f) != 0 || rename(tmp, cfg.stats_json) != 0) {
        say("PVPATCH_STATS_JSON=%s: cannot write it: %s", cfg.stats_json, strerror(errno));
        unlink(tmp);
    }
}

static void at_exit(void)
{
    __atomic_store_n(&switcher_stop, 1, __ATOMIC_RELAXED);
    if (getpid() != cfg.root || (!cfg.stats_print && cfg.stats_json == NULL))
        return;
    struct summary s;
    summarise(&s);
    if (cfg.stats_print) {
        int fd = cfg.stats_fd > 0 ? cfg.stats_fd : 2;
        double pct = s.ls.acquisitions
                         ? 100.0 * (double)s.ls.contended / (double)s.ls.acquisitions : 0;
        dprintf(fd,
                "pvpatch: %s (pid %d): %llu acquisitions, %llu contended (%.2f%%), %llu sleeps, "
                "%llu wake-ups; lock %s (mode %s)\n",
                program_invocation_short_name, (int)getpid(),
                (unsigned long long)s.ls.acquisitions, (unsigned long long)s.ls.contended, pct,
                (unsigned long long)s.ls.sleeps, (unsigned long long)s.ls.wakes, pl_variant(),
                mode_names[cfg.mode]);
        dprintf(fd,
                "pvpatch: %llu switches (%llu failed), latency p50 %.3f ms, p99 %.3f ms, "
                "max %.3f ms\n",
                (unsigned long long)s.switches, (unsigned long long)s.failed, s.p50 / 1e6,
                s.p99 / 1e6, s.max / 1e6);
        if (sw.last_error[0])
            dprintf(fd, "pvpatch: last failed switch: %s\n", sw.last_error);
        if (cfg.inert)
            dprintf(fd, "pvpatch: nothing was switched: %s\n", cfg.why);
    }
    if (cfg.stats_json != NULL)
        write_json(&s);
}

/* ---- load ------------------------------------------------------------------------------- */

static int parse_env(void)
{
    /* The statistics first: a bad setting below is reported in them too. */
    const char *st = getenv("PVPATCH_STATS");
    cfg.stats_print = st != NULL && *st != '\0' && strcmp(st, "0") != 0;
    if (cfg.stats_print) /* xz, for one, closes stderr before its atexit handlers run */
        cfg.stats_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
    cfg.stats_json = getenv("PVPATCH_STATS_JSON");
    if (cfg.stats_json != NULL && *cfg.stats_json == '\0')
        cfg.stats_json = NULL;
    const char *m = getenv("PVPATCH_MODE");
    if (m == NULL || *m == '\0' || strcmp(m, "auto") == 0)
        cfg.mode = M_AUTO;
    else if (strcmp(m, "native") == 0)
        cfg.mode = M_NATIVE;
    else if (strcmp(m, "pv") == 0)
        cfg.mode = M_PV;
    else {
        go_inert("PVPATCH_MODE=%.64s: not one of auto, native, pv", m);
        return -1;
    }
    cfg.hints_path = getenv("PVPATCH_HINTS_PATH");
    if (cfg.hints_path != NULL && *cfg.hints_path == '\0')
        cfg.hints_path = NULL;
    const char *ms = getenv("PVPATCH_SWITCH_EVERY_MS");
    if (ms != NULL && *ms != '\0') {
        char *end;
        errno = 0;
        long v = strtol(ms, &end, 10);
        if (errno || *end != '\0' || v < 1 || v > 60000) {
            go_inert("PVPATCH_SWITCH_EVERY_MS=%.64s: not an integer in [1, 60000]", ms);
            return -1;
        }
        cfg.switch_every_ms = v;
    }
    return 0;
}

/* The process that reports at exit: the first one that loaded the library with this
 * environment.  Children it forks or execs (a shell's commands, a build's compilers) get the
 * library too, and their locks switch, but only the first process writes the statistics. */
static void pick_root(void)
{
    const char *r = getenv("PVPATCH_STATS_ROOT");
    char *end;
    long v = r ? strtol(r, &end, 10) : 0;
    if (r != NULL && *r != '\0' && *end == '\0' && v > 0) {
        cfg.root = (pid_t)v;
        return;
    }
    cfg.root = getpid();
    char buf[24];
    snprintf(buf, sizeof(buf), "%d", (int)cfg.root);
    setenv("PVPATCH_STATS_ROOT", buf, 1);
}

__attribute__((constructor)) static void pl_load(void)
{
    pl_real();
    pick_root();
    atexit(at_exit);
    if (parse_env() != 0)
        return;
    struct pvrt_error e = {0};
    if (pvrt_init(&e) != 0 || pvrt_register(&pvpatch_module, &e) != 0) {
        go_inert("registering the lock sites failed: %s%s%s%s", e.msg, e.err ? " (" : "",
                 e.err ? e.syscall : "", e.err ? ")" : "");
        return;
    }
    cfg.registered = 1;
    /* After pvrt_init, whose fork handlers take the runtime's batch lock: prepare handlers run
     * in the reverse order of registration, so ours (the transition lock) is taken first, in
     * the same order as a transition takes them (transition lock, then a batch). */
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (cfg.mode != M_AUTO) {
        if (do_switch(mode_names[cfg.mode], &e) != 0) {
            go_inert("PVPATCH_MODE=%s: %s", mode_names[cfg.mode], sw.last_error);
            return;
        }
    }
    if (cfg.switch_every_ms > 0)
        start_switcher();
    else if (cfg.mode == M_AUTO && (agent_running = start_agent() == 0) == 0) {
        cfg.inert = 1;
    }
}
