/*
 * conformance.c - the pthread mutex, spinlock and condition-variable contract, as glibc keeps it.
 *
 *   gcc -O2 -g -pthread -std=gnu11 -Wall -Wextra tests/c/conformance.c -o conformance
 *   ./conformance            run every check       ./conformance -l   list the checks
 *   ./conformance -k cond,spin   only checks whose name contains "cond" or "spin"
 *   ./conformance -s 4       four times the iterations of the stress checks
 *
 * One program, its own checks, no pvpatch header: it is what an unmodified program does with
 * pthreads, so that it can run plain against glibc (which proves the suite) and under
 * `pvpatch run` / libpvpatch-preload.so (which the suite then judges), with the lock switched
 * live while it runs.  Every function the preload interposes is exercised: pthread_mutex_init/
 * destroy/lock/trylock/timedlock/clocklock/unlock, pthread_spin_*, pthread_cond_init/destroy/
 * wait/timedwait/clockwait/signal/broadcast, on mutexes of every kind the preload handles
 * (default, normal, adaptive, statically initialised, zeroed heap memory) and on the kinds it
 * must pass through to glibc untouched (recursive, error-checking, robust, priority-inheritance,
 * process-shared), static initialisers of those kinds included.
 *
 * Output: one line per check, "PASS name (ms)" or "FAIL name: first failure (file:line)", then
 * "conformance: N passed, N failed".  Exit 0: every check passed; 1: a check failed; 3: a check
 * did not finish within its bound (the watchdog prints the check, what it was waiting for, and
 * exits).  Every wait in the checks is bounded; a lost wake-up becomes a failure naming the
 * round, never a hang.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- reporting -------------------------------------------------------------------------- */

static const char *volatile cur_check = "(none)";
static char cur_state[256] = "starting"; /* what the check waits for; read by the watchdog */
static int nfail;                        /* failures in the current check (atomic) */
static char fail_msg[512];
static int scale = 1;

