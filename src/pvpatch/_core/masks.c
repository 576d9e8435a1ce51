/*
 * masks.c - keep SIGTRAP out of the signal masks the process sets.
 *
 * A thread that reaches an int3 with SIGTRAP blocked is killed: the kernel resets a forced
 * signal that is blocked to SIG_DFL (kernel/signal.c, force_sig_info_to_task).  Programs block
 * every signal in ordinary ways: a handler installed with sigfillset(&sa.sa_mask), a thread that
 * blocks everything around a critical section.  So pvpatch owns the entry points that set masks
 * -- pthread_sigmask, sigprocmask and sigaction, and sigsuspend, ppoll, pselect and epoll_pwait,
 * which set one for their duration -- in every loaded object: their GOT entries
 * (R_X86_64_JUMP_SLOT and R_X86_64_GLOB_DAT relocations against those names) are pointed at
 * wrappers that drop SIGTRAP from the set before calling the C library.  These are data writes,
 * not code; a GOT under full RELRO is made writable for the store and read-only again.
 *
 * Objects loaded later are covered at the next batch that writes int3: core_own_masks() runs
 * before each, and costs one dl_iterate_phdr step when nothing was loaded (dlpi_adds).
 *
 * What this cannot see (docs/protocol.md, "SIGTRAP blocked"): masks set by raw system calls,
 * by the C library for itself (glibc blocks every signal briefly in pthread_create, fork,
 * posix_spawn -- no site runs there), and by a call made before the object's GOT was rewritten.
 */
#define _GNU_SOURCE
#include "rt.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef int (*mask_fn)(int, const sigset_t *, sigset_t *);
typedef int (*action_fn)(int, const struct sigaction *, struct sigaction *);
static mask_fn real_pthread_sigmask, real_sigprocmask;
static action_fn real_sigaction;
static _Atomic unsigned long masks_stripped;

static const sigset_t *without_trap(int how, const sigset_t *set, sigset_t *buf)
{
    if (set == NULL || how == SIG_UNBLOCK || !sigismember(set, SIGTRAP))
        return set;
    *buf = *set;
    sigdelset(buf, SIGTRAP);
    atomic_fetch_add_explicit(&masks_stripped, 1, memory_order_relaxed);
    return buf;
}

static int w_pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
    sigset_t buf;
    return real_pthread_sigmask(how, without_trap(how, set, &buf), old);
}

static int w_sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    sigset_t buf;
    return real_sigprocmask(how, without_trap(how, set, &buf), old);
}

static int w_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    struct sigaction a;
    if (sig == SIGTRAP && core_trap_sigaction(act, old) == 0)
        return 0; /* recorded as the handler pvpatch's chains to */
    if (act != NULL && sig != SIGTRAP && sigismember(&act->sa_mask, SIGTRAP)) {
        a = *act;
        sigdelset(&a.sa_mask, SIGTRAP);
        act = &a;
        atomic_fetch_add_explicit(&masks_stripped, 1, memory_order_relaxed);
    }
    return real_sigaction(sig, act, old);
}

/* Calls that set a mask for their duration: a handler of another signal that runs meanwhile
 * runs with that mask (plus its own), so it must not hold SIGTRAP either. */
typedef int (*suspend_fn)(const sigset_t *);
typedef int (*ppoll_fn)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
typedef int (*pselect_fn)(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
                          const sigset_t *);
typedef int (*epoll_pwait_fn)(int, struct epoll_event *, int, int, const sigset_t *);
static suspend_fn real_sigsuspend;
static ppoll_fn real_ppoll;
static pselect_fn real_pselect;
static epoll_pwait_fn real_epoll_pwait;

static int w_sigsuspend(const sigset_t *m)
{
    sigset_t buf;
    return real_sigsuspend(without_trap(SIG_SETMASK, m, &buf));
}

static int w_ppoll(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *m)
{
    sigset_t buf;
    return real_ppoll(fds, n, t, without_trap(SIG_SETMASK, m, &buf));
}

static int w_pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t,
                     const sigset_t *m)
{
    sigset_t buf;
    return real_pselect(n, r, w, e, t, without_trap(SIG_SETMASK, m, &buf));
}

static int w_epoll_pwait(int fd, struct epoll_event *ev, int max, int t, const sigset_t *m)
{
    sigset_t buf;
    return real_epoll_pwait(fd, ev, max, t, without_trap(SIG_SETMASK, m, &buf));
}

static const struct {
    const char *name;
    void *wrapper;
    void **real;
} owned[] = {
    {"pthread_sigmask", (void *)w_pthread_sigmask, (void **)&real_pthread_sigmask},
    {"sigprocmask", (void *)w_sigprocmask, (void **)&real_sigprocmask},
    {"sigaction", (void *)w_sigaction, NULL}, /* real_sigaction: published last */
    {"sigsuspend", (void *)w_sigsuspend, (void **)&real_sigsuspend},
    {"ppoll", (void *)w_ppoll, (void **)&real_ppoll},
    {"pselect", (void *)w_pselect, (void **)&real_pselect},
    {"epoll_pwait", (void *)w_epoll_pwait, (void **)&real_epoll_pwait},
};
#define N_OWNED (sizeof(owned) / sizeof(owned[0]))

/* Objects seen by the last full look.  Every look rewrites every object (store_got skips an
 * entry that is already ours), because a library unloaded and loaded again at the same address
 * is a new object with a fresh GOT. */
static size_t n_objects;
static unsigned long long last_adds = ~0ull;
static unsigned long got_entries;
static int own_errno;
static bool scanned_new;
static pthread_mutex_t own_lock = PTHREAD_MUTEX_INITIALIZER;

