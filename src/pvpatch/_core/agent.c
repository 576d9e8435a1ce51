/*
 * agent.c - the guest agent: hint page reader, policy, worker thread (see agent.h).
 *
 * Plain C, no Python: pvpatch._core (through agent_py.c) and programs without Python run this
 * same code.  docs/hints.md is the specification of every rule here; the messages are the ones
 * pvpatch has always given (tests match on them).
 */
#define _GNU_SOURCE
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(offsetof(struct pvagent_page, seqcount) == PVAGENT_OFF_SEQCOUNT, "seqcount");
_Static_assert(offsetof(struct pvagent_page, generation) == PVAGENT_OFF_GENERATION, "generation");
_Static_assert(offsetof(struct pvagent_page, features) == 24, "features");
_Static_assert(offsetof(struct pvagent_page, sources) == 88, "sources");
_Static_assert(offsetof(struct pvagent_page, hv_signature) == 132, "hv_signature");
_Static_assert(sizeof(struct pvagent_page) == PVAGENT_SIZE_V1, "page size");

static void fmt(char *buf, size_t n, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t n, const char *f, ...)
{
    if (n == 0)
        return;
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, n, f, ap);
    va_end(ap);
}

static void set_error(struct pvrt_error *e, int err, const char *syscall, const char *f, ...)
    __attribute__((format(printf, 4, 5)));
static void set_error(struct pvrt_error *e, int err, const char *syscall, const char *f, ...)
{
    if (e == NULL)
        return;
    e->err = err;
    fmt(e->syscall, sizeof(e->syscall), "%s", syscall ? syscall : "");
    va_list ap;
    va_start(ap, f);
    vsnprintf(e->msg, sizeof(e->msg), f, ap);
    va_end(ap);
}

uint64_t pvagent_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double now_s(void)
{
    return pvagent_now_ns() / 1e9;
}

/* ==== the page ============================================================================ */

static int bad(char *field, size_t fn, const char *name, char *problem, size_t pn,
               const char *f, ...) __attribute__((format(printf, 6, 7)));
static int bad(char *field, size_t fn, const char *name, char *problem, size_t pn,
               const char *f, ...)
{
    fmt(field, fn, "%s", name);
    if (pn) {
        va_list ap;
        va_start(ap, f);
        vsnprintf(problem, pn, f, ap);
        va_end(ap);
    }
    return -1;
}

int pvagent_page_validate(const struct pvagent_page *p, long long file_size, uint64_t now_ns,
                          char *field, size_t fn, char *problem, size_t pn)
{
    /* The order is abi.validate's: the first field at fault is the one named. */
    if (p->magic != PVAGENT_MAGIC)
        return bad(field, fn, "magic", problem, pn, "0x%08x, expected 0x%08x ('PVHT')",
                   p->magic, PVAGENT_MAGIC);
    if (p->version != PVAGENT_VERSION)
        return bad(field, fn, "version", problem, pn, "%u, this reader speaks %d", p->version,
                   PVAGENT_VERSION);
    if (p->size < PVAGENT_SIZE_V1)
        return bad(field, fn, "size", problem, pn, "%u is below the version-1 size %d", p->size,
                   PVAGENT_SIZE_V1);
    if (file_size >= 0 && (long long)p->size > file_size)
        return bad(field, fn, "size", problem, pn, "%u is beyond the end of the file (%lld)",
                   p->size, file_size);
    if (p->seqcount & 1)
        return bad(field, fn, "seqcount", problem, pn, "%u is odd: a write is in progress",
                   p->seqcount);
    if (p->state != PVAGENT_STATE_RUNNING && p->state != PVAGENT_STATE_STOPPED)
        return bad(field, fn, "state", problem, pn, "%u is not one of [1, 2]", p->state);
    if (p->publisher_pid == 0)
        return bad(field, fn, "publisher_pid", problem, pn, "0");
    if (p->active_hints & ~p->ever_hints)
        return bad(field, fn, "active_hints", problem, pn,
                   "0x%llx has bits missing from ever_hints 0x%llx",
                   (unsigned long long)p->active_hints, (unsigned long long)p->ever_hints);
    if (p->interval_ns < PVAGENT_MIN_INTERVAL_NS || p->interval_ns > PVAGENT_MAX_INTERVAL_NS)
        return bad(field, fn, "interval_ns", problem, pn, "%llu outside [%llu, %llu]",
                   (unsigned long long)p->interval_ns, PVAGENT_MIN_INTERVAL_NS,
                   PVAGENT_MAX_INTERVAL_NS);
    const struct {
        const char *name;
        uint64_t v;
    } times[] = {{"heartbeat_ns", p->heartbeat_ns},
                 {"changed_ns", p->changed_ns},
                 {"started_ns", p->started_ns}};
    for (size_t i = 0; i < 3; i++)
        if (times[i].v > now_ns + PVAGENT_FUTURE_SLACK_NS)
            return bad(field, fn, times[i].name, problem, pn,
                       "%llu is in the future (CLOCK_MONOTONIC now %llu)",
                       (unsigned long long)times[i].v, (unsigned long long)now_ns);
    if (!(p->started_ns <= p->changed_ns && p->changed_ns <= p->heartbeat_ns))
        return bad(field, fn, "changed_ns", problem, pn,
                   "want started_ns %llu <= changed_ns %llu <= heartbeat_ns %llu",
                   (unsigned long long)p->started_ns, (unsigned long long)p->changed_ns,
                   (unsigned long long)p->heartbeat_ns);
    if (p->reason > PVAGENT_REASON_MAX)
        return bad(field, fn, "reason", problem, pn, "%u is not one of [0, 1, 2, 3, 4, 5, 6, 7]",
                   p->reason);
    if (p->online_cpus == 0)
        return bad(field, fn, "online_cpus", problem, pn, "0");
    const struct {
        const char *name;
        uint32_t v;
    } pcts[] = {{"steal", p->steal},
                {"psi_some_avg10", p->psi_some_avg10},
                {"cg_throttled", p->cg_throttled}};
    for (size_t i = 0; i < 3; i++)
        if (pcts[i].v != PVAGENT_UNKNOWN && pcts[i].v > 10000)
            return bad(field, fn, pcts[i].name, problem, pn, "%u is above 100%% (10000)",
                       pcts[i].v);
    if (p->state == PVAGENT_STATE_STOPPED && p->active_hints)
        return bad(field, fn, "active_hints", problem, pn, "a stopped publisher gives no hints");
    return 0;
}