static void fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_at(const char *file, int line, const char *fmt, ...)
{
    /* Any thread may fail; the first failure of a check is the one reported. */
    if (__atomic_fetch_add(&nfail, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(fail_msg, sizeof fail_msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof fail_msg)
        snprintf(fail_msg + n, sizeof fail_msg - n, " (%s:%d)", file, line);
}

#define FAIL(...) fail_at(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond))                                                                           \
            FAIL(__VA_ARGS__);                                                                 \
    } while (0)
/* A pthread call's return value against the expected error number (0 for success). */
#define EXPECT(call, want)                                                                     \
    do {                                                                                       \
        int r_ = (call);                                                                       \
        if (r_ != (want))                                                                      \
            FAIL("%s returned %s (%d), expected %s", #call, errname(r_), r_, errname(want));   \
    } while (0)

static void state(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void state(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cur_state, sizeof cur_state, fmt, ap);
    va_end(ap);
}

static const char *errname(int e)
{
    switch (e) {
    case 0: return "0";
    case EBUSY: return "EBUSY";
    case EINVAL: return "EINVAL";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EDEADLK: return "EDEADLK";
    case EPERM: return "EPERM";
    case EOWNERDEAD: return "EOWNERDEAD";
    case ENOTRECOVERABLE: return "ENOTRECOVERABLE";
    case EINTR: return "EINTR";
    case EAGAIN: return "EAGAIN";
    case ENOSYS: return "ENOSYS";
    default: return "other";
    }
}

/* The watchdog is SIGALRM, not a thread: a program that never creates a thread stays so. */
static void watchdog(int sig)
{
    (void)sig;
    char buf[768];
    int n = snprintf(buf, sizeof buf,
                     "FAIL %s: did not finish within its bound; waiting for: %s\n"
                     "conformance: stopped by the watchdog\n",
                     cur_check, cur_state);
    if (n > (int)sizeof buf)
        n = sizeof buf;
    if (write(1, buf, n) < 0)
        _exit(4);
    _exit(3);
}

/* ---- time --------------------------------------------------------------------------------- */

static int64_t ns_of(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static struct timespec ts_of(int64_t ns)
{
    struct timespec t = {ns / 1000000000, ns % 1000000000};
    return t;
}

static int64_t ts_ns(const struct timespec *t) { return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec; }

/* An absolute time `ms` from now on clock c (negative: in the past). */
static struct timespec after_ms(clockid_t c, int64_t ms) { return ts_of(ns_of(c) + ms * 1000000); }

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

static void sleep_us(int us)
{
    struct timespec t = {0, us * 1000L};
    nanosleep(&t, NULL);
}

/* Poll `expr` (reads of shared counters) every 100 us for at most `ms`; the value of expr. */
#define WAIT_FOR(expr, ms)                                                                     \
    ({                                                                                         \
        int64_t end_ = ns_of(CLOCK_MONOTONIC) + (int64_t)(ms) * 1000000;                       \
        int ok_;                                                                               \
        while (!(ok_ = !!(expr)) && ns_of(CLOCK_MONOTONIC) < end_)                             \
            sleep_us(100);                                                                     \
        ok_;                                                                                   \
    })

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#define INC(x) __atomic_add_fetch(&(x), 1, __ATOMIC_ACQ_REL)

/* ---- threads ------------------------------------------------------------------------------ */

static pthread_t spawn(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    int r = pthread_create(&t, NULL, fn, arg);
    if (r != 0) {
        FAIL("pthread_create: %s", strerror(r));
        _exit(1); /* nothing sensible follows without the thread */
    }
    return t;
}

/* Join within `s` seconds; a thread that does not finish is a failure, and the process cannot
 * go on safely (it may still use the check's objects): report and exit. */
static void *join(pthread_t t, int s)
{
    void *ret = NULL;
    struct timespec dl = after_ms(CLOCK_REALTIME, (int64_t)s * 1000);
    int r = pthread_timedjoin_np(t, &ret, &dl);
    if (r != 0) {
        FAIL("a thread did not finish within %d s (pthread_timedjoin_np: %s); waiting for: %s",
             s, errname(r), cur_state);
        printf("FAIL %s: %s\nconformance: stopped, a thread is stuck\n", cur_check, fail_msg);
        fflush(stdout);
        _exit(3);
    }
    return ret;
}

/* Another thread's pthread_mutex_trylock on m: EBUSY while anyone holds it.  A successful
 * trylock is undone at once. */
static void *trylock_thread(void *m)
{
    intptr_t r = pthread_mutex_trylock(m);
    if (r == 0 || r == EOWNERDEAD)
        pthread_mutex_unlock(m);
    return (void *)r;
}

static int trylock_elsewhere(pthread_mutex_t *m) { return (int)(intptr_t)join(spawn(trylock_thread, m), 10); }

static void *unlock_thread(void *m) { return (void *)(intptr_t)pthread_mutex_unlock(m); }
static int unlock_elsewhere(pthread_mutex_t *m) { return (int)(intptr_t)join(spawn(unlock_thread, m), 10); }

/* ---- the mutex kinds ---------------------------------------------------------------------- */

enum kind { K_NULLATTR, K_DEFAULT, K_NORMAL, K_ADAPTIVE, K_STATIC, K_STATIC_ADAPTIVE, K_ZEROED, NKINDS };
static const char *const kind_names[NKINDS] = {"init(NULL)", "attr default", "attr normal",
                                               "attr adaptive", "PTHREAD_MUTEX_INITIALIZER",
                                               "PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP",
                                               "zeroed heap memory"};

/* A fresh mutex of kind k (heap memory, so every check gets its own).  The static kinds are
 * copied from their initialiser and never initialised explicitly. */
static pthread_mutex_t *make_mutex(enum kind k)
{
    pthread_mutex_t *m = calloc(1, sizeof *m);
    static const pthread_mutex_t st = PTHREAD_MUTEX_INITIALIZER;
    static const pthread_mutex_t sta = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
    pthread_mutexattr_t a;
    switch (k) {
    case K_NULLATTR: EXPECT(pthread_mutex_init(m, NULL), 0); break;
    case K_DEFAULT:
    case K_NORMAL:
    case K_ADAPTIVE:
        pthread_mutexattr_init(&a);
        if (k != K_DEFAULT)
            pthread_mutexattr_settype(&a, k == K_NORMAL ? PTHREAD_MUTEX_NORMAL : PTHREAD_MUTEX_ADAPTIVE_NP);
        EXPECT(pthread_mutex_init(m, &a), 0);
        pthread_mutexattr_destroy(&a);
        break;
    case K_STATIC: memcpy(m, &st, sizeof st); break;
    case K_STATIC_ADAPTIVE: memcpy(m, &sta, sizeof sta); break;
    case K_ZEROED: case NKINDS: break;
    }
    return m;
}

static void free_mutex(enum kind k, pthread_mutex_t *m)
{
    if (k <= K_ADAPTIVE)
        EXPECT(pthread_mutex_destroy(m), 0);
    free(m);
}

/* ---- checks: a process that never creates a thread ---------------------------------------- */

static pthread_mutex_t st_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t st_cond = PTHREAD_COND_INITIALIZER;

static void check_single_thread(void)
{
    /* Runs first: no thread of the program exists yet. */
    EXPECT(pthread_mutex_lock(&st_mutex), 0);
    EXPECT(pthread_mutex_trylock(&st_mutex), EBUSY);
    EXPECT(pthread_cond_signal(&st_cond), 0);
    EXPECT(pthread_cond_broadcast(&st_cond), 0);
    struct timespec dl = after_ms(CLOCK_REALTIME, 20);
    EXPECT(pthread_cond_timedwait(&st_cond, &st_mutex, &dl), ETIMEDOUT);
    CHECK(ns_of(CLOCK_REALTIME) >= ts_ns(&dl), "cond_timedwait returned before its deadline");
    EXPECT(pthread_mutex_trylock(&st_mutex), EBUSY); /* re-acquired on the way out */
    EXPECT(pthread_mutex_unlock(&st_mutex), 0);
    EXPECT(pthread_mutex_trylock(&st_mutex), 0);
    EXPECT(pthread_mutex_unlock(&st_mutex), 0);
    dl = after_ms(CLOCK_REALTIME, -10);
    EXPECT(pthread_mutex_timedlock(&st_mutex, &dl), 0); /* free: no wait, no timeout */
    EXPECT(pthread_mutex_unlock(&st_mutex), 0);

    pthread_spinlock_t s;
    EXPECT(pthread_spin_init(&s, PTHREAD_PROCESS_PRIVATE), 0);
    EXPECT(pthread_spin_lock(&s), 0);
    EXPECT(pthread_spin_trylock(&s), EBUSY);
    EXPECT(pthread_spin_unlock(&s), 0);
    EXPECT(pthread_spin_trylock(&s), 0);
    EXPECT(pthread_spin_unlock(&s), 0);
    EXPECT(pthread_spin_destroy(&s), 0);

    for (enum kind k = 0; k < NKINDS; k++) {
        pthread_mutex_t *m = make_mutex(k);
        for (int i = 0; i < 1000; i++) {
            EXPECT(pthread_mutex_lock(m), 0);
            EXPECT(pthread_mutex_unlock(m), 0);
        }
        free_mutex(k, m);
    }
}

/* ---- checks: return values of the interposed mutex kinds ---------------------------------- */

static void check_mutex_basic(void)
{
    for (enum kind k = 0; k < NKINDS; k++) {
        state("%s", kind_names[k]);
        pthread_mutex_t *m = make_mutex(k);
        EXPECT(pthread_mutex_lock(m), 0);
        EXPECT(pthread_mutex_trylock(m), EBUSY);   /* the owner's trylock */
        EXPECT(trylock_elsewhere(m), EBUSY);       /* another thread's */
        EXPECT(pthread_mutex_unlock(m), 0);
        EXPECT(trylock_elsewhere(m), 0);
        EXPECT(pthread_mutex_trylock(m), 0);
        if (k <= K_ADAPTIVE)
            EXPECT(pthread_mutex_destroy(m), EBUSY); /* glibc refuses a locked mutex */
        EXPECT(pthread_mutex_unlock(m), 0);
        /* A mutex unlocked by another thread than the one that locked it (allowed for normal
         * mutexes by glibc, and done by real programs as a binary semaphore). */
        EXPECT(pthread_mutex_lock(m), 0);
        EXPECT(unlock_elsewhere(m), 0);
        EXPECT(pthread_mutex_trylock(m), 0);
        EXPECT(pthread_mutex_unlock(m), 0);
        free_mutex(k, m);
    }
    /* init / destroy / init again, and a destroyed-then-reinitialised mutex works. */
    pthread_mutex_t m;
    for (int i = 0; i < 100; i++) {
        EXPECT(pthread_mutex_init(&m, NULL), 0);
        EXPECT(pthread_mutex_lock(&m), 0);
        EXPECT(pthread_mutex_unlock(&m), 0);
        EXPECT(pthread_mutex_destroy(&m), 0);
    }
}

/* ---- checks: mutual exclusion under contention -------------------------------------------- */

struct excl {
    pthread_mutex_t *m;
    pthread_spinlock_t *s;
    long iters;
    long counter;     /* plain increments, under the lock */
    int inside;       /* owners at once: must stay 1 */
    int overlap;
};

static void excl_enter(struct excl *e)
{
    if (__atomic_add_fetch(&e->inside, 1, __ATOMIC_ACQ_REL) != 1)
        __atomic_store_n(&e->overlap, 1, __ATOMIC_RELEASE);
}

static void excl_leave(struct excl *e) { __atomic_sub_fetch(&e->inside, 1, __ATOMIC_ACQ_REL); }

static void *excl_thread(void *arg)
{
    struct excl *e = arg;
    for (long i = 0; i < e->iters; i++) {
        int r;
        struct timespec far;
        /* Every acquire path in turn; a deadline far away never expires. */
        switch (i % 5) {
        case 0: r = pthread_mutex_lock(e->m); break;
        case 1:
            while ((r = pthread_mutex_trylock(e->m)) == EBUSY)
                sched_yield();
            break;
        case 2: far = after_ms(CLOCK_REALTIME, 60000); r = pthread_mutex_timedlock(e->m, &far); break;
        case 3: far = after_ms(CLOCK_MONOTONIC, 60000); r = pthread_mutex_clocklock(e->m, CLOCK_MONOTONIC, &far); break;
        default: far = after_ms(CLOCK_REALTIME, 60000); r = pthread_mutex_clocklock(e->m, CLOCK_REALTIME, &far); break;
        }
        if (r != 0) {
            FAIL("acquire path %ld returned %s", i % 5, errname(r));
            return NULL;
        }
        excl_enter(e);
        e->counter++;
        excl_leave(e);
        r = pthread_mutex_unlock(e->m);
        if (r != 0) {
            FAIL("pthread_mutex_unlock returned %s", errname(r));
            return NULL;
        }
    }
    return NULL;
}

static void run_exclusion(pthread_mutex_t *m, int nthreads, long iters, const char *what)
{
    struct excl e = {.m = m, .iters = iters};
    pthread_t t[16];
    state("%d threads x %ld acquisitions on %s", nthreads, iters, what);
    for (int i = 0; i < nthreads; i++)
        t[i] = spawn(excl_thread, &e);
    for (int i = 0; i < nthreads; i++)
        join(t[i], 120);
    CHECK(!e.overlap, "%s: two owners at once", what);
    CHECK(e.counter == nthreads * iters, "%s: %ld increments, expected %ld (a lost update)", what,
          e.counter, nthreads * iters);
}

static void check_mutex_exclusion(void)
{
    for (enum kind k = 0; k < NKINDS; k++) {
        pthread_mutex_t *m = make_mutex(k);
        run_exclusion(m, 4, 20000L * scale, kind_names[k]);
        free_mutex(k, m);
    }
    /* More threads than CPUs: owners are preempted holding the lock. */
    pthread_mutex_t *m = make_mutex(K_STATIC);
    run_exclusion(m, 16, 5000L * scale, "16 threads, static");
    free_mutex(K_STATIC, m);
}

/* ---- checks: timeouts --------------------------------------------------------------------- */

struct timed {
    pthread_mutex_t *m;
};

static void expect_timeout(pthread_mutex_t *m, clockid_t c, int use_clocklock, int ms)
{
    struct timespec dl = after_ms(c, ms);
    int64_t t0 = ns_of(CLOCK_MONOTONIC);
    int r = use_clocklock ? pthread_mutex_clocklock(m, c, &dl) : pthread_mutex_timedlock(m, &dl);
    int64_t now = ns_of(c), took = ns_of(CLOCK_MONOTONIC) - t0;
    const char *fn = use_clocklock ? (c == CLOCK_MONOTONIC ? "clocklock(MONOTONIC)" : "clocklock(REALTIME)") : "timedlock";
    CHECK(r == ETIMEDOUT, "%s %d ms on a held mutex returned %s, expected ETIMEDOUT", fn, ms, errname(r));
    if (r == 0)
        pthread_mutex_unlock(m);
    CHECK(now >= ts_ns(&dl), "%s %d ms returned %.3f ms before its deadline", fn, ms,
          (ts_ns(&dl) - now) / 1e6);
    CHECK(took < 20000000000LL, "%s %d ms took %.0f ms", fn, ms, took / 1e6);
}

static void *timeouts_thread(void *arg)
{
    pthread_mutex_t *m = arg; /* held by the main thread throughout */
    expect_timeout(m, CLOCK_REALTIME, 0, 50);
    expect_timeout(m, CLOCK_REALTIME, 1, 50);
    expect_timeout(m, CLOCK_MONOTONIC, 1, 50);
    expect_timeout(m, CLOCK_REALTIME, 0, -5);    /* in the past: at once */
    expect_timeout(m, CLOCK_MONOTONIC, 1, -5);
    struct timespec neg = {-1, 0};
    EXPECT(pthread_mutex_timedlock(m, &neg), ETIMEDOUT);
    /* Bad arguments on a mutex that must be waited for: EINVAL at once, not acquired. */
    struct timespec bad = after_ms(CLOCK_REALTIME, 1000);
    bad.tv_nsec = 1000000000;
    EXPECT(pthread_mutex_timedlock(m, &bad), EINVAL);
    bad.tv_nsec = -1;
    EXPECT(pthread_mutex_timedlock(m, &bad), EINVAL);
    bad = after_ms(CLOCK_MONOTONIC, 1000);
    bad.tv_nsec = 1000000000;
    EXPECT(pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &bad), EINVAL);
    struct timespec ok = after_ms(CLOCK_MONOTONIC, 1000);
    const clockid_t badclocks[] = {CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID, CLOCK_BOOTTIME,
                                   CLOCK_MONOTONIC_RAW, 12345, -1};
    int64_t t0 = ns_of(CLOCK_MONOTONIC);
    for (size_t i = 0; i < sizeof badclocks / sizeof *badclocks; i++) {
        int r = pthread_mutex_clocklock(m, badclocks[i], &ok);
        CHECK(r == EINVAL, "clocklock with clock %d on a held mutex returned %s, expected EINVAL",
              (int)badclocks[i], errname(r));
    }
    CHECK(ns_of(CLOCK_MONOTONIC) - t0 < 500000000, "EINVAL for a bad clock came only after %.0f ms",
          (ns_of(CLOCK_MONOTONIC) - t0) / 1e6);
    return NULL;
}

static void check_mutex_timeouts(void)
{
    for (enum kind k = 0; k < NKINDS; k++) {
        state("timeouts on %s", kind_names[k]);
        pthread_mutex_t *m = make_mutex(k);
        EXPECT(pthread_mutex_lock(m), 0);
        join(spawn(timeouts_thread, m), 60);
        EXPECT(pthread_mutex_unlock(m), 0);
        /* Free mutex: a deadline in the past is not an error; a bad clock is. */
        struct timespec past = after_ms(CLOCK_REALTIME, -10);
        EXPECT(pthread_mutex_timedlock(m, &past), 0);
        EXPECT(pthread_mutex_unlock(m), 0);
        past = after_ms(CLOCK_MONOTONIC, -10);
        EXPECT(pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &past), 0);
        EXPECT(pthread_mutex_unlock(m), 0);
        EXPECT(pthread_mutex_clocklock(m, CLOCK_PROCESS_CPUTIME_ID, &past), EINVAL);
        EXPECT(pthread_mutex_clocklock(m, 12345, &past), EINVAL);
        EXPECT(trylock_elsewhere(m), 0); /* EINVAL left it unlocked */
        /* A bad nanosecond field on a free mutex: POSIX need not check it when no wait is
         * needed (glibc does not); either way the result must be consistent. */
        struct timespec bad = {time(NULL) + 10, 1000000000};
        int r = pthread_mutex_timedlock(m, &bad);
        CHECK(r == 0 || r == EINVAL, "timedlock with tv_nsec=1e9 on a free mutex: %s", errname(r));
        EXPECT(trylock_elsewhere(m), r == 0 ? EBUSY : 0);
        if (r == 0)
            EXPECT(pthread_mutex_unlock(m), 0);
        free_mutex(k, m);
    }
}

/* ---- checks: errno is not the channel ------------------------------------------------------ */

static void *errno_slow_thread(void *arg)
{
    pthread_mutex_t *m = arg; /* held by the main thread */
    errno = 4242;
    struct timespec dl = after_ms(CLOCK_REALTIME, 30);
    EXPECT(pthread_mutex_timedlock(m, &dl), ETIMEDOUT);
    dl = after_ms(CLOCK_MONOTONIC, 30);
    EXPECT(pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &dl), ETIMEDOUT);
    CHECK(errno == 4242, "errno changed from 4242 to %d by a timed-out lock", errno);
    return NULL;
}

