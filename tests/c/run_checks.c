/*
 * run_checks.c - the interposed pthread API checked from an unmodified program, for
 * tests/test_run.py.  `run_checks CHECK` runs one check and exits 0, or prints "FAIL: ..." and
 * exits 1.  A watchdog (alarm) turns a hang into exit 3 with the check's progress printed.
 *
 * Whether a mutex runs on pvpatch's lock is seen from glibc's bookkeeping: glibc's own lock
 * records the owner's thread id in __owner and counts __nusers; pvpatch's lock uses only the
 * first word.  So after pthread_mutex_lock, __owner == gettid() means "glibc's", 0 "pvpatch's".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile long progress;
static const char *check_name = "?";

#define FAIL(...)                                                                           \
    do {                                                                                    \
        printf("FAIL: %s: ", check_name);                                                   \
        printf(__VA_ARGS__);                                                                \
        printf("\n");                                                                       \
        fflush(stdout);                                                                     \
        exit(1);                                                                            \
    } while (0)
#define EXPECT(cond, ...)                                                                   \
    do {                                                                                    \
        if (!(cond))                                                                        \
            FAIL(__VA_ARGS__);                                                              \
    } while (0)

static void watchdog(int sig)
{
    char buf[160];
    int n = snprintf(buf, sizeof(buf), "FAIL: %s: watchdog: no end after the time limit, "
                     "progress %ld\n", check_name, progress);
    if (write(1, buf, (size_t)n) < 0)
        _exit(4);
    _exit(3);
}

static struct timespec in_ms(clockid_t clk, long ms)
{
    struct timespec t;
    clock_gettime(clk, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int interposed(pthread_mutex_t *m)
{
    /* Call with m held by the caller. */
    return m->__data.__owner == 0 && m->__data.__nusers == 0;
}

/* ---- static initialisers, counting under contention ---------------------------------- */

static pthread_mutex_t m_static = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t m_adaptive = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
static pthread_spinlock_t spin; /* pthread_spin_init in check_static */
static long c_static, c_adaptive, c_spin;
static int iters = 5000;

static int count_stop;

/* Counts until told to stop (the run lasts long enough to see the lock switched under it);
 * returns its own number of rounds. */
static void *count_worker(void *arg)
{
    long n = 0;
    while (n < iters || !__atomic_load_n(&count_stop, __ATOMIC_RELAXED)) {
        errno = 4242; /* glibc's lock and unlock leave errno alone, whatever they wait for */
        pthread_mutex_lock(&m_static);
        c_static++;
        pthread_mutex_unlock(&m_static);
        if (errno != 4242)
            FAIL("pthread_mutex_lock/unlock changed errno to %d", errno);
        pthread_mutex_lock(&m_adaptive);
        c_adaptive++;
        pthread_mutex_unlock(&m_adaptive);
        pthread_spin_lock(&spin);
        c_spin++;
        pthread_spin_unlock(&spin);
        __atomic_fetch_add(&progress, 1, __ATOMIC_RELAXED);
        n++;
    }
    return (void *)n;
}

static int check_static(int expect_interposed)
{
    pthread_mutex_lock(&m_static);
    int a = interposed(&m_static);
    pthread_mutex_unlock(&m_static);
    pthread_mutex_lock(&m_adaptive);
    int b = interposed(&m_adaptive);
    pthread_mutex_unlock(&m_adaptive);
    EXPECT(a == expect_interposed && b == expect_interposed,
           "static default mutex interposed=%d, adaptive=%d, expected %d", a, b,
           expect_interposed);
    enum { N = 2 };
    pthread_t t[N];
    EXPECT(pthread_spin_init(&spin, PTHREAD_PROCESS_PRIVATE) == 0, "spin_init");
    for (int i = 0; i < N; i++)
        EXPECT(pthread_create(&t[i], NULL, count_worker, NULL) == 0, "pthread_create");
    struct timespec d = {0, 300000000};
    nanosleep(&d, NULL);
    __atomic_store_n(&count_stop, 1, __ATOMIC_RELAXED);
    long want = 0;
    for (int i = 0; i < N; i++) {
        void *r;
        pthread_join(t[i], &r);
        want += (long)r;
    }
    EXPECT(c_static == want && c_adaptive == want && c_spin == want,
           "lost updates: default %ld, adaptive %ld, spin %ld of %ld", c_static, c_adaptive,
           c_spin, want);
    printf("interposed=%d counted=%ld\n", a, want);
    return 0;
}