uint64_t pvagent_page_stale_bound_ns(const struct pvagent_page *p)
{
    uint64_t b = PVAGENT_STALE_INTERVALS * p->interval_ns;
    return b > PVAGENT_STALE_MIN_NS ? b : PVAGENT_STALE_MIN_NS;
}

int pvagent_page_is_stale(const struct pvagent_page *p, uint64_t now_ns)
{
    /* Signed age: a heartbeat slightly ahead of now (allowed by validation) is fresh. */
    return p->state != PVAGENT_STATE_RUNNING ||
           (int64_t)(now_ns - p->heartbeat_ns) > (int64_t)pvagent_page_stale_bound_ns(p);
}

static const char *who(uint32_t uid, char *buf, size_t n)
{
    if (uid == 0)
        return "root";
    fmt(buf, n, "uid %u", uid);
    return buf;
}

int pvagent_trust_problem(const struct stat *st, const uint32_t *trusted, size_t n, char *why,
                          size_t wn)
{
    if (!S_ISREG(st->st_mode)) {
        fmt(why, wn, "not a regular file");
        return -1;
    }
    int ok = 0;
    for (size_t i = 0; i < n; i++)
        ok |= trusted[i] == (uint32_t)st->st_uid;
    if (!ok) {
        /* "untrusted: owned by uid 65534, not by root or uid 1000", the uids in order */
        uint32_t s[8];
        size_t k = n < 8 ? n : 8;
        memcpy(s, trusted, k * sizeof(*s));
        for (size_t i = 1; i < k; i++)
            for (size_t j = i; j > 0 && s[j - 1] > s[j]; j--) {
                uint32_t t = s[j];
                s[j] = s[j - 1];
                s[j - 1] = t;
            }
        char b[32];
        size_t off = 0;
        fmt(why, wn, "untrusted: owned by %s, not by ", who(st->st_uid, b, sizeof(b)));
        off = strlen(why);
        for (size_t i = 0; i < k && off < wn; i++) {
            if (i > 0 && s[i] == s[i - 1])
                continue;
            fmt(why + off, wn - off, "%s%s", i ? " or " : "", who(s[i], b, sizeof(b)));
            off = strlen(why);
        }
        return -1;
    }
    if (st->st_mode & 022) {
        fmt(why, wn,
            "untrusted: writable by group or others (mode 0o%o), so anyone could have written it",
            (unsigned)(st->st_mode & 07777));
        return -1;
    }
    if (wn)
        why[0] = 0;
    return 0;
}

