/* mx.h - the `mx` op group of the header test matrix (tests/test_header_matrix.py): an
 * extension in two translation units, built by the test with every compiler and flag set. */
#ifndef MX_H
#define MX_H

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(mx) = 0 };
enum {
    PVPATCH_OP_ID(mx, add),   /* (a, b) -> a + b (+100 pv, +200 alt); native inline lea */
    PVPATCH_OP_ID(mx, mix3),  /* (a, b, c) -> a + 1000 b + 1000000 c (+1 pv, +2 alt) */
    PVPATCH_OP_ID(mx, mark),  /* (long *p): native NOP, pv *p += 1, alt inline addq $2,(%rdi) */
    PVPATCH_OP_ID(mx, align), /* () -> (rsp at the call) mod 16, 0 when the ABI holds */
    PVPATCH_OP_ID(mx, trash), /* () -> 0x5a, with every caller-saved register overwritten */
    PVPATCH_OP_ID(mx, bt),    /* (void **buf, n, how) -> frames: backtrace/libunwind/SIGUSR1 */
    PVPATCH_OP_ID(mx, sleep), /* (volatile int *in) -> sets *in, then sleeps until cancelled */
    PVPATCH_NOPS(mx)
};
PVPATCH_DECLARE_SLOTS(mx);

#define MX_BT_BACKTRACE 0
#define MX_BT_LIBUNWIND 1
#define MX_BT_SIGNAL 2

/* mx_sites.c */
long mx_add(long a, long b);
long mx_add9(long a, long b);
long mx_order2(void);
long mx_order3(long *log, long *nlog);
long mx_mark(void);
long mx_redzone(long a);
long mx_align_leaf(void);
long mx_align_cond(long x);
long mx_align_vla(long n);
long mx_align_loop(long n);
long mx_align_wide(long x);
long mx_live(long a, int with_site);
long mx_regs(long a, int with_site);
long mx_bt_site(void **buf, long n, long how);
long mx_sleep_site(volatile int *in);
long mx_worker_site(long a, long b);

#endif