static void check_errno_untouched(void)
{
    /* pthread functions return their error; errno is the program's and survives every call,
     * failing ones included. */
    pthread_mutex_t *m = make_mutex(K_STATIC);
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pthread_spinlock_t s;
    pthread_spin_init(&s, 0);
    errno = 4242;
    EXPECT(pthread_mutex_lock(m), 0);
    EXPECT(pthread_mutex_trylock(m), EBUSY);
    struct timespec dl = after_ms(CLOCK_REALTIME, 5);
    EXPECT(pthread_cond_timedwait(&c, m, &dl), ETIMEDOUT);
    dl.tv_nsec = 2000000000;
    EXPECT(pthread_cond_timedwait(&c, m, &dl), EINVAL);
    EXPECT(pthread_cond_signal(&c), 0);
    EXPECT(pthread_cond_broadcast(&c), 0);
    EXPECT(pthread_mutex_unlock(m), 0);
    EXPECT(pthread_mutex_clocklock(m, 12345, &dl), EINVAL);
    EXPECT(pthread_spin_lock(&s), 0);
    EXPECT(pthread_spin_trylock(&s), EBUSY);
    EXPECT(pthread_spin_unlock(&s), 0);
    CHECK(errno == 4242, "errno changed from 4242 to %d by pthread calls", errno);
    /* The same on a thread that blocks in the slow path and times out there. */
    EXPECT(pthread_mutex_lock(m), 0);
    join(spawn(errno_slow_thread, m), 30);
    EXPECT(pthread_mutex_unlock(m), 0);
    pthread_spin_destroy(&s);
    free_mutex(K_STATIC, m);
}

/* ---- checks: condition variables ------------------------------------------------------------ */

struct cv {
    pthread_mutex_t *m;
    pthread_cond_t c;
    int nwaiters;
    int waiting;       /* waiters inside the wait (under m) */
    long tokens;       /* signal rounds: posted, not yet taken */
    long taken;
    long gen;          /* broadcast rounds */
    long seen;
    long spurious;     /* returns from a wait with nothing to do: allowed, counted */
    int stop;
    int how;           /* 0 wait, 1 timedwait, 2 clockwait: per waiter, in turn */
};

/* Wait by one of the three calls, with a far deadline: a lost wake-up shows as a round that
 * does not complete, not as a timeout here. */
static int cv_wait(struct cv *v, int how)
{
    struct timespec far;
    switch (how % 3) {
    case 0: return pthread_cond_wait(&v->c, v->m);
    case 1: far = after_ms(CLOCK_REALTIME, 120000); return pthread_cond_timedwait(&v->c, v->m, &far);
    default: far = after_ms(CLOCK_MONOTONIC, 120000); return pthread_cond_clockwait(&v->c, v->m, CLOCK_MONOTONIC, &far);
    }
}

