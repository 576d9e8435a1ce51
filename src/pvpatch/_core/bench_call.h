/* bench_call.h - the `bench_call` op group (bench_call.c). */
#ifndef PVPATCH_BENCH_CALL_H
#define PVPATCH_BENCH_CALL_H

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(bench_call) = 2 };
enum {
    PVPATCH_OP_ID(bench_call, call), /* (a, b) -> a + b, rendered as a direct call */
    PVPATCH_OP_ID(bench_call, inl),  /* (a, b) -> a + b, rendered inline: lea */
    PVPATCH_OP_ID(bench_call, nop),  /* () -> nothing, rendered as one NOP */
    PVPATCH_NOPS(bench_call)
};
PVPATCH_DECLARE_SLOTS(bench_call);

extern const struct pvpatch_op core_bench_call_ops[];
extern const char *const core_bench_call_variants[];

#endif