/* ---- trylock ------------------------------------------------------------------------- */

static pthread_mutex_t m_try = PTHREAD_MUTEX_INITIALIZER;

static void *try_other(void *arg)
{
    return (void *)(long)pthread_mutex_trylock(&m_try);
}

static int check_trylock_once(void);

static int check_trylock(void)
{
    /* Repeated for 0.3 s, so that the lock is switched between (and during) the rounds. */
    double end = now_s() + 0.3;
    for (int round = 0; round < 10 || now_s() < end; round++) {
        pthread_mutex_init(&m_try, NULL);
        check_trylock_once();
        progress = round;
    }
    return 0;
}

static int check_trylock_once(void)
{
    EXPECT(pthread_mutex_trylock(&m_try) == 0, "trylock of a free mutex");
    EXPECT(pthread_mutex_trylock(&m_try) == EBUSY, "trylock of a held mutex, same thread");
    pthread_t t;
    void *r;
    pthread_create(&t, NULL, try_other, NULL);
    pthread_join(t, &r);
    EXPECT((long)r == EBUSY, "trylock from another thread returned %ld, not EBUSY", (long)r);
    pthread_mutex_unlock(&m_try);
    pthread_create(&t, NULL, try_other, NULL);
    pthread_join(t, &r);
    EXPECT((long)r == 0, "trylock of a released mutex from another thread returned %ld",
           (long)r);
    EXPECT(pthread_mutex_destroy(&m_try) == EBUSY, "destroy of a held mutex is EBUSY");
    pthread_mutex_unlock(&m_try);
    EXPECT(pthread_mutex_destroy(&m_try) == 0, "destroy of a free mutex");
    pthread_spinlock_t s;
    EXPECT(pthread_spin_init(&s, PTHREAD_PROCESS_PRIVATE) == 0, "spin_init");
    EXPECT(pthread_spin_trylock(&s) == 0, "spin trylock free");
    EXPECT(pthread_spin_trylock(&s) == EBUSY, "spin trylock held");
    EXPECT(pthread_spin_unlock(&s) == 0 && pthread_spin_trylock(&s) == 0, "spin re-take");
    pthread_spin_unlock(&s);
    EXPECT(pthread_spin_destroy(&s) == 0, "spin destroy");
    return 0;
}

/* ---- timed locks --------------------------------------------------------------------- */

static pthread_mutex_t m_timed = PTHREAD_MUTEX_INITIALIZER;

static void *hold_then_release(void *arg)
{
    pthread_mutex_lock(&m_timed);
    __atomic_store_n(&progress, 1, __ATOMIC_RELEASE);
    struct timespec d = {(long)arg / 1000, ((long)arg % 1000) * 1000000L};
    nanosleep(&d, NULL);
    pthread_mutex_unlock(&m_timed);
    return NULL;
}

