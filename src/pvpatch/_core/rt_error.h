/* rt_error.h - the runtime's error record, shared by every Python-free part of the runtime
 * (rt.h, agent.h, locks.h) and by the bindings that turn it into Python exceptions.  Alone in
 * its header so that a part that builds without the others (agent.h in tests/c/agent_test.c)
 * has the one definition too. */
#ifndef PVPATCH_RT_ERROR_H
#define PVPATCH_RT_ERROR_H

struct pvrt_error {
    int err;            /* errno of the failed call (syscall names it), or 0 for a refusal */
    char syscall[32];
    char msg[480];
    /* The call's whole name when it does not fit in syscall[] (the writer names its calls at
     * length, "pwrite (/proc/self/mem)"); static storage, or NULL. */
    const char *syscall_long;
    long long bad_addr; /* a refused batch's site address, or -1 */
};

#endif
