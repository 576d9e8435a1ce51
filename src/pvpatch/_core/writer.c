/*
 * writer.c - the code ranges pvpatch may write, and the one way it writes them (writer.h).
 *
 * Why /proc/self/mem.  A write there goes through access_remote_vm() with FOLL_FORCE
 * (fs/proc/base.c, mem_rw), so it can write a private mapping that is not writable: the kernel
 * breaks copy-on-write for the page, as it does for a debugger's PTRACE_POKETEXT.  The text of a
 * registered object therefore stays what the dynamic loader mapped -- a private mapping of the
 * .so file -- and everything that reads that mapping keeps working: perf names the file and
 * symbolises samples, gdb and uprobes write their breakpoints into it the same way we write
 * sites, and a forked child gets the text copy-on-write.  No mapping is ever made writable.
 *
 * What it costs is a system call per write, so text_write() coalesces the writes of one pass:
 * a write that starts at most max_gap bytes after the pending one extends it, and the bytes in
 * between are rewritten with their current values (read just before).  Rewriting a byte with the
 * value it holds is invisible to every thread, *provided no other thread writes that byte during
 * the pass*: the batch's thread is the only writer of code (poke.c's SIGTRAP handler writes
 * none, and every other write goes through this file under the batch lock).
 *
 * The fallback, where the kernel refuses those writes (proc_mem.force_override=never, a
 * security module, no /proc): registered text is moved into a memfd mapped shared r-x at its own
 * address, and an rw- alias of it exists only from the first write of a batch to
 * pvp_writer_end().  A child of fork would share those pages with its parent, so the child
 * handler gives it its own copy.
 */
#define _GNU_SOURCE
#include "writer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { PATH_UNSET = 0, PATH_PROC_MEM = 1, PATH_ALIAS = 2 };

static int path;
static int mem_fd = -1;
static pid_t mem_pid; /* the process mem_fd was opened in: /proc/self/mem names an mm at open */
static int probe_errno;                 /* why proc-mem was not chosen (0: it was, or forced) */
static const char *probe_syscall = "";
static int forced;                      /* PVPATCH_WRITER chose the path */
static const size_t max_gap = 256;
static int child_ok = 1;
const char *pvp_writer_syscall = "";

static _Atomic unsigned long ctr_syscalls, ctr_bytes, ctr_alias_maps;

static int pwrite_all(int fd, const void *src, size_t len, uintptr_t addr);

/* ---- code ranges ------------------------------------------------------------------------ */

#define MAX_CODE_RANGES 1024
static struct code_range {
    uintptr_t exec;
    size_t len;
    int fd;               /* alias path: the memfd behind the shared r-x view; else -1 */
    uint8_t *_Atomic alias; /* alias path, during a batch: the rw- view, or NULL */
    int generated;        /* made by pvp_code_range_map */
    int users;            /* registered modules in this text (add_text / release) */
    int retired;          /* its last module was unregistered: never written again */
    char name[64];
} ranges[MAX_CODE_RANGES];
/* Entries are written before n_ranges is raised (release; partner: the acquire in find), so a
 * SIGTRAP handler may look ranges up without the lock. */
static _Atomic size_t n_ranges;
static pthread_mutex_t ranges_lock = PTHREAD_MUTEX_INITIALIZER;

static inline int range_holds(size_t i, uintptr_t addr, size_t len)
{
    return !ranges[i].retired && addr >= ranges[i].exec &&
           addr - ranges[i].exec <= ranges[i].len && len <= ranges[i].len - (addr - ranges[i].exec);
}

