/*
 * stats.c - the acquisition count of --stats, kept only when asked for (PVPATCH_STATS or
 * PVPATCH_STATS_JSON): the lock's own statistics count only slow paths, and a process-wide
 * counter would put one contended cache line on every lock call.  Here each thread adds to one
 * of 64 padded shards, picked once per thread; the sum is read at exit.
 */
#include "preload.h"

#define SHARDS 64

int pl_stats_on;

static struct {
    uint64_t n;
} __attribute__((aligned(64))) shard[SHARDS];

static unsigned next_shard;
/* shard index + 1; 0: not picked yet.  initial-exec: no __tls_get_addr (which may malloc) on
 * a lock path that a signal handler can run. */
static __thread unsigned my_shard __attribute__((tls_model("initial-exec")));

void pl_count_acquisition(void)
{
    unsigned s = my_shard;
    if (__builtin_expect(s == 0, 0))
        my_shard = s = __atomic_fetch_add(&next_shard, 1, __ATOMIC_RELAXED) % SHARDS + 1;
    __atomic_fetch_add(&shard[s - 1].n, 1, __ATOMIC_RELAXED);
}

uint64_t pl_acquisitions(void)
{
    uint64_t n = 0;
    for (int i = 0; i < SHARDS; i++)
        n += __atomic_load_n(&shard[i].n, __ATOMIC_RELAXED);
    return n;
}
