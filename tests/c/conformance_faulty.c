/*
 * conformance_faulty.c - an interposer with known faults, the negative control of
 * tests/c/conformance.c: the suite must report each fault as a failure of the check that owns
 * it (in bounded time), or a pass of the suite under the real preload would prove nothing.
 *
 *   gcc -O2 -shared -fPIC tests/c/conformance_faulty.c -o faulty.so -ldl
 *   CONFORMANCE_FAULT=drop-signal LD_PRELOAD=./faulty.so ./conformance -k cond_signal_wakes_one
 *
 * CONFORMANCE_FAULT:
 *   drop-signal    every 16th pthread_cond_signal wakes nobody (a lost wake-up)
 *   trylock-errno  a busy pthread_mutex_trylock returns -1 with errno = EBUSY (the errno
 *                  convention, not the pthread one)
 *   early-timeout  pthread_mutex_timedlock gives up 10 ms before its deadline
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *fault(void)
{
    const char *f = getenv("CONFORMANCE_FAULT");
    return f ? f : "";
}

int pthread_cond_signal(pthread_cond_t *c)
{
    static int (*real)(pthread_cond_t *);
    static unsigned long calls;
    if (!real)
        real = (int (*)(pthread_cond_t *))dlvsym(RTLD_NEXT, "pthread_cond_signal", "GLIBC_2.3.2");
    if (strcmp(fault(), "drop-signal") == 0 && __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED) % 16 == 0)
        return 0;
    return real(c);
}

int pthread_mutex_trylock(pthread_mutex_t *m)
{
    static int (*real)(pthread_mutex_t *);
    if (!real)
        real = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_trylock");
    int r = real(m);
    if (r == EBUSY && strcmp(fault(), "trylock-errno") == 0) {
        errno = EBUSY;
        return -1;
    }
    return r;
}

int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *abstime)
{
    static int (*real)(pthread_mutex_t *, const struct timespec *);
    if (!real)
        real = (int (*)(pthread_mutex_t *, const struct timespec *))dlsym(RTLD_NEXT, "pthread_mutex_timedlock");
    if (strcmp(fault(), "early-timeout") == 0 && abstime->tv_nsec >= 0 && abstime->tv_nsec < 1000000000) {
        struct timespec early = *abstime;
        early.tv_nsec -= 10000000;
        if (early.tv_nsec < 0) {
            early.tv_nsec += 1000000000;
            early.tv_sec--;
        }
        return real(m, &early);
    }
    return real(m, abstime);
}