static ssize_t pread_full(int fd, void *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, off + got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int pvagent_snapshot(int fd, void *buf, size_t length, char *field, size_t fn, char *problem,
                     size_t pn)
{
    /* Not a page at all (garbage, zeros, another file): say so rather than wait for its
     * "seqcount" to turn even.  The magic is written once and never changes. */
    uint32_t magic = 0, s1, s2;
    ssize_t r = pread_full(fd, &magic, 4, 0);
    if (r < 0)
        return -2;
    if (r < 4)
        return bad(field, fn, "size", problem, pn, "file holds %zd bytes (truncated)", r);
    if (magic != PVAGENT_MAGIC)
        return bad(field, fn, "magic", problem, pn, "0x%08x, expected 0x%08x ('PVHT')", magic,
                   PVAGENT_MAGIC);
    /* Bounded by time, not by tries: a publisher preempted mid-write holds the seqcount odd
     * for a whole time slice, longer than any number of quick retries takes. */
    uint64_t give_up = pvagent_now_ns() + PVAGENT_SNAPSHOT_WAIT_NS;
    struct timespec nap = {0, 10000}; /* 10 us, doubling to 1 ms */
    int tries;
    for (tries = 1;; tries++) {
        /* R1. s1; odd: a write is in progress.  Each pread is a system call into the page
         * cache the publisher's pwrites go to, so R1 -> R2 -> R3 stay in order (x86-64 TSO;
         * partner: the publisher's steps 1 and 4, shm.publish). */
        r = pread_full(fd, &s1, 4, PVAGENT_OFF_SEQCOUNT);
        if (r < 0)
            return -2;
        if (r < 4)
            return bad(field, fn, "size", problem, pn,
                       "file ends before the seqcount (truncated)");
        if (!(s1 & 1)) {
            /* R2. the copy */
            r = pread_full(fd, buf, length, 0);
            if (r < 0)
                return -2;
            if ((size_t)r < length)
                return bad(field, fn, "size", problem, pn,
                           "file holds %zd bytes, the page needs %zu (truncated)", r, length);
            /* R3. s2 != s1: the copy may be torn */
            if (pread_full(fd, &s2, 4, PVAGENT_OFF_SEQCOUNT) < 0)
                return -2;
            if (s1 == s2)
                return tries;
        }
        if (tries < 10)
            continue;
        if (pvagent_now_ns() >= give_up)
            break;
        /* The writer may be preempted mid-write: let it run, on this CPU or another. */
        if (tries < 20) {
            sched_yield();
        } else {
            nanosleep(&nap, NULL);
            if (nap.tv_nsec < 1000000)
                nap.tv_nsec *= 2;
        }
    }
    return bad(field, fn, "seqcount", problem, pn,
               "no consistent snapshot in %d tries over %llu ms (a publisher died mid-write, or "
               "the page is forged)",
               tries, (unsigned long long)(PVAGENT_SNAPSHOT_WAIT_NS / 1000000));
}

/* ==== the reader ========================================================================== */

const char *pvagent_status_name(enum pvagent_status s)
{
    static const char *const names[] = {"usable", "missing", "untrusted",
                                        "invalid", "stale", "stopped"};
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

int pvagent_reader_init(struct pvagent_reader *r, const char *path, long long publisher_uid,
                        struct pvrt_error *e)
{
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    if (path == NULL || !*path)
        path = PVAGENT_DEFAULT_PATH;
    if (strlen(path) >= sizeof(r->path)) {
        set_error(e, 0, "", "hints path: %zu bytes, longer than PATH_MAX", strlen(path));
        return -1;
    }
    strcpy(r->path, path);
    r->trusted[r->ntrusted++] = 0;
    r->trusted[r->ntrusted++] = (uint32_t)geteuid();
    if (publisher_uid >= 0)
        r->trusted[r->ntrusted++] = (uint32_t)publisher_uid;
    return 0;
}

void pvagent_reader_close(struct pvagent_reader *r)
{
    if (r->map != NULL) {
        munmap(r->map, PVAGENT_FILE_SIZE);
        r->map = NULL;
    }
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
}

static enum pvagent_status reader_open(struct pvagent_reader *r, char *problem, size_t pn)
{
    int fd = open(r->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) {
            fmt(problem, pn, "missing (no publisher has created it)");
            return PVAGENT_MISSING;
        }
        if (errno == ELOOP) {
            fmt(problem, pn, "untrusted: the path is a symbolic link");
            return PVAGENT_UNTRUSTED;
        }
        fmt(problem, pn, "cannot open: %s (errno %d)", strerror(errno), errno);
        return PVAGENT_INVALID;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fmt(problem, pn, "cannot open: %s (errno %d)", strerror(errno), errno);
        close(fd);
        return PVAGENT_INVALID;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        fmt(problem, pn, "not a regular file");
        return PVAGENT_INVALID;
    }
    /* The mapping serves the futex only: nobody loads through it (SIGBUS if the file shrinks);
     * PROT_READ on an O_RDONLY file: the guest cannot write the page. */
    void *m = mmap(NULL, PVAGENT_FILE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        fmt(problem, pn, "cannot map: [Errno %d] %s: 'mmap'", errno, strerror(errno));
        close(fd);
        return PVAGENT_INVALID;
    }
    r->fd = fd;
    r->map = m;
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    return PVAGENT_USABLE;
}

/* Does the path now name a different file (or none) than the one we hold? */
static int reader_replaced(struct pvagent_reader *r)
{
    struct stat st;
    if (lstat(r->path, &st) != 0)
        return 1;
    return st.st_dev != r->dev || st.st_ino != r->ino;
}

static void decode(const unsigned char *buf, struct pvagent_page *p)
{
    memcpy(p, buf, PVAGENT_SIZE_V1); /* little-endian, naturally aligned: the layout is the struct */
}

void pvagent_reader_read(struct pvagent_reader *r, struct pvagent_obs *o, uint64_t now_ns)
{
    memset(o, 0, sizeof(*o));
    o->status = PVAGENT_INVALID;
    if (r->fd >= 0 && reader_replaced(r))
        pvagent_reader_close(r);
    if (r->fd < 0) {
        enum pvagent_status s = reader_open(r, o->problem, sizeof(o->problem));
        if (s != PVAGENT_USABLE) {
            o->status = s;
            o->seen_ns = pvagent_now_ns();
            r->was_usable = 0;
            return;
        }
    }
    struct stat st;
    unsigned char buf[PVAGENT_SIZE_V1];
    char field[32];
    if (fstat(r->fd, &st) != 0) {
        fmt(o->problem, sizeof(o->problem), "cannot read: %s", strerror(errno));
        goto invalid;
    }
    /* Trust before content: who could have written this file?  Checked on the open file at
     * every read (an owner's chmod or chown takes effect at once). */
    if (pvagent_trust_problem(&st, r->trusted, r->ntrusted, o->problem, sizeof(o->problem))) {
        o->status = strncmp(o->problem, "untrusted", 9) == 0 ? PVAGENT_UNTRUSTED
                                                              : PVAGENT_INVALID;
        o->seen_ns = pvagent_now_ns();
        r->was_usable = 0;
        return;
    }
    char problem[200];
    int t = pvagent_snapshot(r->fd, buf, sizeof(buf), field, sizeof(field), problem,
                             sizeof(problem));
    if (t == -2) {
        fmt(o->problem, sizeof(o->problem), "cannot read: %s", strerror(errno));
        goto invalid;
    }
    if (t == -1) {
        fmt(o->problem, sizeof(o->problem), "hint page: %s: %s", field, problem);
        goto invalid;
    }
    decode(buf, &o->page);
    if (now_ns == 0)
        now_ns = pvagent_now_ns();
    if (pvagent_page_validate(&o->page, (long long)st.st_size, now_ns, field, sizeof(field),
                              problem, sizeof(problem))) {
        fmt(o->problem, sizeof(o->problem), "hint page: %s: %s", field, problem);
        goto invalid;
    }
    o->valid = 1;
    o->seen_ns = pvagent_now_ns(); /* the guest holds the consistent, validated snapshot */
    const struct pvagent_page *p = &o->page;
    int stale = pvagent_page_is_stale(p, now_ns);
    if (p->state == PVAGENT_STATE_STOPPED) {
        o->status = PVAGENT_STOPPED;
        fmt(o->problem, sizeof(o->problem), "publisher (pid %u) stopped", p->publisher_pid);
    } else if (stale) {
        o->status = PVAGENT_STALE;
        fmt(o->problem, sizeof(o->problem),
            "stale: no heartbeat for %.3f s (bound %.3f s; publisher pid %u dead or stuck?)",
            (double)(int64_t)(now_ns - p->heartbeat_ns) / 1e9,
            pvagent_page_stale_bound_ns(p) / 1e9, p->publisher_pid);
    } else {
        o->status = PVAGENT_USABLE;
    }
    /* The publication a switch on this observation reacts to: the one that moved the
     * generation - unless hints were not usable before (stale, invalid, untrusted...): then the
     * page that made them usable again, this snapshot's heartbeat, not a generation change
     * from before the gap. */
    int usable = o->status == PVAGENT_USABLE;
    o->cause_ns = (r->was_usable || !usable) ? p->changed_ns : p->heartbeat_ns;
    r->was_usable = usable;
    return;
invalid:
    o->status = PVAGENT_INVALID;
    o->valid = 0;
    o->seen_ns = pvagent_now_ns();
    r->was_usable = 0;
}

long long pvagent_reader_raw_generation(struct pvagent_reader *r)
{
    uint32_t g;
    if (r->fd < 0 || pread_full(r->fd, &g, 4, PVAGENT_OFF_GENERATION) != 4)
        return -1;
    return g;
}

static long futex(void *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static struct timespec to_ts(double s)
{
    if (!(s > 0))
        s = 0;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    if (ts.tv_nsec >= 1000000000L)
        ts.tv_nsec = 999999999L;
    return ts;
}

int pvagent_reader_wait(struct pvagent_reader *r, uint32_t gen, double timeout_s)
{
    if (r->map == NULL)
        return -1;
    struct timespec ts = to_ts(timeout_s);
    /* R5.  A shared futex (no FUTEX_PRIVATE_FLAG): the waker is the publisher, another
     * process.  The kernel compares the word with gen under its futex lock, so a publication
     * since our snapshot either fails the wait at once (EAGAIN) or wakes it: nothing is lost. */
    long rc = futex((char *)r->map + PVAGENT_OFF_GENERATION, FUTEX_WAIT, gen, &ts);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    if (errno == ETIMEDOUT)
        return 1;
    if (errno == EINTR)
        return 2;
    return -2; /* EFAULT: the page was truncated under the mapping */
}

/* ==== the policy ========================================================================== */

static int check_seconds(const char *name, double v, struct pvrt_error *e)
{
    if (!isfinite(v) || v < 0) {
        set_error(e, 0, "", "policy: %s %g must be a finite number of seconds >= 0", name, v);
        return -1;
    }
    return 0;
}

int pvagent_policy_init(struct pvagent_policy *p, double min_dwell_s, double native_settle_s,
                        double judge_hold_s, struct pvrt_error *e)
{
    if (check_seconds("min_dwell_s", min_dwell_s, e) ||
        check_seconds("native_settle_s", native_settle_s, e) ||
        check_seconds("judge_hold_s", judge_hold_s, e))
        return -1;
    memset(p, 0, sizeof(*p));
    p->min_dwell_s = min_dwell_s;
    p->native_settle_s = native_settle_s;
    p->judge_hold_s = judge_hold_s;
    p->mode = PVAGENT_MODE_NONE;
    p->want = PVAGENT_MODE_SAFE;
    p->judge = p->cand = -1;
    fmt(p->why, sizeof(p->why), "no observation yet");
    return 0;
}

/* The judge's hysteresis (docs/hints.md, "The local judge"):
 *   - the verdict in force starts as "no opinion" (-1);
 *   - a raw verdict (0 or 1) that differs from the one in force replaces it only after it has
 *     been given at every sample for judge_hold_s without interruption;
 *   - "no opinion" (no lock traffic to judge) interrupts such a run and leaves the verdict in
 *     force as it is: an idle spell neither confirms nor revokes it;
 *   - -2 is "no new sample" (a wake-up between two samples): nothing changes. */
int pvagent_judge_filter(struct pvagent_policy *p, int raw, const char *why, double now)
{
    if (raw == -2)
        return p->judge; /* no new sample */
    if (raw < 0 || raw == p->judge) {
        p->cand = -1;
        if (raw >= 0 && why)
            fmt(p->judge_why, sizeof(p->judge_why), "%s", why);
        return p->judge;
    }
    raw = raw ? 1 : 0;
    if (p->cand != raw) {
        p->cand = raw;
        p->cand_since = now;
    }
    if (now - p->cand_since >= p->judge_hold_s) {
        p->judge = raw;
        p->cand = -1;
        fmt(p->judge_why, sizeof(p->judge_why), "%s", why ? why : "");
    }
    return p->judge;
}

static const char *reason_name(uint32_t r)
{
    static const char *const names[] = {"none", "undersubscribed", "runnable", "steal",
                                        "psi", "throttled", "simulated", "stopped"};
    return r <= PVAGENT_REASON_MAX ? names[r] : "?";
}

/* Hints and local facts -> the mode wanted now, and why. */
static int judge_input(struct pvagent_policy *p, const struct pvagent_input *in, double now,
                       char *why, size_t wn)
{
    int verdict = pvagent_judge_filter(p, in->judge, in->judge_why, now);
    if (!in->usable) {
        fmt(why, wn, "no hints: %s", in->problem ? in->problem : "");
        return PVAGENT_MODE_SAFE;
    }
    if (!(in->active_hints & PVAGENT_HINT_REALTIME)) {
        fmt(why, wn, "REALTIME not given (publisher: %s)", reason_name(in->reason));
        return PVAGENT_MODE_SAFE;
    }
    if (in->cpus < 2) {
        fmt(why, wn, "REALTIME given, but this process may run on %d CPU only", in->cpus);
        return PVAGENT_MODE_SAFE;
    }
    /* The judge may veto the fast variant, never grant it without REALTIME: its statistics
     * cannot see that the host is about to preempt our threads. */
    if (verdict == 0) {
        fmt(why, wn, "REALTIME given, but the local judge prefers the safe variant (%s)",
            p->judge_why);
        return PVAGENT_MODE_SAFE;
    }
    fmt(why, wn, "REALTIME given");
    return PVAGENT_MODE_FAST;
}

int pvagent_policy_deadline(const struct pvagent_policy *p, double *due)
{
    if (!p->observed || p->want == p->mode)
        return 0; /* nothing observed yet, or nothing to change */
    double d = p->mode != PVAGENT_MODE_NONE ? p->last_switch + p->min_dwell_s : -INFINITY;
    if (p->want == PVAGENT_MODE_FAST && p->fast_since + p->native_settle_s > d)
        d = p->fast_since + p->native_settle_s;
    *due = d;
    return 1;
}

int pvagent_policy_poll(struct pvagent_policy *p, double now)
{
    double due;
    if (!pvagent_policy_deadline(p, &due))
        return 0;
    if (now < due) {
        p->held_back++;
        return 0;
    }
    p->mode = p->want;
    p->last_switch = now;
    return 1;
}

int pvagent_policy_observe(struct pvagent_policy *p, const struct pvagent_input *in, double now)
{
    char why[sizeof(p->why)];
    int want = judge_input(p, in, now, why, sizeof(why));
    p->observed = 1;
    /* settle: REALTIME must have held for native_settle_s, counted from the first observation
     * that wanted fast after one that did not */
    if (want == PVAGENT_MODE_FAST && p->want != PVAGENT_MODE_FAST) {
        p->fast_since = now;
        p->fast_since_set = 1;
    } else if (want != PVAGENT_MODE_FAST) {
        p->fast_since_set = 0;
    }
    p->want = want;
    memcpy(p->why, why, sizeof(why));
    return pvagent_policy_poll(p, now);
}

/* ==== the worker ========================================================================== */

struct pvagent {
    struct pvagent_config c;
    char path[4096], group[64], fast[16], safe[16];
    struct pvagent_reader r;
    struct pvagent_policy own_pol;
    struct pvagent_policy *pol; /* own_pol, or the caller's (config.policy) */
    pthread_t thread;
    int started;
    atomic_int stopping;
    atomic_int free_on_exit;   /* destroyed from its own thread: the thread frees it */
    atomic_uint stop_word;     /* a futex the thread sleeps on while it has no page mapped */
    pthread_mutex_t maplock;   /* the thread holds it to change r.map; stop holds it to wake */
    pthread_mutex_t reclock;   /* records and stats */
    struct pvagent_switch *recs;
    size_t nrecs_total;
    struct pvagent_switch cur; /* the switch being applied */
    const struct pvagent_obs *cur_obs; /* and the observation it acts on */
    int in_force;              /* mode of the last successful switch, -1 none */
    struct pvagent_stats st;
};

static unsigned count_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return 2; /* cannot tell: do not veto on a guess */
    return (unsigned)CPU_COUNT(&set);
}

static void record(struct pvagent *a, const struct pvagent_switch *s)
{
    pthread_mutex_lock(&a->reclock);
    a->recs[a->nrecs_total % PVAGENT_MAX_SWITCHES] = *s;
    a->nrecs_total++;
    a->st.records++;
    a->st.switches += s->ok;
    a->st.failures += !s->ok;
    if (s->attempt > 1)
        a->st.retries++;
    pthread_mutex_unlock(&a->reclock);
}

/* One attempt at a decision: apply it, record it.  Returns 1 when it took effect. */
static int attempt(struct pvagent *a, int mode, const char *why, const struct pvagent_obs *o,
                   unsigned n)
{
    struct pvagent_switch *s = &a->cur;
    memset(s, 0, sizeof(*s));
    const char *to = mode == PVAGENT_MODE_FAST ? a->fast : a->safe;
    fmt(s->from, sizeof(s->from), "%s",
        a->in_force == PVAGENT_MODE_FAST ? a->fast : a->in_force == PVAGENT_MODE_SAFE ? a->safe
                                                                                       : "");
    fmt(s->to, sizeof(s->to), "%s", to);
    fmt(s->reason, sizeof(s->reason), "%s", why);
    s->mode = mode;
    s->attempt = n;
    /* Only a publication causes a switch: a page that went stale or missing published
     * nothing, so there is no publication time to measure from (t_publish 0). */
    if (o->valid)
        s->generation = o->page.generation;
    if (o->valid && (o->status == PVAGENT_USABLE || o->status == PVAGENT_STOPPED))
        s->t_publish = o->cause_ns / 1e9;
    a->cur_obs = o;
    s->t_seen = o->seen_ns / 1e9;
    s->t_decided = now_s();
    struct pvrt_error e = {0};
    int rc = a->c.apply(a->group, to, a->c.apply_arg, &e);
    s->t_done = now_s();
    s->ok = rc == 0;
    if (!s->ok) {
        if (e.err)
            fmt(s->error, sizeof(s->error), "%s: %s (errno %d)", e.syscall, e.msg, e.err);
        else
            fmt(s->error, sizeof(s->error), "%s", e.msg[0] ? e.msg : "apply refused");
    } else {
        a->in_force = mode;
    }
    record(a, s);
    return s->ok;
}

static void set_this_agent(const struct pvagent *a);

static void *worker(void *arg)
{
    struct pvagent *a = arg;
    set_this_agent(a);
    struct pvagent_obs o;
    struct pvagent_input in = {0};
    int judge_raw = -2;
    char judge_why[128] = "";
    double next_judge = 0;
    /* A refused decision waits for its retry; a newer decision replaces it. */
    int pending = 0, pending_mode = 0;
    unsigned pending_attempt = 0;
    double retry_at = 0;
    char pending_why[256] = "";
    struct pvagent_obs pending_obs;
    memset(&pending_obs, 0, sizeof(pending_obs));

    while (!atomic_load(&a->stopping)) {
        /* 1. Observe: a consistent, validated snapshot (R1-R4).  The reader may reopen the
         * page (a publisher that replaced it): under maplock, partner: stop_wake(). */
        pthread_mutex_lock(&a->maplock);
        pvagent_reader_read(&a->r, &o, 0);
        pthread_mutex_unlock(&a->maplock);
        double now = now_s();
        pthread_mutex_lock(&a->reclock);
        a->st.observations++;
        a->st.status = o.status;
        pthread_mutex_unlock(&a->reclock);

        /* 2. The local judge, at its own pace (its verdict is over the statistics since its
         * previous call, so calling it per wake-up would judge slices of random length). */
        if (a->c.local_judge && now >= next_judge) {
            judge_raw = a->c.local_judge(a->c.judge_arg, judge_why, sizeof(judge_why));
            next_judge = now + a->c.judge_period_s;
        }
        in.usable = o.status == PVAGENT_USABLE;
        in.problem = o.problem;
        in.active_hints = in.usable ? o.page.active_hints : 0;
        in.reason = o.page.reason;
        in.cpus = (int)count_cpus();
        in.judge = judge_raw;
        in.judge_why = judge_why;
        judge_raw = -2; /* each sample is fed once: wake-ups in between are no new sample */

        /* 3. Decide; 4. apply the newest decision, or retry a refused one when due. */
        if (pvagent_policy_observe(a->pol, &in, now)) {
            pthread_mutex_lock(&a->reclock);
            a->st.decisions++;
            a->st.mode = a->pol->mode;
            pthread_mutex_unlock(&a->reclock);
            pending = 0;
            if (!attempt(a, a->pol->mode, a->pol->why, &o, 1)) {
                pending = 1;
                pending_mode = a->pol->mode;
                pending_attempt = 1;
                fmt(pending_why, sizeof(pending_why), "%s", a->pol->why);
                pending_obs = o;
                retry_at = now_s() + a->c.retry_initial_s;
            }
        } else if (pending && now_s() >= retry_at) {
            pending_attempt++;
            if (attempt(a, pending_mode, pending_why, &pending_obs, pending_attempt)) {
                pending = 0;
            } else {
                double b = a->c.retry_initial_s; /* doubling per attempt, up to retry_max_s */
                for (unsigned k = 1; k < pending_attempt && b < a->c.retry_max_s; k++)
                    b *= 2;
                retry_at = now_s() + (b < a->c.retry_max_s ? b : a->c.retry_max_s);
            }
        }
        /* Not once stopping: a callback that destroyed the agent may have freed its arg. */
        if (a->c.on_observe && !atomic_load(&a->stopping))
            a->c.on_observe(&o, a->c.observe_arg);

        /* 5. Sleep until the page changes or something is due: the page turning stale (heart-
         * beats push that out), at most 5 s; poll_s while it is not usable; a held-back
         * decision's deadline; a retry; the judge's next sample. */
        now = now_s();
        double timeout = a->c.poll_s;
        if (o.status == PVAGENT_USABLE) {
            double until_stale =
                ((double)o.page.heartbeat_ns + (double)pvagent_page_stale_bound_ns(&o.page)) /
                    1e9 -
                now;
            timeout = until_stale + 0.001;
            if (timeout > 5.0)
                timeout = 5.0;
        }
        double due;
        if (pvagent_policy_deadline(a->pol, &due) && due - now < timeout)
            timeout = due - now;
        if (pending && retry_at - now < timeout)
            timeout = retry_at - now;
        if (a->c.local_judge && next_judge - now < timeout)
            timeout = next_judge - now;
        if (timeout < 0.0001)
            timeout = 0.0001;
        if (atomic_load(&a->stopping))
            break;
        /* Wait on the generation of this snapshot, or the raw word when the page is not valid
         * (a publisher starting over a bad page wakes us with its first publication). */
        long long gen = o.valid ? (long long)o.page.generation : pvagent_reader_raw_generation(&a->r);
        int w = -1;
        if (gen >= 0)
            w = pvagent_reader_wait(&a->r, (uint32_t)gen, timeout);
        if (w == -2) { /* drop the faulting mapping (under maplock: stop_wake uses it) */
            pthread_mutex_lock(&a->maplock);
            pvagent_reader_close(&a->r);
            pthread_mutex_unlock(&a->maplock);
        }
        if (w == -1 || w == -2) {
            struct timespec ts = to_ts(timeout);
            futex(&a->stop_word, FUTEX_WAIT_PRIVATE, 0, &ts);
        }
        pthread_mutex_lock(&a->reclock);
        a->st.wakeups++;
        a->st.timeouts += w == 1;
        pthread_mutex_unlock(&a->reclock);
    }
    if (a->c.on_exit)
        a->c.on_exit(a->c.observe_arg);
    if (atomic_load(&a->free_on_exit)) {
        pvagent_reader_close(&a->r);
        pthread_mutex_destroy(&a->maplock);
        pthread_mutex_destroy(&a->reclock);
        free(a->recs);
        free(a);
    }
    return NULL;
}

static void stop_wake(struct pvagent *a)
{
    atomic_store(&a->stop_word, 1);
    futex(&a->stop_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
    /* The thread may sleep on the page's generation: wake that word.  Other guests sleeping on
     * the page wake too; a wake-up is only ever a reason to re-read, which costs them a read. */
    pthread_mutex_lock(&a->maplock);
    if (a->r.map != NULL)
        futex((char *)a->r.map + PVAGENT_OFF_GENERATION, FUTEX_WAKE, INT_MAX, NULL);
    pthread_mutex_unlock(&a->maplock);
}

static int copy_name(char *dst, size_t n, const char *src, const char *what, struct pvrt_error *e)
{
    if (src == NULL || !*src || strlen(src) >= n) {
        set_error(e, 0, "", "agent: %s %s%s%s is not a name of 1..%zu bytes", what,
                  src ? "'" : "", src ? src : "NULL", src ? "'" : "", n - 1);
        return -1;
    }
    strcpy(dst, src);
    return 0;
}

struct pvagent *pvagent_create(const struct pvagent_config *c, struct pvrt_error *e)
{
    if (c == NULL || c->apply == NULL) {
        set_error(e, 0, "", "agent: no apply function");
        return NULL;
    }
    struct pvagent *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        set_error(e, ENOMEM, "malloc", "agent: out of memory");
        return NULL;
    }
    a->recs = calloc(PVAGENT_MAX_SWITCHES, sizeof(*a->recs));
    if (a->recs == NULL) {
        free(a);
        set_error(e, ENOMEM, "malloc", "agent: out of memory");
        return NULL;
    }
    a->c = *c;
    a->in_force = PVAGENT_MODE_NONE;
    a->st.mode = PVAGENT_MODE_NONE;
    pthread_mutex_init(&a->maplock, NULL);
    pthread_mutex_init(&a->reclock, NULL);
    if (a->c.judge_period_s == 0)
        a->c.judge_period_s = 0.1;
    if (a->c.judge_hold_s == 0)
        a->c.judge_hold_s = 1.0;
    if (a->c.retry_initial_s == 0)
        a->c.retry_initial_s = 0.05;
    if (a->c.retry_max_s == 0)
        a->c.retry_max_s = 5.0;
    if (!(a->c.poll_s > 0 && a->c.poll_s <= 60)) {
        set_error(e, 0, "", "agent: poll_s %g must be > 0 and <= 60 seconds", a->c.poll_s);
        goto fail;
    }
    if (!(a->c.judge_period_s > 0) || !(a->c.retry_initial_s > 0) ||
        !(a->c.retry_max_s >= a->c.retry_initial_s)) {
        set_error(e, 0, "", "agent: judge_period_s, retry_initial_s and retry_max_s must be "
                            "> 0 seconds, retry_max_s >= retry_initial_s");
        goto fail;
    }
    if (copy_name(a->group, sizeof(a->group), c->group, "group", e) ||
        copy_name(a->fast, sizeof(a->fast), c->fast, "fast variant", e) ||
        copy_name(a->safe, sizeof(a->safe), c->safe, "safe variant", e))
        goto fail;
    if (strcmp(a->fast, a->safe) == 0) {
        set_error(e, 0, "", "agent: fast and safe variant are both '%s'", a->fast);
        goto fail;
    }
    a->pol = c->policy ? c->policy : &a->own_pol;
    if (c->policy == NULL &&
        pvagent_policy_init(a->pol, c->min_dwell_s, c->native_settle_s, a->c.judge_hold_s, e))
        goto fail;
    if (pvagent_reader_init(&a->r, c->hints_path, c->publisher_uid_set ? c->publisher_uid : -1,
                            e))
        goto fail;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    int rc = c->stack_size ? pthread_attr_setstacksize(&attr, c->stack_size) : 0;
    if (rc == 0)
        rc = pthread_create(&a->thread, &attr, worker, a);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        set_error(e, rc, "pthread_create", "agent: cannot start its thread: %s", strerror(rc));
        goto fail;
    }
    a->started = 1;
    a->st.running = 1;
    return a;
fail:
    pthread_mutex_destroy(&a->maplock);
    pthread_mutex_destroy(&a->reclock);
    free(a->recs);
    free(a);
    return NULL;
}