int pvp_code_range_find(uintptr_t addr, size_t len)
{
    size_t n = atomic_load_explicit(&n_ranges, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (range_holds(i, addr, len))
            return (int)i;
    return -1;
}

/* The last module registered in a text is gone (unregistered, or its object unloaded): the
 * range is never written again, nor copied for a forked child (its address may be reused by
 * another mapping).  Its entry is kept, retired, and never reused: a retired range is just an
 * entry every lookup skips.  Called with the batch lock held (poke.c), so no batch is using
 * the range meanwhile. */
int pvp_code_range_release(uintptr_t start, size_t len)
{
    pthread_mutex_lock(&ranges_lock);
    int r = pvp_code_range_find(start, len);
    if (r >= 0 && !ranges[r].generated && --ranges[r].users <= 0) {
        ranges[r].retired = 1;
        if (ranges[r].fd >= 0) { /* alias path: the mapping stays as long as the object does */
            close(ranges[r].fd);
            ranges[r].fd = -1;
        }
    }
    pthread_mutex_unlock(&ranges_lock);
    return r;
}

/* Call with ranges_lock held. */
static int range_note(uintptr_t exec, size_t len, int fd, int generated, const char *name)
{
    size_t n = atomic_load(&n_ranges);
    if (n == MAX_CODE_RANGES) {
        errno = ENOSPC;
        pvp_writer_syscall = "code ranges (1024 at most)";
        return -1;
    }
    struct code_range *r = &ranges[n];
    r->exec = exec;
    r->len = len;
    r->fd = fd;
    atomic_store(&r->alias, NULL);
    r->generated = generated;
    r->users = 1;
    r->retired = 0;
    snprintf(r->name, sizeof(r->name), "%s", name);
    atomic_store_explicit(&n_ranges, n + 1, memory_order_release);
    return (int)n;
}

/* A memfd of len bytes holding a copy of [src, src+len) (src 0: zeros).  -1 + errno. */
static int memfd_copy(const char *name, size_t len, uintptr_t src)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) {
        pvp_writer_syscall = "memfd_create";
        return -1;
    }
    if (ftruncate(fd, (off_t)len) != 0) {
        pvp_writer_syscall = "ftruncate";
        goto fail;
    }
    if (src != 0) {
        /* A plain write(2) into the file: no writable mapping needed. */
        size_t done = 0;
        while (done < len) {
            ssize_t w = pwrite(fd, (const void *)(src + done), len - done, (off_t)done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                if (w == 0)
                    errno = EIO;
                pvp_writer_syscall = "pwrite (memfd)";
                goto fail;
            }
            done += (size_t)w;
        }
    }
    return fd;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

int pvp_code_range_add_text(uintptr_t start, size_t len, const char *name)
{
    if (pvp_writer_init() != 0)
        return -1;
    pthread_mutex_lock(&ranges_lock);
    int r = pvp_code_range_find(start, len);
    if (r >= 0) { /* already ours (generated code, or a second module in the same object) */
        ranges[r].users++;
        pthread_mutex_unlock(&ranges_lock);
        return r;
    }
    for (size_t i = 0; i < atomic_load(&n_ranges); i++)
        if (!ranges[i].retired && start < ranges[i].exec + ranges[i].len &&
            ranges[i].exec < start + len) {
            pthread_mutex_unlock(&ranges_lock);
            errno = EINVAL;
            pvp_writer_syscall = "code range (overlaps a registered range partly)";
            return -1;
        }
    int fd = -1;
    if (path == PATH_PROC_MEM) {
        /* The probe wrote a page of our own; make sure this text takes writes too, now, when a
         * refusal still changes nothing: write its first byte with the value it holds (the
         * page is copied on write with identical bytes, which no thread can tell). */
        int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC); /* its own: mem_fd is the batch's */
        if (fd < 0) {
            pthread_mutex_unlock(&ranges_lock);
            pvp_writer_syscall = "open /proc/self/mem";
            return -1;
        }
        uint8_t b = *(volatile const uint8_t *)start;
        int rc = pwrite_all(fd, &b, 1, start);
        int e = errno;
        close(fd);
        if (rc != 0) {
            pthread_mutex_unlock(&ranges_lock);
            errno = e;
            return -1;
        }
    } else {
        /* Move the text into a memfd, mapped shared r-x over the same address (MAP_FIXED over
         * identical bytes: threads running there notice nothing). */
        fd = memfd_copy(name, len, start);
        if (fd < 0) {
            pthread_mutex_unlock(&ranges_lock);
            return -1;
        }
        if (mmap((void *)start, len, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED, fd, 0) ==
            MAP_FAILED) {
            int e = errno;
            close(fd);
            pthread_mutex_unlock(&ranges_lock);
            errno = e;
            pvp_writer_syscall = "mmap";
            return -1;
        }
    }
    r = range_note(start, len, fd, 0, name);
    pthread_mutex_unlock(&ranges_lock);
    return r;
}

