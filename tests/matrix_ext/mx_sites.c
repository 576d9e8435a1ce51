/* mx_sites.c - functions holding `mx` sites, shaped to tempt the compiler: leaf functions,
 * shrink-wrapping candidates, VLAs, over-aligned locals, many values live across a site. */
#include "mx.h"

/* A real call among the arguments: it clobbers rdi, rsi and rdx. */
static __attribute__((noinline)) long twice(long x)
{
    __asm__ volatile("" : "+r"(x)); /* not const, not folded */
    return 2 * x;
}

static long *seq_log, *seq_n;
static __attribute__((noinline)) long seq(long v)
{
    seq_log[(*seq_n)++] = v;
    return v;
}

__attribute__((noinline)) long mx_add(long a, long b)
{
    return (long)PVPATCH_CALL2(mx, add, 6, 0, a, b);
}

__attribute__((noinline)) long mx_add9(long a, long b)
{
    return (long)PVPATCH_CALL2(mx, add, 9, 0, a, b);
}

__attribute__((noinline)) long mx_order2(void)
{
    return (long)PVPATCH_CALL2(mx, add, 6, 0, 1, twice(20));
}

__attribute__((noinline)) long mx_order3(long *log, long *nlog)
{
    seq_log = log;
    seq_n = nlog;
    *nlog = 0;
    return (long)PVPATCH_CALL3(mx, mix3, 7, 0, seq(1), twice(seq(2)), seq(3));
}

__attribute__((noinline)) long mx_mark(void)
{
    long c = 0;
    PVPATCH_CALL1(mx, mark, 6, 0, &c);
    PVPATCH_CALL1(mx, mark, 11, 0, &c);
    return c;
}

/* A leaf function whose locals would live in the red zone, where a call pushes. */
__attribute__((noinline)) long mx_redzone(long a)
{
    volatile long buf[12];
    for (int i = 0; i < 12; i++)
        buf[i] = a + i;
    long r = (long)PVPATCH_CALL0(mx, align, 6, 0);
    long s = 0;
    for (int i = 0; i < 12; i++)
        s += buf[i];
    return s + r;
}

__attribute__((noinline)) long mx_align_leaf(void)
{
    return (long)PVPATCH_CALL0(mx, align, 6, 0);
}

/* Shrink-wrapping candidate: the fast path needs no frame. */
__attribute__((noinline)) long mx_align_cond(long x)
{
    if (x > 5)
        return (long)PVPATCH_CALL0(mx, align, 6, 0);
    return x * 3;
}

__attribute__((noinline)) long mx_align_vla(long n)
{
    volatile char buf[n];
    buf[0] = 1;
    return (long)PVPATCH_CALL0(mx, align, 8, 0) + buf[0] - 1;
}

__attribute__((noinline)) long mx_align_loop(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc |= (long)PVPATCH_CALL0(mx, align, 6, 0);
    return acc;
}

/* A 64-byte aligned local: the stack is realigned in the prologue. */
__attribute__((noinline)) long mx_align_wide(long x)
{
    volatile long v[8] __attribute__((aligned(64)));
    v[0] = x;
    return (long)PVPATCH_CALL0(mx, align, 6, 0) + v[0] - x;
}

/* Many integer, floating-point, x87 and vector values live across one site whose op overwrites
 * every caller-saved register.  The same function without the site gives the reference. */
typedef long mx_v4 __attribute__((vector_size(32)));
typedef long mx_v8 __attribute__((vector_size(64)));