static void *token_waiter(void *arg)
{
    struct cv *v = arg;
    int how = __atomic_fetch_add(&v->how, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(v->m);
    while (!v->stop) {
        if (v->tokens > 0) {
            v->tokens--;
            STORE(v->taken, v->taken + 1);
            continue;
        }
        STORE(v->waiting, v->waiting + 1);
        int r = cv_wait(v, how);
        STORE(v->waiting, v->waiting - 1);
        if (r != 0)
            FAIL("cond wait (form %d) returned %s", how % 3, errname(r));
        if (v->tokens == 0 && !v->stop)
            v->spurious++;
    }
    pthread_mutex_unlock(v->m);
    return NULL;
}

static void cv_stop(struct cv *v, pthread_t *t, int n)
{
    pthread_mutex_lock(v->m);
    v->stop = 1;
    pthread_cond_broadcast(&v->c);
    pthread_mutex_unlock(v->m);
    for (int i = 0; i < n; i++)
        join(t[i], 30);
}

static void cv_init(struct cv *v, pthread_mutex_t *m, int static_cond)
{
    static const pthread_cond_t ci = PTHREAD_COND_INITIALIZER;
    memset(v, 0, sizeof *v);
    v->m = m;
    if (static_cond)
        memcpy(&v->c, &ci, sizeof ci);
    else
        EXPECT(pthread_cond_init(&v->c, NULL), 0);
}

/* Every waiter blocked; one token, one signal: exactly that token must be taken, each round. */
static void signal_rounds(pthread_mutex_t *m, int static_cond, int n, long rounds, const char *what)
{
    struct cv v;
    cv_init(&v, m, static_cond);
    pthread_t t[32];
    for (int i = 0; i < n; i++)
        t[i] = spawn(token_waiter, &v);
    for (long r = 0; r < rounds; r++) {
        state("%s: round %ld of %ld, all %d waiters to block", what, r, rounds, n);
        if (!WAIT_FOR(LOAD(v.waiting) == n, 10000)) {
            FAIL("%s: round %ld: only %d of %d waiters blocked after 10 s", what, r, LOAD(v.waiting), n);
            break;
        }
        pthread_mutex_lock(m);
        v.tokens++;
        EXPECT(pthread_cond_signal(&v.c), 0);
        pthread_mutex_unlock(m);
        state("%s: round %ld: the signalled token to be taken", what, r);
        if (!WAIT_FOR(LOAD(v.taken) == r + 1, 10000)) {
            FAIL("%s: lost wake-up: round %ld's signal woke none of %d waiters in 10 s", what, r, n);
            break;
        }
    }
    cv_stop(&v, t, n);
    if (!static_cond)
        EXPECT(pthread_cond_destroy(&v.c), 0);
}

static void *gen_waiter(void *arg)
{
    struct cv *v = arg;
    int how = __atomic_fetch_add(&v->how, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(v->m);
    while (!v->stop) {
        long g = v->gen;
        STORE(v->waiting, v->waiting + 1);
        while (v->gen == g && !v->stop) {
            int r = cv_wait(v, how);
            if (r != 0)
                FAIL("cond wait (form %d) returned %s", how % 3, errname(r));
            if (v->gen == g && !v->stop)
                v->spurious++;
        }
        STORE(v->waiting, v->waiting - 1);
        if (!v->stop)
            STORE(v->seen, v->seen + 1);
    }
    pthread_mutex_unlock(v->m);
    return NULL;
}

static void broadcast_rounds(pthread_mutex_t *m, int n, long rounds, const char *what)
{
    struct cv v;
    cv_init(&v, m, 0);
    pthread_t t[32];
    for (int i = 0; i < n; i++)
        t[i] = spawn(gen_waiter, &v);
    for (long r = 0; r < rounds; r++) {
        state("%s: round %ld, all %d waiters to block", what, r, n);
        if (!WAIT_FOR(LOAD(v.waiting) == n, 10000)) {
            FAIL("%s: round %ld: only %d of %d waiters blocked after 10 s", what, r, LOAD(v.waiting), n);
            break;
        }
        pthread_mutex_lock(m);
        v.gen++;
        EXPECT(pthread_cond_broadcast(&v.c), 0);
        pthread_mutex_unlock(m);
        state("%s: round %ld: %d waiters to wake", what, r, n);
        if (!WAIT_FOR(LOAD(v.seen) == (r + 1) * n, 10000)) {
            FAIL("%s: lost wake-up: round %ld's broadcast woke %ld of %d waiters in 10 s", what, r,
                 LOAD(v.seen) - r * n, n);
            break;
        }
    }
    cv_stop(&v, t, n);
    EXPECT(pthread_cond_destroy(&v.c), 0);
}

static void check_cond_signal(void)
{
    pthread_mutex_t *m = make_mutex(K_STATIC);
    signal_rounds(m, 1, 8, 600L * scale, "static cond, 8 waiters");
    free_mutex(K_STATIC, m);
    m = make_mutex(K_ADAPTIVE);
    signal_rounds(m, 0, 3, 300L * scale, "adaptive mutex, 3 waiters");
    free_mutex(K_ADAPTIVE, m);
}

static void check_cond_broadcast(void)
{
    pthread_mutex_t *m = make_mutex(K_NULLATTR);
    broadcast_rounds(m, 8, 200L * scale, "8 waiters");
    free_mutex(K_NULLATTR, m);
    m = make_mutex(K_STATIC);
    broadcast_rounds(m, 20, 50L * scale, "20 waiters");
    free_mutex(K_STATIC, m);
}

/* Producers signal (never broadcast) while consumers take: every token is taken, none twice. */
struct storm {
    struct cv v;
    long per_producer;
};

static void *storm_producer(void *arg)
{
    struct storm *s = arg;
    for (long i = 0; i < s->per_producer; i++) {
        pthread_mutex_lock(s->v.m);
        s->v.tokens++;
        pthread_cond_signal(&s->v.c);
        pthread_mutex_unlock(s->v.m);
        if (i % 64 == 0)
            sched_yield();
    }
    return NULL;
}

static void check_cond_storm(void)
{
    pthread_mutex_t *m = make_mutex(K_STATIC);
    struct storm s;
    cv_init(&s.v, m, 1);
    s.per_producer = 20000L * scale;
    pthread_t c[6], p[2];
    for (int i = 0; i < 6; i++)
        c[i] = spawn(token_waiter, &s.v);
    for (int i = 0; i < 2; i++)
        p[i] = spawn(storm_producer, &s);
    state("2 producers posting %ld tokens each", s.per_producer);
    for (int i = 0; i < 2; i++)
        join(p[i], 120);
    state("6 consumers to take the last tokens");
    if (!WAIT_FOR(LOAD(s.v.taken) == 2 * s.per_producer, 10000))
        FAIL("lost wake-up: %ld of %ld tokens taken 10 s after the last signal", LOAD(s.v.taken),
             2 * s.per_producer);
    cv_stop(&s.v, c, 6);
    CHECK(s.v.tokens == 0, "%ld tokens left", s.v.tokens);
    free_mutex(K_STATIC, m);
}

static void *cond_timeout_thread(void *arg)
{
    pthread_mutex_t *m = arg;
    return (void *)(intptr_t)pthread_mutex_trylock(m);
}

/* The mutex is held by the caller after a cond wait returned, whatever it returned. */
static void expect_held(pthread_mutex_t *m, const char *after)
{
    intptr_t r = (intptr_t)join(spawn(cond_timeout_thread, m), 10);
    CHECK(r == EBUSY, "after %s the mutex is not held (another thread's trylock: %s)", after,
          errname((int)r));
    if (r == 0)
        pthread_mutex_lock(m); /* restore the caller's view */
}

static void check_cond_timeouts(void)
{
    for (int k = 0; k < 3; k++) {
        enum kind kinds[] = {K_STATIC, K_NULLATTR, K_ADAPTIVE};
        state("cond timeouts with %s", kind_names[kinds[k]]);
        pthread_mutex_t *m = make_mutex(kinds[k]);
        pthread_cond_t c, cm;
        pthread_condattr_t a;
        EXPECT(pthread_cond_init(&c, NULL), 0);
        pthread_condattr_init(&a);
        EXPECT(pthread_condattr_setclock(&a, CLOCK_MONOTONIC), 0);
        EXPECT(pthread_cond_init(&cm, &a), 0); /* timedwait reads its deadline on MONOTONIC */
        pthread_condattr_destroy(&a);
        struct {
            pthread_cond_t *c;
            clockid_t clock;
            int form; /* 0 timedwait, 1 clockwait */
            const char *name;
        } cases[] = {{&c, CLOCK_REALTIME, 0, "timedwait"},
                     {&cm, CLOCK_MONOTONIC, 0, "timedwait on a MONOTONIC cond"},
                     {&c, CLOCK_MONOTONIC, 1, "clockwait(MONOTONIC)"},
                     {&c, CLOCK_REALTIME, 1, "clockwait(REALTIME)"}};
        EXPECT(pthread_mutex_lock(m), 0);
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            for (int ms = 40; ms >= -5; ms -= 45) {
                struct timespec dl = after_ms(cases[i].clock, ms);
                int r;
                /* A return of 0 with nothing signalled is a spurious wake-up: allowed. */
                do {
                    r = cases[i].form ? pthread_cond_clockwait(cases[i].c, m, cases[i].clock, &dl)
                                      : pthread_cond_timedwait(cases[i].c, m, &dl);
                } while (r == 0);
                CHECK(r == ETIMEDOUT, "%s %d ms returned %s", cases[i].name, ms, errname(r));
                int64_t now = ns_of(cases[i].clock);
                CHECK(now >= ts_ns(&dl), "%s %d ms returned %.3f ms before its deadline", cases[i].name,
                      ms, (ts_ns(&dl) - now) / 1e6);
                expect_held(m, cases[i].name);
            }
            struct timespec neg = {-1, 0};
            if (!cases[i].form)
                EXPECT(pthread_cond_timedwait(cases[i].c, m, &neg), ETIMEDOUT);
        }
        /* Bad arguments: EINVAL before anything is released. */
        struct timespec bad = after_ms(CLOCK_REALTIME, 1000);
        bad.tv_nsec = 1000000000;
        EXPECT(pthread_cond_timedwait(&c, m, &bad), EINVAL);
        bad.tv_nsec = -1;
        EXPECT(pthread_cond_timedwait(&c, m, &bad), EINVAL);
        struct timespec ok = after_ms(CLOCK_MONOTONIC, 1000);
        EXPECT(pthread_cond_clockwait(&c, m, CLOCK_PROCESS_CPUTIME_ID, &ok), EINVAL);
        EXPECT(pthread_cond_clockwait(&c, m, 12345, &ok), EINVAL);
        bad = ok;
        bad.tv_nsec = 1000000000;
        EXPECT(pthread_cond_clockwait(&c, m, CLOCK_MONOTONIC, &bad), EINVAL);
        expect_held(m, "an EINVAL");
        EXPECT(pthread_mutex_unlock(m), 0);
        EXPECT(pthread_cond_destroy(&c), 0);
        EXPECT(pthread_cond_destroy(&cm), 0);
        free_mutex(kinds[k], m);
    }
}

/* ---- checks: signals delivered to waiters ---------------------------------------------------- */

static int usr1_count;
static void on_usr1(int sig) { (void)sig; __atomic_add_fetch(&usr1_count, 1, __ATOMIC_RELAXED); }

struct sigw {
    pthread_mutex_t *m;
    pthread_cond_t c;
    int go, phase, done, main_holds;
    long spurious;
    int result;
};

static void *sig_cond_waiter(void *arg)
{
    struct sigw *s = arg;
    pthread_mutex_lock(s->m);
    STORE(s->phase, 1);
    while (!s->go) {
        int r = pthread_cond_wait(&s->c, s->m);
        if (r != 0)
            FAIL("pthread_cond_wait interrupted by signals returned %s", errname(r));
        if (pthread_mutex_trylock(s->m) != EBUSY)
            FAIL("pthread_cond_wait returned without the mutex");
        if (!s->go)
            s->spurious++;
    }
    pthread_mutex_unlock(s->m);
    return NULL;
}

static void *sig_lock_waiter(void *arg)
{
    struct sigw *s = arg;
    STORE(s->phase, 1);
    int r = pthread_mutex_lock(s->m);
    if (r != 0)
        FAIL("pthread_mutex_lock interrupted by signals returned %s", errname(r));
    if (LOAD(s->main_holds))
        FAIL("pthread_mutex_lock returned while another thread held the mutex");
    pthread_mutex_unlock(s->m);
    /* A timed lock interrupted by signals still waits out its deadline. */
    return NULL;
}

static void *sig_timed_waiter(void *arg)
{
    struct sigw *s = arg;
    STORE(s->phase, 1);
    struct timespec dl = after_ms(CLOCK_REALTIME, 200);
    int r = pthread_mutex_timedlock(s->m, &dl);
    if (r != ETIMEDOUT)
        FAIL("timedlock interrupted by signals returned %s, expected ETIMEDOUT", errname(r));
    if (ns_of(CLOCK_REALTIME) < ts_ns(&dl))
        FAIL("timedlock interrupted by signals returned before its deadline");
    pthread_mutex_lock(s->m);      /* held by main: blocked again, interrupted again */
    pthread_mutex_unlock(s->m);
    dl = after_ms(CLOCK_REALTIME, 200);
    pthread_mutex_lock(s->m);
    do
        r = pthread_cond_timedwait(&s->c, s->m, &dl);
    while (r == 0);
    if (r != ETIMEDOUT)
        FAIL("cond_timedwait interrupted by signals returned %s, expected ETIMEDOUT", errname(r));
    if (ns_of(CLOCK_REALTIME) < ts_ns(&dl))
        FAIL("cond_timedwait interrupted by signals returned before its deadline");
    pthread_mutex_unlock(s->m);
    STORE(s->done, 1);
    return NULL;
}

static void bombard(pthread_t t, int n)
{
    for (int i = 0; i < n; i++) {
        pthread_kill(t, SIGUSR1);
        sleep_us(200);
    }
}

static void check_signals_during_waits(void)
{
    /* No SA_RESTART: a handler interrupts the futex wait with EINTR, which the pthread calls
     * must never return (they restart, or return 0 from a cond wait: a spurious wake-up). */
    struct sigaction sa = {.sa_handler = on_usr1}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old);
    struct sigw s = {0};
    s.m = make_mutex(K_STATIC);
    pthread_cond_init(&s.c, NULL);

    state("a cond waiter receiving signals");
    pthread_t t = spawn(sig_cond_waiter, &s);
    WAIT_FOR(LOAD(s.phase) == 1, 10000);
    bombard(t, 200);
    pthread_mutex_lock(s.m);
    s.go = 1;
    pthread_cond_signal(&s.c);
    pthread_mutex_unlock(s.m);
    join(t, 30);

    state("a lock waiter receiving signals");
    s.phase = 0;
    pthread_mutex_lock(s.m);
    STORE(s.main_holds, 1);
    t = spawn(sig_lock_waiter, &s);
    WAIT_FOR(LOAD(s.phase) == 1, 10000);
    sleep_ms(5);
    bombard(t, 200);
    STORE(s.main_holds, 0);
    pthread_mutex_unlock(s.m);
    join(t, 30);

    state("timed waits receiving signals");
    s.phase = 0;
    pthread_mutex_lock(s.m);
    t = spawn(sig_timed_waiter, &s);
    WAIT_FOR(LOAD(s.phase) == 1, 10000);
    bombard(t, 400); /* ~ 80+ ms of 200: inside the timedlock */
    sleep_ms(150);
    pthread_mutex_unlock(s.m);
    while (!LOAD(s.done) && pthread_kill(t, SIGUSR1) == 0 && !LOAD(s.done))
        sleep_us(500);
    join(t, 30);
    CHECK(LOAD(usr1_count) > 0, "no signal was delivered: the check proves nothing");
    sigaction(SIGUSR1, &old, NULL);
    pthread_cond_destroy(&s.c);
    free_mutex(K_STATIC, s.m);
}