static int check_timed(void)
{
    struct timespec bad = {0, 1000000000L}, neg = {-1, 0};
    int r;
    /* Free: glibc takes it without looking at the timeout. */
    EXPECT(pthread_mutex_timedlock(&m_timed, &bad) == 0, "timedlock of a free mutex, bad nsec");
    pthread_mutex_unlock(&m_timed);
    EXPECT(pthread_mutex_clocklock(&m_timed, CLOCK_PROCESS_CPUTIME_ID, &neg) == EINVAL,
           "clocklock with a bad clock is EINVAL");
    pthread_t t;
    pthread_create(&t, NULL, hold_then_release, (void *)1500L);
    while (!__atomic_load_n(&progress, __ATOMIC_ACQUIRE))
        sched_yield();
    r = pthread_mutex_timedlock(&m_timed, &bad);
    EXPECT(r == EINVAL, "held, tv_nsec 1e9: %d, not EINVAL", r);
    EXPECT(pthread_mutex_timedlock(&m_timed, &neg) == ETIMEDOUT, "held, deadline < 0: ETIMEDOUT");
    struct timespec dl = in_ms(CLOCK_REALTIME, 100);
    double t0 = now_s();
    r = pthread_mutex_timedlock(&m_timed, &dl);
    double el = now_s() - t0;
    EXPECT(r == ETIMEDOUT, "timedlock of a held mutex returned %d, not ETIMEDOUT", r);
    EXPECT(el >= 0.095, "timedlock gave up after %.3f s, before its 0.1 s deadline", el);
    dl = in_ms(CLOCK_MONOTONIC, 100);
    r = pthread_mutex_clocklock(&m_timed, CLOCK_MONOTONIC, &dl);
    EXPECT(r == ETIMEDOUT, "clocklock (monotonic) of a held mutex returned %d", r);
    dl = in_ms(CLOCK_MONOTONIC, 20000);
    r = pthread_mutex_clocklock(&m_timed, CLOCK_MONOTONIC, &dl);
    EXPECT(r == 0, "clocklock did not get the mutex released by its holder: %d", r);
    pthread_mutex_unlock(&m_timed);
    pthread_join(t, NULL);
    return 0;
}

/* ---- condition variables ------------------------------------------------------------- */

static pthread_mutex_t m_cond = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int gen, woken;

static void *cond_waiter(void *arg)
{
    pthread_mutex_lock(&m_cond);
    int my = gen;
    __atomic_fetch_add(&progress, 1, __ATOMIC_RELAXED);
    while (gen == my)
        pthread_cond_wait(&cv, &m_cond);
    woken++;
    pthread_mutex_unlock(&m_cond);
    return NULL;
}

/* A bounded queue, two producers and two consumers: every item arrives once. */
#define QN 8
static int q[QN], qh, qt, qlen;
static long consumed_sum;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER, not_empty = PTHREAD_COND_INITIALIZER;
enum { ITEMS = 20000 };

static void *producer(void *arg)
{
    for (int i = 1; i <= ITEMS; i++) {
        pthread_mutex_lock(&m_cond);
        while (qlen == QN)
            pthread_cond_wait(&not_full, &m_cond);
        q[qt] = i;
        qt = (qt + 1) % QN;
        qlen++;
        pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&m_cond);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    for (int i = 0; i < ITEMS; i++) {
        errno = 4243;
        pthread_mutex_lock(&m_cond);
        while (qlen == 0)
            pthread_cond_wait(&not_empty, &m_cond);
        if (errno != 4243)
            FAIL("lock or cond_wait changed errno to %d", errno);
        consumed_sum += q[qh];
        qh = (qh + 1) % QN;
        qlen--;
        progress++;
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&m_cond);
    }
    return NULL;
}