int pvp_code_range_map(size_t len, const char *name, uintptr_t near, uintptr_t *exec)
{
    if (pvp_writer_init() != 0)
        return -1;
    /* Backed by a memfd either way, so that /proc/self/maps names it.  proc-mem: a private
     * mapping (copy-on-write at fork, written like registered text); alias: shared. */
    int fd = memfd_copy(name, len, 0);
    if (fd < 0)
        return -1;
    int flags = path == PATH_ALIAS ? MAP_SHARED : MAP_PRIVATE;
    void *x = MAP_FAILED;
    if (near != 0) {
        /* Probe downwards from 64 MiB below `near`, in steps of the length (2 MiB at least),
         * for a free range: MAP_FIXED_NOREPLACE never clobbers. */
        long pg = sysconf(_SC_PAGESIZE);
        size_t step = len > (2u << 20) ? len : (2u << 20);
        for (unsigned long long off = 64ull << 20; off + len < (1ull << 30) && x == MAP_FAILED;
             off += step) {
            uintptr_t want = (near - off - len) & ~(uintptr_t)(pg - 1);
            x = mmap((void *)want, len, PROT_READ | PROT_EXEC, flags | MAP_FIXED_NOREPLACE, fd, 0);
            if (x == MAP_FAILED && errno != EEXIST)
                break;
        }
    } else {
        x = mmap(NULL, len, PROT_READ | PROT_EXEC, flags, fd, 0);
    }
    if (x == MAP_FAILED) {
        int e = errno;
        close(fd);
        errno = e;
        pvp_writer_syscall = "mmap";
        return -1;
    }
    if (path != PATH_ALIAS) {
        close(fd);
        fd = -1;
    }
    pthread_mutex_lock(&ranges_lock);
    int r = range_note((uintptr_t)x, len, fd, 1, name);
    pthread_mutex_unlock(&ranges_lock);
    if (r < 0) {
        int e = errno;
        munmap(x, len);
        if (fd >= 0)
            close(fd);
        errno = e;
        return -1;
    }
    *exec = (uintptr_t)x;
    return r;
}

/* ---- choosing the path ------------------------------------------------------------------ */

static int open_mem(void)
{
    int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (mem_fd >= 0)
        close(mem_fd);
    mem_fd = fd;
    mem_pid = getpid();
    return 0;
}

static int pwrite_all(int fd, const void *src, size_t len, uintptr_t addr)
{
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, (const uint8_t *)src + done, len - done, (off_t)(addr + done));
        if (w < 0 && errno == EINTR)
            continue;
        atomic_fetch_add_explicit(&ctr_syscalls, 1, memory_order_relaxed);
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            pvp_writer_syscall = "pwrite (/proc/self/mem)";
            return -1;
        }
        done += (size_t)w;
    }
    atomic_fetch_add_explicit(&ctr_bytes, len, memory_order_relaxed);
    return 0;
}

/* Can this process write a read-only private executable mapping through /proc/self/mem?  Try
 * it on a page of our own that nothing runs. */