static uintptr_t dyn_ptr(uintptr_t base, ElfW(Addr) p)
{
    /* ld.so relocates most d_ptr values in place; the vDSO's are left as offsets. */
    return p < base ? base + p : p;
}

static int store_got(uintptr_t slot, void *value, uintptr_t relro_lo, uintptr_t relro_hi)
{
    if (__atomic_load_n((void **)slot, __ATOMIC_RELAXED) == value)
        return 0;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t page = slot & ~(uintptr_t)(pg - 1);
    bool ro = slot >= relro_lo && slot < relro_hi;
    if (ro && mprotect((void *)page, (size_t)pg, PROT_READ | PROT_WRITE) != 0)
        return -1;
    __atomic_store_n((void **)slot, value, __ATOMIC_RELAXED); /* one aligned store */
    if (ro && mprotect((void *)page, (size_t)pg, PROT_READ) != 0)
        return -1;
    got_entries++;
    return 0;
}

static void rewrite_relocs(uintptr_t base, const ElfW(Rela) *r, size_t bytes, const ElfW(Sym) *sym,
                           const char *str, uintptr_t relro_lo, uintptr_t relro_hi)
{
    for (size_t i = 0; i < bytes / sizeof(*r); i++) {
        unsigned type = ELF64_R_TYPE(r[i].r_info);
        if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
            continue;
        const char *name = str + sym[ELF64_R_SYM(r[i].r_info)].st_name;
        for (size_t k = 0; k < N_OWNED; k++)
            if (strcmp(name, owned[k].name) == 0 &&
                store_got(base + r[i].r_offset, owned[k].wrapper, relro_lo, relro_hi) != 0 &&
                own_errno == 0)
                own_errno = errno;
    }
}

static int own_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    bool *first = data;
    if (*first) {
        *first = false;
        if (info->dlpi_adds == last_adds)
            return 1; /* nothing loaded since the last look */
        last_adds = info->dlpi_adds;
        n_objects = 0;
    }
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t relro_lo = 0, relro_hi = 0, base = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(base + ph->p_vaddr);
        else if (ph->p_type == PT_GNU_RELRO) {
            /* The pages ld.so made read-only: both ends rounded down (elf/dl-reloc.c,
             * _dl_protect_relro); the partial last page stays writable. */
            uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
            relro_lo = (base + ph->p_vaddr) & ~(pg - 1);
            relro_hi = (base + ph->p_vaddr + ph->p_memsz) & ~(pg - 1);
        }
    }
    if (dyn == NULL || (info->dlpi_name && strstr(info->dlpi_name, "linux-vdso")))
        return 0;
    const ElfW(Sym) *sym = NULL;
    const char *str = NULL;
    const ElfW(Rela) *jmprel = NULL, *rela = NULL;
    size_t jmprelsz = 0, relasz = 0;
    for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
        switch (d->d_tag) {
        case DT_SYMTAB: sym = (const ElfW(Sym) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_STRTAB: str = (const char *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_JMPREL: jmprel = (const ElfW(Rela) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_PLTRELSZ: jmprelsz = d->d_un.d_val; break;
        case DT_RELA: rela = (const ElfW(Rela) *)dyn_ptr(base, d->d_un.d_ptr); break;
        case DT_RELASZ: relasz = d->d_un.d_val; break;
        }
    }
    if (sym != NULL && str != NULL) {
        if (jmprel != NULL)
            rewrite_relocs(base, jmprel, jmprelsz, sym, str, relro_lo, relro_hi);
        if (rela != NULL)
            rewrite_relocs(base, rela, relasz, sym, str, relro_lo, relro_hi);
    }
    scanned_new = true;
    n_objects++;
    return 0;
}

/* sigaction() itself, past any GOT entry pvpatch owns. */
int core_sigaction_real(int sig, const struct sigaction *act, struct sigaction *old)
{
    action_fn f = __atomic_load_n(&real_sigaction, __ATOMIC_ACQUIRE);
    return f != NULL ? f(sig, act, old) : sigaction(sig, act, old);
}

/* Rewrite the GOTs of every object loaded since the last call.  Returns 1 if there were such
 * objects, 0 if not, or -1 with errno of the first mprotect that failed (the other objects are
 * still rewritten). */
int core_own_masks(void)
{
    pthread_mutex_lock(&own_lock);
    if (real_sigaction == NULL) {
        /* The C library's own functions, found by name in it: the wrappers call these, never
         * a GOT entry that may point back at them. */
        bool missing = false;
        for (size_t k = 0; k < N_OWNED; k++)
            if (owned[k].real != NULL && (*owned[k].real = dlsym(RTLD_DEFAULT, owned[k].name)) == NULL)
                missing = true;
        action_fn sa = (action_fn)dlsym(RTLD_DEFAULT, "sigaction");
        if (missing || !sa) {
            pthread_mutex_unlock(&own_lock);
            errno = ENOSYS;
            return -1;
        }
        __atomic_store_n(&real_sigaction, sa, __ATOMIC_RELEASE);
    }
    bool first = true;
    own_errno = 0;
    scanned_new = false;
    dl_iterate_phdr(own_cb, &first);
    int e = own_errno, fresh = scanned_new;
    pthread_mutex_unlock(&own_lock);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return fresh;
}

void core_masks_counters(unsigned long *got, size_t *objects, unsigned long *stripped)
{
    *got = got_entries;
    *objects = n_objects;
    *stripped = atomic_load(&masks_stripped);
}