static void wait_waiters(int n)
{
    for (;;) {
        pthread_mutex_lock(&m_cond);
        int ready = __atomic_load_n(&progress, __ATOMIC_RELAXED) >= n;
        pthread_mutex_unlock(&m_cond);
        if (ready)
            return;
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
}

static int check_cond(void)
{
    /* signal wakes one, broadcast wakes all: waiters are all in pthread_cond_wait once they
     * counted themselves under the mutex and released it. */
    enum { W = 8 };
    pthread_t t[W];
    for (int i = 0; i < W; i++)
        pthread_create(&t[i], NULL, cond_waiter, NULL);
    wait_waiters(W);
    pthread_mutex_lock(&m_cond);
    gen++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&m_cond);
    for (int i = 0; i < W; i++)
        pthread_join(t[i], NULL);
    EXPECT(woken == W, "broadcast woke %d of %d", woken, W);
    progress = 0;
    pthread_create(&t[0], NULL, cond_waiter, NULL);
    wait_waiters(1);
    pthread_mutex_lock(&m_cond);
    gen++;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&m_cond);
    pthread_join(t[0], NULL);
    EXPECT(woken == W + 1, "signal did not wake its waiter");

    /* Timeouts: the mutex is held again when the wait returns. */
    pthread_mutex_lock(&m_cond);
    struct timespec dl = in_ms(CLOCK_REALTIME, 50), bad = {0, -1};
    double t0 = now_s();
    int r = pthread_cond_timedwait(&cv, &m_cond, &dl);
    EXPECT(r == ETIMEDOUT, "timedwait returned %d, not ETIMEDOUT", r);
    EXPECT(now_s() - t0 >= 0.045, "timedwait returned before its deadline");
    EXPECT(pthread_mutex_trylock(&m_cond) == EBUSY, "the mutex is not held after a timeout");
    EXPECT(pthread_cond_timedwait(&cv, &m_cond, &bad) == EINVAL, "bad tv_nsec: EINVAL");
    EXPECT(pthread_cond_clockwait(&cv, &m_cond, CLOCK_PROCESS_CPUTIME_ID, &dl) == EINVAL,
           "clockwait with a bad clock: EINVAL");
    dl = in_ms(CLOCK_MONOTONIC, 30);
    EXPECT(pthread_cond_clockwait(&cv, &m_cond, CLOCK_MONOTONIC, &dl) == ETIMEDOUT,
           "clockwait (monotonic) timeout");
    pthread_mutex_unlock(&m_cond);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_t mono;
    pthread_cond_init(&mono, &ca);
    pthread_mutex_lock(&m_cond);
    dl = in_ms(CLOCK_MONOTONIC, 30);
    EXPECT(pthread_cond_timedwait(&mono, &m_cond, &dl) == ETIMEDOUT,
           "timedwait on a CLOCK_MONOTONIC condvar");
    pthread_mutex_unlock(&m_cond);
    EXPECT(pthread_cond_destroy(&mono) == 0, "cond_destroy");

    /* Producers and consumers. */
    progress = 0;
    pthread_t p[4];
    pthread_create(&p[0], NULL, producer, NULL);
    pthread_create(&p[1], NULL, producer, NULL);
    pthread_create(&p[2], NULL, consumer, NULL);
    pthread_create(&p[3], NULL, consumer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(p[i], NULL);
    long want = 2L * ITEMS * (ITEMS + 1) / 2;
    EXPECT(consumed_sum == want && qlen == 0, "queue: sum %ld of %ld, %d left", consumed_sum,
           want, qlen);
    printf("cond ok: %d woken, %d items\n", woken, 2 * ITEMS);
    return 0;
}

/* ---- recursive and error-checking mutexes pass through ------------------------------- */

static pthread_mutex_t m_rec;
static pthread_cond_t cv_rec = PTHREAD_COND_INITIALIZER;
static int rec_flag;

static void *rec_other(void *arg)
{
    int r = pthread_mutex_trylock(&m_rec);
    if (r == 0) /* must not happen: report it */
        pthread_mutex_unlock(&m_rec);
    return (void *)(long)r;
}

static void *rec_signaller(void *arg)
{
    pthread_mutex_lock(&m_rec);
    rec_flag = 1;
    pthread_cond_signal(&cv_rec);
    pthread_mutex_unlock(&m_rec);
    return NULL;
}