/* ---- checks: cancellation --------------------------------------------------------------------- */

struct canc {
    pthread_mutex_t *m;
    pthread_cond_t c;
    int form, phase, cleanup_ran, cleanup_held, token, took;
};

static void canc_cleanup(void *arg)
{
    struct canc *k = arg;
    /* Runs with the mutex held (POSIX: the mutex is re-acquired before the handlers run). */
    int r = pthread_mutex_trylock(k->m);
    STORE(k->cleanup_held, r == EBUSY);
    if (r == 0)
        pthread_mutex_unlock(k->m);
    STORE(k->cleanup_ran, 1);
    pthread_mutex_unlock(k->m);
}

static void *canc_waiter(void *arg)
{
    struct canc *k = arg;
    pthread_mutex_lock(k->m);
    pthread_cleanup_push(canc_cleanup, k);
    STORE(k->phase, 1);
    while (!k->token) {
        struct timespec far;
        int r;
        switch (k->form) {
        case 0: r = pthread_cond_wait(&k->c, k->m); break;
        case 1: far = after_ms(CLOCK_REALTIME, 60000); r = pthread_cond_timedwait(&k->c, k->m, &far); break;
        default: far = after_ms(CLOCK_MONOTONIC, 60000); r = pthread_cond_clockwait(&k->c, k->m, CLOCK_MONOTONIC, &far); break;
        }
        if (r != 0)
            FAIL("cond wait form %d returned %s", k->form, errname(r));
    }
    k->token = 0;
    STORE(k->took, k->took + 1);
    pthread_cleanup_pop(1);
    return NULL;
}

static void check_cond_cancel(void)
{
    static const char *const forms[] = {"pthread_cond_wait", "pthread_cond_timedwait", "pthread_cond_clockwait"};
    for (int form = 0; form < 3; form++) {
        for (enum kind kd = K_NULLATTR; kd < NKINDS; kd += 4) {
            struct canc k = {.form = form};
            k.m = make_mutex(kd);
            pthread_cond_init(&k.c, NULL);
            state("cancel a waiter in %s (%s)", forms[form], kind_names[kd]);
            pthread_t t = spawn(canc_waiter, &k);
            WAIT_FOR(LOAD(k.phase) == 1, 10000);
            pthread_mutex_lock(k.m); /* the waiter is inside the wait once we hold the mutex */
            pthread_mutex_unlock(k.m);
            EXPECT(pthread_cancel(t), 0);
            void *ret = join(t, 30);
            CHECK(ret == PTHREAD_CANCELED, "%s is not a cancellation point (the thread returned)", forms[form]);
            CHECK(LOAD(k.cleanup_ran), "%s: cleanup handler did not run", forms[form]);
            CHECK(LOAD(k.cleanup_held), "%s: cleanup handler ran without the mutex held", forms[form]);
            EXPECT(pthread_mutex_trylock(k.m), 0); /* released by the handler */
            pthread_mutex_unlock(k.m);
            EXPECT(pthread_cond_destroy(&k.c), 0);
            free_mutex(kd, k.m);
        }
    }
}

/* A waiter cancelled while a signal is directed at the cond must not eat the signal when
 * another thread waits (POSIX pthread_cond_wait, "Cancellation"). */
static void check_cond_cancel_keeps_signal(void)
{
    for (long round = 0; round < 60L * scale; round++) {
        struct canc k = {0};
        k.m = make_mutex(K_STATIC);
        pthread_cond_init(&k.c, NULL);
        state("round %ld: two waiters to block", round);
        k.form = (int)(round % 3);
        pthread_t a = spawn(canc_waiter, &k);
        pthread_t b = spawn(canc_waiter, &k);
        WAIT_FOR(LOAD(k.phase) == 1, 10000);
        sleep_us(500);
        pthread_mutex_lock(k.m);
        k.token = 1;
        pthread_cond_signal(&k.c);
        pthread_cancel(a);
        pthread_mutex_unlock(k.m);
        state("round %ld: the signalled token to be taken", round);
        if (!WAIT_FOR(LOAD(k.took) == 1, 10000)) {
            FAIL("round %ld: the signal was lost with the cancelled waiter", round);
        }
        pthread_cancel(b); /* whichever still waits */
        join(a, 30);
        join(b, 30);
        pthread_cond_destroy(&k.c);
        free_mutex(K_STATIC, k.m);
        if (LOAD(nfail))
            break;
    }
}

struct nc {
    pthread_mutex_t *m;
    pthread_spinlock_t *s;
    int phase, acquired;
};

static void *nc_thread(void *arg)
{
    struct nc *n = arg;
    STORE(n->phase, 1);
    if (n->m) {
        pthread_mutex_lock(n->m); /* not a cancellation point: must return holding the lock */
        STORE(n->acquired, 1);
        pthread_mutex_unlock(n->m);
    } else {
        pthread_spin_lock(n->s);
        STORE(n->acquired, 1);
        pthread_spin_unlock(n->s);
    }
    pthread_testcancel();
    return NULL;
}