#define MX_D(n) double d##n = (double)(a + n) + 0.5;
#define MX_S(n) s = s * 31 + (long)(d##n * 2.0);
__attribute__((noinline)) long mx_live(long a, int with_site)
{
    long x[12];
    for (int i = 0; i < 12; i++)
        x[i] = a * (i + 3) + i;
    /* Scalars, not an array: a compiler that may keep them in registers across the site will
     * (xmm16-31 under AVX-512, where nothing else is free). */
    MX_D(0) MX_D(1) MX_D(2) MX_D(3) MX_D(4) MX_D(5) MX_D(6) MX_D(7) MX_D(8) MX_D(9)
    MX_D(10) MX_D(11) MX_D(12) MX_D(13) MX_D(14) MX_D(15)
    long double ld = (long double)a + 0.25L;
    mx_v4 v = {a, a + 1, a + 2, a + 3};
    mx_v8 w = {a, 2 * a, 3 * a, 4 * a, 5 * a, 6 * a, 7 * a, 8 * a};
    mx_v4 v2 = v * 3;
    mx_v8 w2 = w + 7;
    long r = 0x5a;
    if (with_site)
        r = (long)PVPATCH_CALL0(mx, trash, 6, 0);
    long s = r;
    for (int i = 0; i < 12; i++)
        s = s * 31 + x[i];
    MX_S(0) MX_S(1) MX_S(2) MX_S(3) MX_S(4) MX_S(5) MX_S(6) MX_S(7) MX_S(8) MX_S(9)
    MX_S(10) MX_S(11) MX_S(12) MX_S(13) MX_S(14) MX_S(15)
    s = s * 31 + (long)(ld * 4.0L);
    for (int i = 0; i < 4; i++)
        s = s * 31 + v[i] + v2[i];
    for (int i = 0; i < 8; i++)
        s = s * 31 + w[i] + w2[i];
    return s;
}

/* Vector registers the site must declare clobbered, the widest the file's ISA has.  One asm
 * defines 18 vector values (15 under SSE/AVX2), more than xmm0-15 hold, so under AVX-512 some
 * live in xmm16-31; they stay live across the site into a second asm that sums them.  A
 * compiler told that the site leaves xmm16-31 (or ymm/zmm upper halves) alone keeps them there,
 * and the op, which overwrites every caller-saved register, changes the sum. */