static int check_recursive(void)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    EXPECT(pthread_mutex_init(&m_rec, &a) == 0, "init recursive");
    for (int i = 0; i < 3; i++)
        EXPECT(pthread_mutex_lock(&m_rec) == 0, "recursive lock %d", i);
    EXPECT(m_rec.__data.__owner == gettid() && m_rec.__data.__count == 3,
           "a recursive mutex is not glibc's (owner %d, count %u)", m_rec.__data.__owner,
           m_rec.__data.__count);
    pthread_t t;
    void *r;
    pthread_create(&t, NULL, rec_other, NULL);
    pthread_join(t, &r);
    EXPECT((long)r == EBUSY, "trylock of a held recursive mutex from another thread: %ld",
           (long)r);
    for (int i = 0; i < 3; i++)
        EXPECT(pthread_mutex_unlock(&m_rec) == 0, "recursive unlock %d", i);
    EXPECT(pthread_mutex_unlock(&m_rec) == EPERM, "unlock of an unheld recursive mutex: EPERM");
    /* A condvar with a recursive mutex (held once). */
    pthread_mutex_lock(&m_rec);
    pthread_create(&t, NULL, rec_signaller, NULL);
    while (!rec_flag)
        EXPECT(pthread_cond_wait(&cv_rec, &m_rec) == 0, "cond_wait with a recursive mutex");
    EXPECT(m_rec.__data.__owner == gettid(), "recursive mutex not re-held after cond_wait");
    pthread_mutex_unlock(&m_rec);
    pthread_join(t, NULL);

    pthread_mutex_t ec;
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&ec, &a);
    EXPECT(pthread_mutex_unlock(&ec) == EPERM, "errorcheck unlock unheld: EPERM");
    pthread_cond_t c2 = PTHREAD_COND_INITIALIZER;
    EXPECT(pthread_cond_wait(&c2, &ec) == EPERM, "cond_wait on an unheld errorcheck mutex: EPERM");
    EXPECT(pthread_mutex_lock(&ec) == 0 && pthread_mutex_lock(&ec) == EDEADLK,
           "errorcheck relock: EDEADLK");
    pthread_mutex_unlock(&ec);
    pthread_mutex_destroy(&ec);
    pthread_mutex_destroy(&m_rec);
    printf("recursive ok\n");
    return 0;
}

/* ---- fork ---------------------------------------------------------------------------- */

static pthread_mutex_t m_fork = PTHREAD_MUTEX_INITIALIZER;
static long c_fork;
static int fork_stop;

static void *fork_hammer(void *arg)
{
    while (!__atomic_load_n(&fork_stop, __ATOMIC_RELAXED)) {
        pthread_mutex_lock(&m_fork);
        c_fork++;
        pthread_mutex_unlock(&m_fork);
    }
    return NULL;
}

static void *fork_counter(void *arg)
{
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&m_fork);
        c_fork++;
        pthread_mutex_unlock(&m_fork);
    }
    return NULL;
}

/* The program takes its lock around fork, as a correct program must (a lock held by a thread
 * the child does not have stays held). */
static void pf_prepare(void) { pthread_mutex_lock(&m_fork); }
static void pf_release(void) { pthread_mutex_unlock(&m_fork); }

static int check_fork(void)
{
    pthread_atfork(pf_prepare, pf_release, pf_release);
    pthread_t h;
    pthread_create(&h, NULL, fork_hammer, NULL);
    for (int round = 0; round < 20; round++) {
        struct timespec d = {0, 5000000};
        nanosleep(&d, NULL);
        pid_t pid = fork();
        EXPECT(pid >= 0, "fork: %s", strerror(errno));
        if (pid == 0) {
            alarm(60);
            /* The child: its own threads, its locks and a condvar. */
            c_fork = 0;
            pthread_t t[3];
            for (int i = 0; i < 3; i++)
                pthread_create(&t[i], NULL, fork_counter, NULL);
            for (int i = 0; i < 3; i++)
                pthread_join(t[i], NULL);
            if (c_fork != 15000) {
                printf("FAIL: fork: child counted %ld of 15000\n", c_fork);
                _exit(1);
            }
            pthread_mutex_lock(&m_cond);
            struct timespec dl = in_ms(CLOCK_REALTIME, 10);
            int r = pthread_cond_timedwait(&cv, &m_cond, &dl);
            pthread_mutex_unlock(&m_cond);
            _exit(r == ETIMEDOUT ? 0 : 2);
        }
        int st;
        EXPECT(waitpid(pid, &st, 0) == pid, "waitpid");
        EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d ended with status %#x", round,
               st);
        progress = round;
    }
    __atomic_store_n(&fork_stop, 1, __ATOMIC_RELAXED);
    pthread_join(h, NULL);
    printf("fork ok: 20 children\n");
    return 0;
}

