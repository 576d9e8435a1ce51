/*
 * real.c - glibc's own pthread functions, for the objects that pass through.
 *
 * Resolved on first use, not in a constructor: other libraries' constructors (and the
 * dynamic loader's order puts LD_PRELOAD objects' constructors late) may lock before ours
 * runs.  dlsym(RTLD_NEXT) takes only the loader's own lock, never an interposed one.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "preload.h"

static struct pl_real real;
static int real_ready;

static void *need(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL) {
        /* No stdio: it may lock.  One write, then stop: running on without glibc's function
         * would turn a recursive or robust mutex into a wrong one. */
        char msg[160];
        int n = snprintf(msg, sizeof(msg),
                         "libpvpatch-preload: glibc has no %s (dlsym RTLD_NEXT); cannot run\n",
                         name);
        if (n > 0 && write(2, msg, (size_t)n) < 0)
            abort();
        abort();
    }
    return f;
}

const struct pl_real *pl_real(void)
{
    if (__atomic_load_n(&real_ready, __ATOMIC_ACQUIRE))
        return &real;
    /* Two threads may both resolve: they store the same pointers. */
    struct pl_real r;
    r.mutex_init = need("pthread_mutex_init");
    r.mutex_destroy = need("pthread_mutex_destroy");
    r.mutex_lock = need("pthread_mutex_lock");
    r.mutex_trylock = need("pthread_mutex_trylock");
    r.mutex_timedlock = need("pthread_mutex_timedlock");
    r.mutex_clocklock = need("pthread_mutex_clocklock");
    r.mutex_unlock = need("pthread_mutex_unlock");
    r.spin_init = need("pthread_spin_init");
    r.spin_destroy = need("pthread_spin_destroy");
    r.spin_lock = need("pthread_spin_lock");
    r.spin_trylock = need("pthread_spin_trylock");
    r.spin_unlock = need("pthread_spin_unlock");
    r.cond_init = need("pthread_cond_init");
    r.cond_destroy = need("pthread_cond_destroy");
    r.cond_wait = need("pthread_cond_wait");
    r.cond_timedwait = need("pthread_cond_timedwait");
    r.cond_clockwait = need("pthread_cond_clockwait");
    r.cond_signal = need("pthread_cond_signal");
    r.cond_broadcast = need("pthread_cond_broadcast");
    real = r;
    __atomic_store_n(&real_ready, 1, __ATOMIC_RELEASE);
    return &real;
}