void pvagent_destroy(struct pvagent *a)
{
    if (a == NULL)
        return;
    if (a->started && pthread_equal(pthread_self(), a->thread)) {
        /* From apply or on_observe (a callback that drops the last reference): the thread
         * cannot join itself; it ends after this round and frees the agent on its way out. */
        atomic_store(&a->free_on_exit, 1);
        atomic_store(&a->stopping, 1);
        pthread_detach(a->thread);
        return;
    }
    if (a->started) {
        atomic_store(&a->stopping, 1);
        /* The thread checks `stopping` before it sleeps, but may have checked just before we
         * set it: wake it until it has gone (every wait is also bounded by its timeout). */
        for (;;) {
            stop_wake(a);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 2000000;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_timedjoin_np(a->thread, NULL, &ts) == 0)
                break;
        }
    }
    pvagent_reader_close(&a->r);
    pthread_mutex_destroy(&a->maplock);
    pthread_mutex_destroy(&a->reclock);
    free(a->recs);
    free(a);
}

/* The agent whose thread this is (apply may run before pvagent_create has returned). */
static __thread const struct pvagent *this_agent;

const struct pvagent_switch *pvagent_in_progress(const struct pvagent *a)
{
    if (a == NULL)
        a = this_agent;
    return a ? &a->cur : NULL;
}