static int probe_proc_mem(void)
{
    if (open_mem() != 0) {
        probe_syscall = "open /proc/self/mem";
        return -1;
    }
    long pg = sysconf(_SC_PAGESIZE);
    uint8_t *p = mmap(NULL, (size_t)pg, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        probe_syscall = "mmap";
        return -1;
    }
    static const uint8_t ret = 0xc3;
    int rc = 0;
    if (pwrite_all(mem_fd, &ret, 1, (uintptr_t)p) != 0) {
        probe_syscall = "pwrite (/proc/self/mem)";
        rc = -1;
    } else if (p[0] != ret) {
        errno = EIO;
        probe_syscall = "pwrite (/proc/self/mem) did not reach the mapping";
        rc = -1;
    }
    int e = errno;
    munmap(p, (size_t)pg);
    errno = e;
    return rc;
}

int pvp_writer_init(void)
{
    if (path != PATH_UNSET)
        return 0;
    /* PVPATCH_WRITER=alias|proc-mem forces a path (tests run the fallback this way).  It is
     * read before the first code range exists, i.e. at import. */
    const char *want = getenv("PVPATCH_WRITER");
    if (want != NULL && *want != '\0') {
        if (strcmp(want, "alias") == 0) {
            forced = 1;
            path = PATH_ALIAS;
            return 0;
        }
        if (strcmp(want, "proc-mem") != 0) {
            errno = EINVAL;
            pvp_writer_syscall = "PVPATCH_WRITER (not 'proc-mem' or 'alias')";
            return -1;
        }
        forced = 1;
    }
    if (probe_proc_mem() == 0) {
        path = PATH_PROC_MEM;
        return 0;
    }
    if (forced) {
        pvp_writer_syscall = probe_syscall;
        return -1;
    }
    probe_errno = errno;
    if (mem_fd >= 0) {
        close(mem_fd);
        mem_fd = -1;
    }
    path = PATH_ALIAS;
    return 0;
}

const char *pvp_writer_path(void)
{
    return path == PATH_PROC_MEM ? "proc-mem" : path == PATH_ALIAS ? "alias" : "unset";
}

int pvp_writer_atomic_store_ok(void) { return path == PATH_ALIAS; }

/* ---- writing ---------------------------------------------------------------------------- */

/* The pending write: bytes for [run_addr, run_addr + run_len), all in range run_range (which,
 * with nothing pending, is the range of the last write: the next one is usually there too). */
#define RUN_MAX 65536
static uint8_t run_buf[RUN_MAX];
static uintptr_t run_addr;
static size_t run_len;
static int run_range = -1;
/* The batch's thread, so that a sync it issues publishes what it wrote (pvp_writer_sync_flush);
 * `busy` while it changes the pending write, when a signal handler on it must not flush. */
static pthread_t owner;
static volatile sig_atomic_t has_owner, busy;
static int deferred_errno; /* a flush issued by a sync failed: reported by pvp_writer_end */
static const char *deferred_syscall;

int pvp_writer_begin(void)
{
    if (pvp_writer_init() != 0)
        return -1;
    run_len = 0;
    deferred_errno = 0;
    owner = pthread_self();
    has_owner = 1;
    if (path == PATH_PROC_MEM && (mem_fd < 0 || mem_pid != getpid())) {
        /* After a fork (the child handler closed it), or a clone that ran no handler. */
        if (open_mem() != 0) {
            pvp_writer_syscall = "open /proc/self/mem";
            return -1;
        }
    }
    return 0;
}