static void check_lock_not_cancellation_point(void)
{
    for (int spin = 0; spin < 2; spin++) {
        struct nc n = {0};
        pthread_spinlock_t s;
        pthread_spin_init(&s, 0);
        if (spin) {
            n.s = &s;
            pthread_spin_lock(&s);
        } else {
            n.m = make_mutex(K_STATIC);
            pthread_mutex_lock(n.m);
        }
        pthread_t t = spawn(nc_thread, &n);
        WAIT_FOR(LOAD(n.phase) == 1, 10000);
        sleep_ms(20);
        EXPECT(pthread_cancel(t), 0);
        sleep_ms(20);
        CHECK(!LOAD(n.acquired), "acquired a held lock");
        void *ret;
        EXPECT(pthread_tryjoin_np(t, &ret), EBUSY); /* still blocked: not cancelled there */
        if (spin)
            pthread_spin_unlock(&s);
        else
            pthread_mutex_unlock(n.m);
        ret = join(t, 30);
        CHECK(LOAD(n.acquired), "%s was acted on as a cancellation point",
              spin ? "pthread_spin_lock" : "pthread_mutex_lock");
        CHECK(ret == PTHREAD_CANCELED, "the thread was not cancelled at pthread_testcancel");
        if (!spin)
            free_mutex(K_STATIC, n.m);
        pthread_spin_destroy(&s);
    }
}

/* ---- checks: kinds that pass through to glibc ----------------------------------------------- */

static pthread_mutex_t st_recursive = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_mutex_t st_errorcheck = PTHREAD_ERRORCHECK_MUTEX_INITIALIZER_NP;

static pthread_mutex_t *make_typed(int type, int robust, int protocol)
{
    pthread_mutex_t *m = calloc(1, sizeof *m);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    EXPECT(pthread_mutexattr_settype(&a, type), 0);
    if (robust)
        EXPECT(pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST), 0);
    if (protocol)
        EXPECT(pthread_mutexattr_setprotocol(&a, protocol), 0);
    EXPECT(pthread_mutex_init(m, &a), 0);
    pthread_mutexattr_destroy(&a);
    return m;
}

static void recursive_contract(pthread_mutex_t *m, const char *what)
{
    state("recursive: %s", what);
    EXPECT(pthread_mutex_unlock(m), EPERM); /* not locked */
    EXPECT(pthread_mutex_lock(m), 0);
    EXPECT(pthread_mutex_lock(m), 0);
    EXPECT(pthread_mutex_trylock(m), 0);
    struct timespec dl = after_ms(CLOCK_REALTIME, 1000);
    EXPECT(pthread_mutex_timedlock(m, &dl), 0);
    EXPECT(trylock_elsewhere(m), EBUSY);
    EXPECT(unlock_elsewhere(m), EPERM);
    for (int i = 0; i < 4; i++)
        EXPECT(pthread_mutex_unlock(m), 0);
    EXPECT(pthread_mutex_unlock(m), EPERM);
    EXPECT(trylock_elsewhere(m), 0);
}

/* owner_trylock: what the owner's trylock returns (EBUSY; EDEADLK for a PI error-checking
 * mutex, as glibc has it). */
static void errorcheck_contract(pthread_mutex_t *m, const char *what, int owner_trylock)
{
    state("error-checking: %s", what);
    EXPECT(pthread_mutex_unlock(m), EPERM);
    EXPECT(pthread_mutex_lock(m), 0);
    EXPECT(pthread_mutex_lock(m), EDEADLK);
    struct timespec dl = after_ms(CLOCK_REALTIME, 1000);
    EXPECT(pthread_mutex_timedlock(m, &dl), EDEADLK);
    EXPECT(pthread_mutex_trylock(m), owner_trylock);
    EXPECT(trylock_elsewhere(m), EBUSY);
    EXPECT(unlock_elsewhere(m), EPERM);
    EXPECT(pthread_mutex_unlock(m), 0);
    EXPECT(pthread_mutex_unlock(m), EPERM);
}

static void check_passthrough_recursive_errorcheck(void)
{
    recursive_contract(&st_recursive, "PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP");
    pthread_mutex_t *m = make_typed(PTHREAD_MUTEX_RECURSIVE, 0, 0);
    recursive_contract(m, "attr recursive");
    run_exclusion(m, 4, 5000L * scale, "recursive");
    pthread_mutex_destroy(m);
    free(m);
    errorcheck_contract(&st_errorcheck, "PTHREAD_ERRORCHECK_MUTEX_INITIALIZER_NP", EBUSY);
    m = make_typed(PTHREAD_MUTEX_ERRORCHECK, 0, 0);
    errorcheck_contract(m, "attr errorcheck", EBUSY);
    run_exclusion(m, 4, 5000L * scale, "errorcheck");
    pthread_mutex_destroy(m);
    free(m);
}

static void *die_holding(void *m)
{
    pthread_mutex_lock(m);
    return NULL; /* exits with the mutex locked */
}

static void check_passthrough_robust(void)
{
    for (int type = 0; type < 2; type++) {
        pthread_mutex_t *m = make_typed(type ? PTHREAD_MUTEX_ERRORCHECK : PTHREAD_MUTEX_NORMAL, 1, 0);
        state("robust %s: owner dies", type ? "errorcheck" : "normal");
        join(spawn(die_holding, m), 10);
        EXPECT(pthread_mutex_lock(m), EOWNERDEAD);
        EXPECT(pthread_mutex_consistent(m), 0);
        EXPECT(pthread_mutex_unlock(m), 0);
        EXPECT(pthread_mutex_lock(m), 0);
        EXPECT(pthread_mutex_unlock(m), 0);
        join(spawn(die_holding, m), 10);
        EXPECT(pthread_mutex_trylock(m), EOWNERDEAD);
        EXPECT(pthread_mutex_unlock(m), 0); /* not made consistent: now unrecoverable */
        EXPECT(pthread_mutex_lock(m), ENOTRECOVERABLE);
        EXPECT(pthread_mutex_trylock(m), ENOTRECOVERABLE);
        pthread_mutex_destroy(m);
        free(m);
        m = make_typed(type ? PTHREAD_MUTEX_ERRORCHECK : PTHREAD_MUTEX_NORMAL, 1, 0);
        run_exclusion(m, 4, 5000L * scale, "robust");
        pthread_mutex_destroy(m);
        free(m);
    }
}

static void check_passthrough_pi(void)
{
    pthread_mutex_t *m = make_typed(PTHREAD_MUTEX_NORMAL, 0, PTHREAD_PRIO_INHERIT);
    state("priority inheritance");
    EXPECT(pthread_mutex_lock(m), 0);
    EXPECT(trylock_elsewhere(m), EBUSY);
    EXPECT(unlock_elsewhere(m), EPERM); /* PI mutexes know their owner */
    EXPECT(pthread_mutex_unlock(m), 0);
    run_exclusion(m, 4, 5000L * scale, "priority-inheritance");
    pthread_mutex_destroy(m);
    free(m);
    m = make_typed(PTHREAD_MUTEX_ERRORCHECK, 0, PTHREAD_PRIO_INHERIT);
    errorcheck_contract(m, "PI errorcheck", EDEADLK);
    pthread_mutex_destroy(m);
    free(m);
}

/* A cond works with every mutex kind: the waiter returns holding that mutex. */
struct handshake {
    pthread_mutex_t *m;
    pthread_cond_t c;
    int ready, go;
};

static void *hs_waiter(void *arg)
{
    struct handshake *h = arg;
    EXPECT(pthread_mutex_lock(h->m), 0);
    STORE(h->ready, 1);
    while (!h->go)
        EXPECT(pthread_cond_wait(&h->c, h->m), 0);
    EXPECT(pthread_mutex_unlock(h->m), 0);
    return NULL;
}

static void check_cond_with_passthrough_mutexes(void)
{
    struct {
        int type, robust, proto;
        const char *name;
    } kinds[] = {{PTHREAD_MUTEX_RECURSIVE, 0, 0, "recursive"},
                 {PTHREAD_MUTEX_ERRORCHECK, 0, 0, "errorcheck"},
                 {PTHREAD_MUTEX_NORMAL, 1, 0, "robust"},
                 {PTHREAD_MUTEX_NORMAL, 0, PTHREAD_PRIO_INHERIT, "priority-inheritance"}};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        state("cond with a %s mutex", kinds[i].name);
        for (int round = 0; round < 20; round++) {
            struct handshake h = {0};
            h.m = make_typed(kinds[i].type, kinds[i].robust, kinds[i].proto);
            pthread_cond_init(&h.c, NULL);
            pthread_t t = spawn(hs_waiter, &h);
            WAIT_FOR(LOAD(h.ready), 10000);
            pthread_mutex_lock(h.m);
            h.go = 1;
            pthread_cond_signal(&h.c);
            EXPECT(pthread_mutex_unlock(h.m), 0);
            join(t, 10);
            /* With the waiter gone, the mutex is free (its unlock after the wait was valid for
             * the owner: EPERM from errorcheck/PI/robust would have been reported). */
            EXPECT(trylock_elsewhere(h.m), 0);
            struct timespec dl = after_ms(CLOCK_REALTIME, 5);
            EXPECT(pthread_mutex_lock(h.m), 0);
            EXPECT(pthread_cond_timedwait(&h.c, h.m, &dl), ETIMEDOUT);
            if (kinds[i].type == PTHREAD_MUTEX_ERRORCHECK)
                EXPECT(pthread_mutex_lock(h.m), EDEADLK); /* re-acquired by this thread */
            EXPECT(pthread_mutex_unlock(h.m), 0);
            pthread_cond_destroy(&h.c);
            pthread_mutex_destroy(h.m);
            free(h.m);
        }
    }
}