const struct pvagent_obs *pvagent_in_progress_obs(const struct pvagent *a)
{
    if (a == NULL)
        a = this_agent;
    return a ? a->cur_obs : NULL;
}

size_t pvagent_switches_of(struct pvagent *a, struct pvagent_switch *out, size_t max)
{
    pthread_mutex_lock(&a->reclock);
    size_t total = a->nrecs_total;
    size_t kept = total < PVAGENT_MAX_SWITCHES ? total : PVAGENT_MAX_SWITCHES;
    if (kept > max)
        kept = max; /* the newest `max` */
    size_t first = total - kept;
    for (size_t i = 0; i < kept; i++)
        out[i] = a->recs[(first + i) % PVAGENT_MAX_SWITCHES];
    pthread_mutex_unlock(&a->reclock);
    return kept;
}

void pvagent_stats_of(struct pvagent *a, struct pvagent_stats *out)
{
    pthread_mutex_lock(&a->reclock);
    *out = a->st;
    out->held_back = a->pol->held_back;
    pthread_mutex_unlock(&a->reclock);
}

static void set_this_agent(const struct pvagent *a)
{
    this_agent = a;
}

/* The process's agent. */
static pthread_mutex_t the_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pvagent *the_agent;

int pvagent_start(const struct pvagent_config *c, struct pvrt_error *e)
{
    pthread_mutex_lock(&the_lock);
    if (the_agent != NULL) {
        pthread_mutex_unlock(&the_lock);
        set_error(e, 0, "", "agent: already running (pvagent_stop it first)");
        return -1;
    }
    the_agent = pvagent_create(c, e);
    int rc = the_agent ? 0 : -1;
    pthread_mutex_unlock(&the_lock);
    return rc;
}

void pvagent_atfork_child(void)
{
    /* The child has no agent thread (fork copies only the caller) and the parent's locks may
     * have been held by it: forget the agent without joining, so that pvagent_start works. */
    pthread_mutex_init(&the_lock, NULL);
    struct pvagent *a = the_agent;
    the_agent = NULL;
    if (a != NULL) {
        pvagent_reader_close(&a->r);
        free(a->recs);
        free(a);
    }
}

void pvagent_stop(void)
{
    pthread_mutex_lock(&the_lock);
    struct pvagent *a = the_agent;
    the_agent = NULL;
    pthread_mutex_unlock(&the_lock);
    pvagent_destroy(a);
}

size_t pvagent_switches(struct pvagent_switch *out, size_t max)
{
    pthread_mutex_lock(&the_lock);
    size_t n = the_agent ? pvagent_switches_of(the_agent, out, max) : 0;
    pthread_mutex_unlock(&the_lock);
    return n;
}

void pvagent_stats_read(struct pvagent_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->mode = PVAGENT_MODE_NONE;
    pthread_mutex_lock(&the_lock);
    if (the_agent)
        pvagent_stats_of(the_agent, out);
    pthread_mutex_unlock(&the_lock);
}