/* The alias of range r for this batch, mapped on first use.  Only the batch's thread maps. */
static uint8_t *alias_of(int r)
{
    struct code_range *c = &ranges[r];
    uint8_t *a = atomic_load_explicit(&c->alias, memory_order_acquire);
    if (a != NULL)
        return a;
    a = mmap(NULL, c->len, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (a == MAP_FAILED) {
        pvp_writer_syscall = "mmap (alias)";
        return NULL;
    }
    atomic_fetch_add_explicit(&ctr_alias_maps, 1, memory_order_relaxed);
    atomic_store_explicit(&c->alias, a, memory_order_release);
    return a;
}

static void alias_store(uint8_t *dst, const void *src, size_t len)
{
    if (len == 1) { /* a single byte is one store (the protocol's int3 and first bytes) */
        __atomic_store_n((volatile uint8_t *)dst, *(const uint8_t *)src, __ATOMIC_RELAXED);
    } else if (len == 8 && ((uintptr_t)dst & 7) == 0) {
        /* One aligned 8-byte store: the atomic call flip (pvp_writer_atomic_store_ok). */
        uint64_t v;
        memcpy(&v, src, 8);
        __atomic_store_n((volatile uint64_t *)dst, v, __ATOMIC_RELAXED);
    } else {
        memcpy(dst, src, len);
    }
}

static int flush_pending(void)
{
    if (run_len == 0)
        return 0;
    size_t len = run_len;
    run_len = 0;
    return pwrite_all(mem_fd, run_buf, len, run_addr);
}

int pvp_writer_flush(void)
{
    busy = 1;
    atomic_signal_fence(memory_order_seq_cst);
    int rc = flush_pending();
    atomic_signal_fence(memory_order_seq_cst);
    busy = 0;
    return rc;
}

/* From core_sync(): a sync issued by the batch's thread publishes its pending write first, so a
 * caller that forgets pvp_writer_flush() still never syncs ahead of its own writes.  Skipped on
 * other threads, and in a signal handler that interrupted the owner inside the writer (the
 * owner's own sync comes later).  Async-signal-safe. */
void pvp_writer_sync_flush(void)
{
    if (!has_owner || busy || run_len == 0 || !pthread_equal(owner, pthread_self()))
        return;
    busy = 1;
    atomic_signal_fence(memory_order_seq_cst);
    if (flush_pending() != 0 && deferred_errno == 0) {
        deferred_errno = errno;
        deferred_syscall = pvp_writer_syscall;
    }
    atomic_signal_fence(memory_order_seq_cst);
    busy = 0;
}

static int text_write_pending(uintptr_t exec_addr, const void *src, size_t len);

int text_write(uintptr_t exec_addr, const void *src, size_t len)
{
    busy = 1;
    atomic_signal_fence(memory_order_seq_cst);
    int rc = text_write_pending(exec_addr, src, len);
    atomic_signal_fence(memory_order_seq_cst);
    busy = 0;
    return rc;
}

static int text_write_pending(uintptr_t exec_addr, const void *src, size_t len)
{
    if (len == 0)
        return 0;
    if (path == PATH_PROC_MEM && run_len != 0) {
        uintptr_t end = run_addr + run_len;
        const struct code_range *c = &ranges[run_range];
        if (exec_addr >= end && exec_addr - end <= max_gap &&
            exec_addr + len - run_addr <= RUN_MAX && exec_addr + len <= c->exec + c->len) {
            /* Extend the pending write: the gap keeps its current bytes. */
            memcpy(run_buf + run_len, (const void *)end, exec_addr - end);
            memcpy(run_buf + (exec_addr - run_addr), src, len);
            run_len = exec_addr + len - run_addr;
            return 0;
        }
        if (flush_pending() != 0)
            return -1;
    }
    /* Most writes of a batch fall in the range of the previous one. */
    int r = run_range >= 0 && (size_t)run_range < atomic_load(&n_ranges) &&
                    range_holds((size_t)run_range, exec_addr, len)
                ? run_range
                : pvp_code_range_find(exec_addr, len);
    if (r < 0) {
        errno = EFAULT;
        pvp_writer_syscall = "text_write (not in a registered code range)";
        return -1;
    }
    run_range = r;
    if (path == PATH_ALIAS) {
        uint8_t *a = alias_of(r);
        if (a == NULL)
            return -1;
        alias_store(a + (exec_addr - ranges[r].exec), src, len);
        atomic_fetch_add_explicit(&ctr_bytes, len, memory_order_relaxed);
        return 0;
    }
    if (len > RUN_MAX)
        return pwrite_all(mem_fd, src, len, exec_addr);
    memcpy(run_buf, src, len);
    run_addr = exec_addr;
    run_len = len;
    return 0;
}

int pvp_writer_end(void)
{
    int rc = pvp_writer_flush();
    has_owner = 0;
    if (deferred_errno != 0 && rc == 0) {
        errno = deferred_errno;
        pvp_writer_syscall = deferred_syscall;
        rc = -1;
    }
    if (path == PATH_ALIAS) {
        size_t n = atomic_load(&n_ranges);
        for (size_t i = 0; i < n; i++) {
            uint8_t *a = atomic_exchange(&ranges[i].alias, NULL);
            if (a != NULL && munmap(a, ranges[i].len) != 0 && rc == 0) {
                pvp_writer_syscall = "munmap (alias)";
                rc = -1;
            }
        }
    }
    return rc;
}

/* ---- fork ------------------------------------------------------------------------------- */

/* alias path: the child's copy of each shared range, taken in the parent by the prepare
 * handler, i.e. under the batch lock.  Copying in the child instead would race with the parent's
 * next batch, which writes the very pages the child still shares until it has its copy. */
static int snap_fd[MAX_CODE_RANGES];
static size_t n_snaps;

void pvp_writer_fork_prepare(void)
{
    pthread_mutex_lock(&ranges_lock);
    n_snaps = 0;
    if (path != PATH_ALIAS)
        return; /* private mappings: the kernel's copy-on-write is the snapshot */
    size_t n = atomic_load(&n_ranges);
    for (size_t i = 0; i < n; i++)
        snap_fd[i] = ranges[i].fd < 0 ? -1 : memfd_copy(ranges[i].name, ranges[i].len,
                                                         ranges[i].exec);
    n_snaps = n;
}

void pvp_writer_fork_parent(void)
{
    for (size_t i = 0; i < n_snaps; i++)
        if (snap_fd[i] >= 0)
            close(snap_fd[i]);
    n_snaps = 0;
    pthread_mutex_unlock(&ranges_lock);
}

/* In the child (one thread; the parent held the batch lock across the fork). */
void pvp_writer_fork_child(void)
{
    /* proc-mem: the inherited descriptor still writes the *parent's* memory.  Private
     * mappings gave us our own copy-on-write text already. */
    if (mem_fd >= 0) {
        close(mem_fd);
        mem_fd = -1;
    }
    /* alias: map each range's snapshot over its address.  A range without one stays shared
     * with the parent, and this process then refuses to patch (pvp_writer_child_ok). */
    size_t n = atomic_load(&n_ranges);
    for (size_t i = 0; i < n && path == PATH_ALIAS; i++) {
        struct code_range *c = &ranges[i];
        if (c->fd < 0)
            continue;
        int fd = i < n_snaps ? snap_fd[i] : -1;
        if (fd < 0 || mmap((void *)c->exec, c->len, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED,
                           fd, 0) == MAP_FAILED) {
            if (fd >= 0)
                close(fd);
            child_ok = 0;
            continue;
        }
        close(c->fd);
        c->fd = fd;
    }
    n_snaps = 0;
    pthread_mutex_unlock(&ranges_lock);
}

int pvp_writer_child_ok(void) { return child_ok; }

/* ---- status ----------------------------------------------------------------------------- */

void pvp_writer_status(int *out_forced, int *out_probe_errno, const char **out_probe_syscall,
                       size_t *out_max_gap, unsigned long *syscalls, unsigned long *bytes,
                       unsigned long *alias_maps, size_t *n)
{
    *out_forced = forced;
    *out_probe_errno = probe_errno;
    *out_probe_syscall = probe_syscall;
    *out_max_gap = max_gap;
    *syscalls = atomic_load(&ctr_syscalls);
    *bytes = atomic_load(&ctr_bytes);
    *alias_maps = atomic_load(&ctr_alias_maps);
    *n = atomic_load(&n_ranges);
}