/* ---- checks: spinlocks ------------------------------------------------------------------------ */

static void *spin_thread(void *arg)
{
    struct excl *e = arg;
    for (long i = 0; i < e->iters; i++) {
        int r;
        if (i & 1) {
            while ((r = pthread_spin_trylock(e->s)) == EBUSY)
                ;
        } else {
            r = pthread_spin_lock(e->s);
        }
        if (r != 0) {
            FAIL("spin acquire returned %s", errname(r));
            return NULL;
        }
        excl_enter(e);
        e->counter++;
        excl_leave(e);
        pthread_spin_unlock(e->s);
    }
    return NULL;
}

static void check_spin(void)
{
    for (int shared = 0; shared < 2; shared++) {
        pthread_spinlock_t s;
        EXPECT(pthread_spin_init(&s, shared ? PTHREAD_PROCESS_SHARED : PTHREAD_PROCESS_PRIVATE), 0);
        EXPECT(pthread_spin_lock(&s), 0);
        EXPECT(pthread_spin_trylock(&s), EBUSY);
        EXPECT(pthread_spin_unlock(&s), 0);
        /* Threads <= CPUs and more: a spinning waiter must still get through (the owner runs). */
        for (int n = 2; n <= 4; n += 2) {
            struct excl e = {.s = &s, .iters = 20000L * scale / n};
            pthread_t t[4];
            state("%d threads on a spinlock", n);
            for (int i = 0; i < n; i++)
                t[i] = spawn(spin_thread, &e);
            for (int i = 0; i < n; i++)
                join(t[i], 120);
            CHECK(!e.overlap, "spinlock: two owners at once");
            CHECK(e.counter == n * e.iters, "spinlock: %ld increments, expected %ld", e.counter, n * e.iters);
        }
        EXPECT(pthread_spin_destroy(&s), 0);
    }
}

/* ---- checks: process-shared objects and fork -------------------------------------------------- */

struct shared_area {
    pthread_mutex_t m;
    pthread_cond_t c;
    pthread_spinlock_t s;
    long counter, scounter;
    int ready, go, overlap, inside;
};

static int wait_child(pid_t pid, int seconds, const char *what)
{
    int st = 0;
    int64_t end = ns_of(CLOCK_MONOTONIC) + (int64_t)seconds * 1000000000;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0) {
            FAIL("%s: waitpid: %s", what, strerror(errno));
            return -1;
        }
        if (ns_of(CLOCK_MONOTONIC) > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            FAIL("%s: the child did not finish within %d s (killed)", what, seconds);
            return -1;
        }
        sleep_ms(1);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        FAIL("%s: child %s %d", what, WIFEXITED(st) ? "exited with" : "killed by signal",
             WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        return -1;
    }
    return 0;
}

static void shared_work(struct shared_area *a, long iters)
{
    for (long i = 0; i < iters; i++) {
        pthread_mutex_lock(&a->m);
        if (__atomic_add_fetch(&a->inside, 1, __ATOMIC_ACQ_REL) != 1)
            STORE(a->overlap, 1);
        a->counter++;
        __atomic_sub_fetch(&a->inside, 1, __ATOMIC_ACQ_REL);
        pthread_mutex_unlock(&a->m);
        pthread_spin_lock(&a->s);
        a->scounter++;
        pthread_spin_unlock(&a->s);
    }
}

static void check_process_shared(void)
{
    struct shared_area *a = mmap(NULL, sizeof *a, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) {
        FAIL("mmap: %s", strerror(errno));
        return;
    }
    memset(a, 0, sizeof *a);
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    pthread_mutexattr_init(&ma);
    EXPECT(pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED), 0);
    EXPECT(pthread_mutex_init(&a->m, &ma), 0);
    pthread_condattr_init(&ca);
    EXPECT(pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED), 0);
    EXPECT(pthread_cond_init(&a->c, &ca), 0);
    EXPECT(pthread_spin_init(&a->s, PTHREAD_PROCESS_SHARED), 0);
    long iters = 5000L * scale;
    enum { NCHILD = 3 };
    pid_t pids[NCHILD];
    for (int i = 0; i < NCHILD; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            /* Child: report ready through the shared cond, wait for go, then contend. */
            pthread_mutex_lock(&a->m);
            a->ready++;
            pthread_cond_broadcast(&a->c);
            while (!a->go) {
                struct timespec dl = after_ms(CLOCK_REALTIME, 30000);
                if (pthread_cond_timedwait(&a->c, &a->m, &dl) == ETIMEDOUT)
                    _exit(7); /* lost wake-up across processes */
            }
            pthread_mutex_unlock(&a->m);
            shared_work(a, iters);
            _exit(0);
        }
    }
    state("%d children to report ready on a process-shared cond", NCHILD);
    pthread_mutex_lock(&a->m);
    while (a->ready < NCHILD) {
        struct timespec dl = after_ms(CLOCK_REALTIME, 30000);
        if (pthread_cond_timedwait(&a->c, &a->m, &dl) == ETIMEDOUT) {
            FAIL("process-shared cond: %d of %d children seen ready in 30 s", a->ready, NCHILD);
            break;
        }
    }
    a->go = 1;
    pthread_cond_broadcast(&a->c);
    pthread_mutex_unlock(&a->m);
    shared_work(a, iters);
    for (int i = 0; i < NCHILD; i++)
        wait_child(pids[i], 120, "process-shared");
    CHECK(!a->overlap, "process-shared mutex: two owners at once");
    CHECK(a->counter == (NCHILD + 1) * iters, "process-shared mutex: %ld increments, expected %ld",
          a->counter, (NCHILD + 1) * iters);
    CHECK(a->scounter == (NCHILD + 1) * iters, "process-shared spinlock: %ld increments, expected %ld",
          a->scounter, (NCHILD + 1) * iters);
    pthread_mutex_destroy(&a->m);
    pthread_cond_destroy(&a->c);
    pthread_spin_destroy(&a->s);
    munmap(a, sizeof *a);
}

/* fork in the middle: threads hammer locks and conds while the main thread forks; the child
 * (whose only thread is the forking one) uses fresh locks, the static ones it never touched,
 * a mutex the atfork handlers held across the fork, and creates threads of its own. */
static pthread_mutex_t atfork_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t child_static = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t child_static_cond = PTHREAD_COND_INITIALIZER;
static void atfork_prepare(void) { pthread_mutex_lock(&atfork_mutex); }
static void atfork_release(void) { pthread_mutex_unlock(&atfork_mutex); }

struct hammer {
    pthread_mutex_t m;
    pthread_cond_t c;
    long ping;
    int stop;
    long ops;
};

static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    long mine = 0;
    while (!LOAD(h->stop)) {
        pthread_mutex_lock(&h->m);
        h->ping++;
        pthread_cond_signal(&h->c);
        if ((h->ping & 7) == 0) {
            struct timespec dl = after_ms(CLOCK_REALTIME, 1);
            pthread_cond_timedwait(&h->c, &h->m, &dl);
        }
        pthread_mutex_unlock(&h->m);
        mine++;
    }
    __atomic_add_fetch(&h->ops, mine, __ATOMIC_RELAXED);
    return NULL;
}

static int child_checks(void)
{
    /* Exit codes: the first check that failed (the parent names it). */
    if (pthread_mutex_trylock(&atfork_mutex) != 0)
        return 10;
    pthread_mutex_unlock(&atfork_mutex);
    if (pthread_mutex_lock(&child_static) != 0 || pthread_mutex_unlock(&child_static) != 0)
        return 11;
    pthread_mutex_t *m = make_mutex(K_NULLATTR);
    struct excl e = {.m = m, .iters = 3000};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        if (pthread_create(&t[i], NULL, excl_thread, &e) != 0)
            return 12;
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    if (e.overlap || e.counter != 9000)
        return 13;
    struct cv v;
    cv_init(&v, &child_static, 1);
    memcpy(&v.c, &child_static_cond, sizeof v.c);
    pthread_t w[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&w[i], NULL, token_waiter, &v);
    for (long r = 0; r < 50; r++) {
        if (!WAIT_FOR(LOAD(v.waiting) == 2, 10000))
            return 14;
        pthread_mutex_lock(&child_static);
        v.tokens++;
        pthread_cond_signal(&v.c);
        pthread_mutex_unlock(&child_static);
        if (!WAIT_FOR(LOAD(v.taken) == r + 1, 10000))
            return 15; /* lost wake-up in the child */
    }
    pthread_mutex_lock(&child_static);
    v.stop = 1;
    pthread_cond_broadcast(&v.c);
    pthread_mutex_unlock(&child_static);
    for (int i = 0; i < 2; i++)
        pthread_join(w[i], NULL);
    struct timespec dl = after_ms(CLOCK_MONOTONIC, 20);
    pthread_mutex_lock(m);
    if (pthread_cond_clockwait(&child_static_cond, m, CLOCK_MONOTONIC, &dl) != ETIMEDOUT)
        return 16;
    pthread_mutex_unlock(m);
    return 0;
}

