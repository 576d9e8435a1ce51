/* lto_run.c - sites of the second file of group `lt` (lto_ext.h), the threads that run the
 * sites of both files and check every result, and a signal injector whose handler runs sites
 * too.  Every wait is bounded; a stuck thread is reported, never waited for.
 *
 *   lt_start(n)  install the SIGUSR1 handler, start n workers and the injector (tgkill to the
 *                workers, round robin); 0, or a negative step number that failed
 *   lt_stats(o)  o[0..5] = checked calls, wrong results, signals sent, handler runs, wrong
 *                results in handlers, the last wrong value
 *   lt_stop()    stop and join the injector, then the workers (a pending signal is taken
 *                while they still run), then restore the previous handler; 0 or negative
 */
#define _GNU_SOURCE /* gettid, pthread_timedjoin_np */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lto_ext.h"

#define LT_MAX 16
#define API __attribute__((visibility("default")))

static long lt_b_add8(long a, long b) { return (long)PVPATCH_CALL2(lt, add, 8, 0, a, b); }
static long lt_b_mix(long a, long b, long c)
{
    return (long)PVPATCH_CALL3(lt, mix, 10, 0, a, b, c);
}

static volatile int run, inject;
static volatile int tids[LT_MAX];
static int nthreads;
static pthread_t workers[LT_MAX], injector;
static struct sigaction prev;
static long calls, bad, sent, handled, hbad, last_bad;

/* r - want must be one variant's offset; anything else is a wrong result. */
static int wrong(long r, long want)
{
    long d = r - want;
    if (d == 0 || d == 1000 || d == 2000)
        return 0;
    __atomic_store_n(&last_bad, r, __ATOMIC_RELAXED);
    return 1;
}

static void handler(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    long b = wrong(lt_b_add8(7, 8), 15) + wrong(lt_a_add6(-3, 4), 1) +
             wrong(lt_a_mix(1, 2, 3), 22) + wrong(lt_b_mix(3, 2, 1), 14);
    __atomic_fetch_add(&handled, 1, __ATOMIC_RELAXED);
    if (b)
        __atomic_fetch_add(&hbad, b, __ATOMIC_RELAXED);
    errno = saved;
}

static void *worker_main(void *arg)
{
    long me = (long)arg, n = 0, b = 0;
    tids[me] = (int)gettid();
    for (long i = 0; run; i++) {
        long x = (i & 1023) - 512, y = me * 7 + 1;
        b += wrong(lt_a_add6(x, y), x + y);
        b += wrong(lt_a_add13(y, x), x + y);
        b += wrong(lt_b_add8(x, -y), x - y);
        b += wrong(lt_a_mix(x, y, me), x + 3 * y + 5 * me);
        b += wrong(lt_b_mix(me, x, y), me + 3 * x + 5 * y);
        n += 5;
        if ((i & 255) == 255) {
            __atomic_fetch_add(&calls, n, __ATOMIC_RELAXED);
            __atomic_fetch_add(&bad, b, __ATOMIC_RELAXED);
            n = b = 0;
        }
    }
    __atomic_fetch_add(&calls, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(&bad, b, __ATOMIC_RELAXED);
    return NULL;
}

static void *injector_main(void *unused)
{
    pid_t pid = getpid();
    for (long i = 0; inject; i++) {
        int t = tids[i % nthreads];
        if (t > 0 && syscall(SYS_tgkill, pid, t, SIGUSR1) == 0)
            __atomic_fetch_add(&sent, 1, __ATOMIC_RELAXED);
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int join(pthread_t t)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    return pthread_timedjoin_np(t, NULL, &dl);
}

API int lt_start(int n)
{
    struct sigaction sa = {0};
    if (n < 1 || n > LT_MAX)
        return -1;
    nthreads = n;
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, &prev) != 0)
        return -2;
    run = inject = 1;
    for (long i = 0; i < n; i++)
        if (pthread_create(&workers[i], NULL, worker_main, (void *)i) != 0)
            return -3;
    for (int w = 0; w < 10000; w++) { /* every worker has a tid and has run: at most 10 s */
        int ready = __atomic_load_n(&calls, __ATOMIC_RELAXED) > 0;
        for (int i = 0; i < n; i++)
            ready &= tids[i] > 0;
        if (ready)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (pthread_create(&injector, NULL, injector_main, NULL) != 0)
        return -4;
    return 0;
}

API void lt_stats(long *o)
{
    o[0] = __atomic_load_n(&calls, __ATOMIC_RELAXED);
    o[1] = __atomic_load_n(&bad, __ATOMIC_RELAXED);
    o[2] = __atomic_load_n(&sent, __ATOMIC_RELAXED);
    o[3] = __atomic_load_n(&handled, __ATOMIC_RELAXED);
    o[4] = __atomic_load_n(&hbad, __ATOMIC_RELAXED);
    o[5] = __atomic_load_n(&last_bad, __ATOMIC_RELAXED);
}

API int lt_stop(void)
{
    int rc = 0;
    inject = 0;
    if (join(injector) != 0)
        rc = -1;
    run = 0;
    for (int i = 0; i < nthreads; i++)
        if (join(workers[i]) != 0)
            rc = -2;
    if (rc == 0) /* only when nothing of ours can still take a signal */
        sigaction(SIGUSR1, &prev, NULL);
    return rc;
}