#if defined(__AVX512F__)
typedef long mx_vr __attribute__((vector_size(64)));
#define MX_RC "v"
#define MX_NR 18
#define MX_SET(n) "vpbroadcastq %[a], %" #n "\n\t"
#define MX_SUM(n) "vpaddq %" #n ", %[s], %[s]\n\t"
#define MX_ZERO "vpxorq %[s], %[s], %[s]\n\t"
#elif defined(__AVX2__)
typedef long mx_vr __attribute__((vector_size(32)));
#define MX_RC "x"
#define MX_NR 15
#define MX_SET(n) "vpbroadcastq %[a], %" #n "\n\t"
#define MX_SUM(n) "vpaddq %" #n ", %[s], %[s]\n\t"
#define MX_ZERO "vpxor %[s], %[s], %[s]\n\t"
#else
typedef long mx_vr __attribute__((vector_size(16)));
#define MX_RC "x"
#define MX_NR 15
#define MX_SET(n) "movq %[a], %" #n "\n\tpunpcklqdq %" #n ", %" #n "\n\t"
#define MX_SUM(n) "paddq %" #n ", %[s]\n\t"
#define MX_ZERO "pxor %[s], %[s]\n\t"
#endif
#define MX_R8(F, b) F(b##0) F(b##1) F(b##2) F(b##3) F(b##4) F(b##5) F(b##6) F(b##7)
#define MX_R15(F) MX_R8(F, ) F(8) F(9) F(10) F(11) F(12) F(13) F(14)
__attribute__((noinline)) long mx_regs(long a, int with_site)
{
    if (!with_site) { /* the reference: each lane of the sum is MX_NR * a */
        unsigned long s = 0x5a;
        for (int i = 0; i < (int)(sizeof(mx_vr) / sizeof(long)); i++)
            s = s * 31 + (unsigned long)(MX_NR * a);
        return (long)s;
    }
    mx_vr o0, o1, o2, o3, o4, o5, o6, o7, o8, o9, o10, o11, o12, o13, o14, sum;
#if MX_NR == 18
    mx_vr o15, o16, o17;
#endif
#if MX_NR == 18
    __asm__(MX_R15(MX_SET) MX_SET(15) MX_SET(16) MX_SET(17)
            : "=" MX_RC(o0), "=" MX_RC(o1), "=" MX_RC(o2), "=" MX_RC(o3), "=" MX_RC(o4), "=" MX_RC(o5), "=" MX_RC(o6), "=" MX_RC(o7), "=" MX_RC(o8), "=" MX_RC(o9), "=" MX_RC(o10), "=" MX_RC(o11), "=" MX_RC(o12), "=" MX_RC(o13), "=" MX_RC(o14), "=" MX_RC(o15), "=" MX_RC(o16), "=" MX_RC(o17)
            : [a] "m"(a));
#else
    __asm__(MX_R15(MX_SET) : "=" MX_RC(o0), "=" MX_RC(o1), "=" MX_RC(o2), "=" MX_RC(o3), "=" MX_RC(o4), "=" MX_RC(o5), "=" MX_RC(o6), "=" MX_RC(o7), "=" MX_RC(o8), "=" MX_RC(o9), "=" MX_RC(o10), "=" MX_RC(o11), "=" MX_RC(o12), "=" MX_RC(o13), "=" MX_RC(o14) : [a] "m"(a));
#endif
    unsigned long s = PVPATCH_CALL0(mx, trash, 6, 0); /* unconditional: no join to spill at */
#if MX_NR == 18
    /* operand 0 is the sum, the values are 1..18 */
    __asm__(MX_ZERO MX_SUM(1) MX_SUM(2) MX_SUM(3) MX_SUM(4) MX_SUM(5) MX_SUM(6) MX_SUM(7) MX_SUM(8) MX_SUM(9) MX_SUM(10) MX_SUM(11) MX_SUM(12) MX_SUM(13) MX_SUM(14) MX_SUM(15) MX_SUM(16) MX_SUM(17) MX_SUM(18)
            : [s] "=&" MX_RC(sum)
            : MX_RC(o0), MX_RC(o1), MX_RC(o2), MX_RC(o3), MX_RC(o4), MX_RC(o5), MX_RC(o6), MX_RC(o7), MX_RC(o8), MX_RC(o9), MX_RC(o10), MX_RC(o11), MX_RC(o12), MX_RC(o13), MX_RC(o14), MX_RC(o15), MX_RC(o16), MX_RC(o17));
#else
    __asm__(MX_ZERO MX_SUM(1) MX_SUM(2) MX_SUM(3) MX_SUM(4) MX_SUM(5) MX_SUM(6) MX_SUM(7) MX_SUM(8) MX_SUM(9) MX_SUM(10) MX_SUM(11) MX_SUM(12) MX_SUM(13) MX_SUM(14) MX_SUM(15)
            : [s] "=&" MX_RC(sum) : MX_RC(o0), MX_RC(o1), MX_RC(o2), MX_RC(o3), MX_RC(o4), MX_RC(o5), MX_RC(o6), MX_RC(o7), MX_RC(o8), MX_RC(o9), MX_RC(o10), MX_RC(o11), MX_RC(o12), MX_RC(o13), MX_RC(o14));
#endif
    for (int i = 0; i < (int)(sizeof(sum) / sizeof(long)); i++)
        s = s * 31 + (unsigned long)sum[i];
    return (long)s;
}

__attribute__((noinline)) long mx_bt_site(void **buf, long n, long how)
{
    return (long)PVPATCH_CALL3(mx, bt, 6, 0, buf, n, how);
}

__attribute__((noinline)) long mx_sleep_site(volatile int *in)
{
    return (long)PVPATCH_CALL1(mx, sleep, 6, 0, in);
}

/* The only 13-byte site of op add: the registration test finds it by its length. */
__attribute__((noinline)) long mx_worker_site(long a, long b)
{
    return (long)PVPATCH_CALL2(mx, add, 13, 0, a, b);
}