static void check_fork_in_the_middle(void)
{
    static int registered;
    if (!registered++)
        pthread_atfork(atfork_prepare, atfork_release, atfork_release);
    struct hammer h = {.m = PTHREAD_MUTEX_INITIALIZER, .c = PTHREAD_COND_INITIALIZER};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        t[i] = spawn(hammer_thread, &h);
    int forks = 8 + 4 * scale;
    for (int i = 0; i < forks && !LOAD(nfail); i++) {
        sleep_ms(5);
        state("fork %d of %d while 4 threads hammer a mutex and a cond", i, forks);
        pid_t pid = fork();
        if (pid < 0) {
            FAIL("fork: %s", strerror(errno));
            break;
        }
        if (pid == 0) {
            alarm(60);
            _exit(child_checks());
        }
        int st = 0;
        int64_t end = ns_of(CLOCK_MONOTONIC) + 60000000000LL;
        while (waitpid(pid, &st, WNOHANG) == 0) {
            if (ns_of(CLOCK_MONOTONIC) > end) {
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                FAIL("fork %d: the child did not finish in 60 s", i);
                break;
            }
            sleep_ms(1);
        }
        static const char *const what[] = {"a mutex held by the atfork handlers is not free",
                                           "a static mutex", "pthread_create", "exclusion",
                                           "waiters never blocked", "a lost wake-up",
                                           "a clockwait timeout"};
        if (WIFSIGNALED(st))
            FAIL("fork %d: the child was killed by signal %d", i, WTERMSIG(st));
        else if (WEXITSTATUS(st) >= 10 && WEXITSTATUS(st) <= 16)
            FAIL("fork %d: in the child: %s", i, what[WEXITSTATUS(st) - 10]);
        else if (WEXITSTATUS(st) != 0)
            FAIL("fork %d: the child exited with %d", i, WEXITSTATUS(st));
    }
    STORE(h.stop, 1);
    for (int i = 0; i < 4; i++)
        join(t[i], 30);
    CHECK(h.ops > 0, "the hammer threads made no progress");
    /* The parent's locks still work after all those forks. */
    run_exclusion(&h.m, 4, 2000, "the hammered mutex, after the forks");
}

/* ---- checks: many threads ------------------------------------------------------------------- */

static pthread_mutex_t many_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t many_c = PTHREAD_COND_INITIALIZER;
static int many_arrived, many_n, many_left;

static void *many_thread(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&many_m);
    if (++many_arrived == many_n)
        pthread_cond_broadcast(&many_c);
    while (many_arrived < many_n) {
        struct timespec dl = after_ms(CLOCK_REALTIME, 60000);
        if (pthread_cond_timedwait(&many_c, &many_m, &dl) == ETIMEDOUT) {
            FAIL("a thread waited 60 s at the barrier: %d of %d arrived", many_arrived, many_n);
            break;
        }
    }
    many_left++;
    pthread_mutex_unlock(&many_m);
    return NULL;
}

static void check_many_threads(void)
{
    /* A thousand threads alive at once, all on one static mutex and one static cond. */
    many_n = 1000;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    pthread_t *t = calloc(many_n, sizeof *t);
    int created = 0;
    for (; created < many_n; created++) {
        int r = pthread_create(&t[created], &a, many_thread, NULL);
        if (r != 0) {
            FAIL("pthread_create of thread %d: %s", created, strerror(r));
            pthread_mutex_lock(&many_m);
            many_n = created; /* release those that exist */
            pthread_cond_broadcast(&many_c);
            pthread_mutex_unlock(&many_m);
            break;
        }
        state("%d of %d threads created, %d arrived", created + 1, many_n, LOAD(many_arrived));
    }
    for (int i = 0; i < created; i++)
        join(t[i], 120);
    CHECK(many_left == created, "%d of %d threads passed the barrier", many_left, created);
    pthread_attr_destroy(&a);
    free(t);
}

/* Thread churn: thousands of short-lived threads, each contending on a static mutex and
 * waiting on a cond once; whatever a lock implementation keeps per thread must be recycled
 * when threads exit, and a new thread must not inherit a dead one's state. */
static pthread_mutex_t churn_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t churn_c = PTHREAD_COND_INITIALIZER;
static long churn_count, churn_posted;

static void *churn_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 10; i++) {
        pthread_mutex_lock(&churn_m);
        churn_count++;
        pthread_mutex_unlock(&churn_m);
    }
    pthread_mutex_lock(&churn_m);
    while (churn_posted == 0) {
        struct timespec dl = after_ms(CLOCK_MONOTONIC, 30000);
        if (pthread_cond_clockwait(&churn_c, &churn_m, CLOCK_MONOTONIC, &dl) == ETIMEDOUT) {
            FAIL("a churn thread waited 30 s for its token: a lost wake-up");
            pthread_mutex_unlock(&churn_m);
            return NULL;
        }
    }
    churn_posted--;
    pthread_mutex_unlock(&churn_m);
    return NULL;
}

static void check_thread_churn(void)
{
    enum { BATCH = 50 };
    int batches = 60 * scale;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    for (int b = 0; b < batches && !LOAD(nfail); b++) {
        pthread_t t[BATCH];
        state("batch %d of %d: %d threads", b, batches, BATCH);
        for (int i = 0; i < BATCH; i++)
            if (pthread_create(&t[i], &a, churn_thread, NULL) != 0) {
                FAIL("pthread_create failed in batch %d", b);
                _exit(1);
            }
        for (int i = 0; i < BATCH; i++) {
            pthread_mutex_lock(&churn_m);
            churn_posted++;
            pthread_cond_signal(&churn_c);
            pthread_mutex_unlock(&churn_m);
        }
        for (int i = 0; i < BATCH; i++)
            join(t[i], 60);
    }
    pthread_attr_destroy(&a);
    CHECK(churn_count == 10L * BATCH * batches, "%ld increments from %d threads, expected %ld",
          churn_count, BATCH * batches, 10L * BATCH * batches);
    CHECK(churn_posted == 0, "%ld tokens never taken", churn_posted);
}

/* ---- the table -------------------------------------------------------------------------------- */

static const struct check {
    const char *name;
    void (*fn)(void);
    int bound_s; /* the watchdog's */
} checks[] = {
    {"single_thread", check_single_thread, 30},
    {"mutex_basic", check_mutex_basic, 60},
    {"mutex_exclusion", check_mutex_exclusion, 240},
    {"mutex_timeouts", check_mutex_timeouts, 120},
    {"errno_untouched", check_errno_untouched, 30},
    {"cond_signal_wakes_one", check_cond_signal, 180},
    {"cond_broadcast_wakes_all", check_cond_broadcast, 180},
    {"cond_signal_storm", check_cond_storm, 180},
    {"cond_timeouts", check_cond_timeouts, 120},
    {"signals_during_waits", check_signals_during_waits, 120},
    {"cond_cancel_runs_cleanup_with_mutex", check_cond_cancel, 120},
    {"cond_cancel_keeps_signal", check_cond_cancel_keeps_signal, 180},
    {"lock_not_cancellation_point", check_lock_not_cancellation_point, 60},
    {"passthrough_recursive_errorcheck", check_passthrough_recursive_errorcheck, 120},
    {"passthrough_robust", check_passthrough_robust, 120},
    {"passthrough_priority_inheritance", check_passthrough_pi, 120},
    {"cond_with_passthrough_mutexes", check_cond_with_passthrough_mutexes, 120},
    {"spinlocks", check_spin, 120},
    {"process_shared", check_process_shared, 180},
    {"fork_in_the_middle", check_fork_in_the_middle, 240},
    {"many_threads", check_many_threads, 180},
    {"thread_churn", check_thread_churn, 180},
};

/* -k A,B,...: the checks whose name contains any of the substrings. */
static int matches(const char *name, const char *list)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (strstr(name, t))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "lk:s:")) != -1) {
        switch (opt) {
        case 'l':
            for (size_t i = 0; i < sizeof checks / sizeof *checks; i++)
                printf("%s\n", checks[i].name);
            return 0;
        case 'k': only = optarg; break;
        case 's': scale = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-l] [-k SUBSTRING,...] [-s SCALE]\n", argv[0]);
            return 2;
        }
    }
    if (scale < 1 || scale > 1000) {
        fprintf(stderr, "conformance: -s %d: the scale must be in 1..1000\n", scale);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, watchdog);
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        if (only && !matches(checks[i].name, only))
            continue;
        cur_check = checks[i].name;
        state("starting");
        nfail = 0;
        fail_msg[0] = 0;
        alarm(checks[i].bound_s * (scale < 4 ? 1 : scale / 2));
        int64_t t0 = ns_of(CLOCK_MONOTONIC);
        checks[i].fn();
        alarm(0);
        double ms = (ns_of(CLOCK_MONOTONIC) - t0) / 1e6;
        if (LOAD(nfail)) {
            failed++;
            printf("FAIL %s: %s [%d failures]\n", checks[i].name, fail_msg, LOAD(nfail));
        } else {
            passed++;
            printf("PASS %s (%.0f ms)\n", checks[i].name, ms);
        }
    }
    printf("conformance: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