/* ---- thousands of threads ------------------------------------------------------------ */

static pthread_barrier_t barrier;
static long c_many;

static void *many_worker(void *arg)
{
    for (int i = 0; i < 5; i++) {
        pthread_mutex_lock(&m_static);
        c_many++;
        pthread_mutex_unlock(&m_static);
    }
    __atomic_fetch_add(&progress, 1, __ATOMIC_RELAXED);
    pthread_barrier_wait(&barrier); /* glibc's: every thread alive at once */
    pthread_mutex_lock(&m_static);
    c_many++;
    pthread_mutex_unlock(&m_static);
    return NULL;
}

static int check_threads(int n)
{
    pthread_t *t = calloc((size_t)n, sizeof(*t));
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    pthread_barrier_init(&barrier, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++)
        EXPECT(pthread_create(&t[i], &a, many_worker, NULL) == 0, "pthread_create %d: out of "
               "resources", i);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    EXPECT(c_many == 6L * n, "%d threads counted %ld of %ld", n, c_many, 6L * n);
    printf("threads ok: %d\n", n);
    free(t);
    return 0;
}

/* ---- no thread at all ---------------------------------------------------------------- */

static int check_nothreads(void)
{
    pthread_mutex_t m;
    pthread_mutex_init(&m, NULL);
    for (int i = 0; i < 100000; i++) {
        pthread_mutex_lock(&m);
        pthread_mutex_unlock(&m);
    }
    EXPECT(pthread_mutex_trylock(&m) == 0, "trylock");
    struct timespec dl = in_ms(CLOCK_REALTIME, 20);
    EXPECT(pthread_cond_timedwait(&cv, &m, &dl) == ETIMEDOUT, "timedwait alone");
    pthread_mutex_unlock(&m);
    pthread_cond_signal(&cv);
    pthread_cond_broadcast(&cv);
    EXPECT(pthread_mutex_destroy(&m) == 0, "destroy");
    printf("nothreads ok\n");
    return 0;
}

/* ---- one thread locking for a while (the auto mode's test) ----------------------------- */

static int check_spin(double seconds)
{
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    double end = now_s() + seconds;
    long n = 0;
    while (now_s() < end) {
        for (int i = 0; i < 1000; i++) {
            pthread_mutex_lock(&m);
            n++;
            pthread_mutex_unlock(&m);
        }
        progress = n;
        struct timespec d = {0, 100000};
        nanosleep(&d, NULL);
    }
    printf("spin ok: %ld\n", n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: run_checks static|glibc-static|trylock|timed|cond|recursive|fork|"
                        "threads N|nothreads|spin SECONDS\n");
        return 2;
    }
    check_name = argv[1];
    signal(SIGALRM, watchdog);
    alarm(argc > 3 ? (unsigned)atoi(argv[3]) : 120);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!strcmp(argv[1], "static"))
        return check_static(1);
    if (!strcmp(argv[1], "glibc-static"))
        return check_static(0);
    if (!strcmp(argv[1], "trylock"))
        return check_trylock();
    if (!strcmp(argv[1], "timed"))
        return check_timed();
    if (!strcmp(argv[1], "cond"))
        return check_cond();
    if (!strcmp(argv[1], "recursive"))
        return check_recursive();
    if (!strcmp(argv[1], "fork"))
        return check_fork();
    if (!strcmp(argv[1], "threads"))
        return check_threads(argc > 2 ? atoi(argv[2]) : 2000);
    if (!strcmp(argv[1], "nothreads"))
        return check_nothreads();
    if (!strcmp(argv[1], "spin"))
        return check_spin(argc > 2 ? atof(argv[2]) : 1.0);
    fprintf(stderr, "run_checks: unknown check %s\n", argv[1]);
    return 2;
}
