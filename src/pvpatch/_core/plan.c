/*
 * plan.c - what a site's bytes are for each variant: the x86-64 renderings and their rules.
 *
 * Python-free (rt.h); x86.render and registry.plan_sites use these through the extension, and
 * pvrt_register (rt.c) in a process without Python.  One implementation of the rules:
 *
 *   Why every rendering is *one* instruction: a thread can be preempted on any instruction
 *   boundary, or return from a call to the end of the call.  A single instruction per site has
 *   no inner boundary, so every rendering agrees on where instructions start: the site start and
 *   the site end.  Instructions are stretched with CS segment-override prefixes, which are
 *   ignored in 64-bit mode (assemblers pad branches with them; compilers emit `cs call`).
 *
 *   default   `call *slot(%rip)` (ff 15 rel32) stretched to the site length: what the header
 *             emits at build time, and what an unregistered module's sites go back to;
 *   call      `call rel32` to the variant's function, stretched the same way;
 *   inline    the variant's one-instruction template, stretched, where it is trusted (shipped
 *             with pvpatch, or checked by the caller's decoder), the site allows it
 *             (no PVPATCH_F_NOINLINE) and the CPU has every feature it needs;
 *   nop       one NOP of the site's length (Intel SDM vol. 2B, "Recommended Multi-Byte Sequence
 *             of NOP Instruction"; longer ones with 66 prefixes, as assemblers emit them).
 *
 * Errors: -1 with e->msg worded as x86.py's EncodeError (the Python binding raises that).
 */
#define _GNU_SOURCE
#include "rt.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define CS 0x2e

static const uint8_t canonical_nops[10][9] = {
    {0},
    {0x90},
    {0x66, 0x90},
    {0x0f, 0x1f, 0x00},
    {0x0f, 0x1f, 0x40, 0x00},
    {0x0f, 0x1f, 0x44, 0x00, 0x00},
    {0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00},
    {0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00},
    {0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00},
    {0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00},
};
/* nopw %cs:0x0(%rax,%rax,1), the 10-byte base of the longer single NOPs */
static const uint8_t nop10[10] = {0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00};

int pvrt_nop(unsigned len, uint8_t *out, struct pvrt_error *e)
{
    if (len < 1 || len > PVPATCH_SITE_MAX)
        return pvrt_fail(e, 0, "", "no single NOP is %u bytes long (1..%d)", len,
                         PVPATCH_SITE_MAX);
    if (len <= 9) {
        memcpy(out, canonical_nops[len], len);
    } else {
        memset(out, 0x66, len - 10);
        memcpy(out + len - 10, nop10, 10);
    }
    return 0;
}

static int rel32(uintptr_t origin_end, uintptr_t target, uint8_t *out, struct pvrt_error *e)
{
    int64_t d = (int64_t)(target - origin_end);
    if (d < INT32_MIN || d > INT32_MAX)
        return pvrt_fail(e, 0, "", "target 0x%lx is out of rel32 range of 0x%lx",
                         (unsigned long)target, (unsigned long)origin_end);
    int32_t v = (int32_t)d;
    memcpy(out, &v, 4);
    return 0;
}

/* insn (one instruction) preceded by CS prefixes up to len bytes */
static int stretch(const uint8_t *insn, unsigned n, unsigned len, uint8_t *out,
                   struct pvrt_error *e)
{
    if (n > len)
        return pvrt_fail(e, 0, "", "a %u-byte instruction does not fit in %u bytes", n, len);
    if (len > PVPATCH_SITE_MAX)
        return pvrt_fail(e, 0, "", "an instruction is at most %d bytes, not %u",
                         PVPATCH_SITE_MAX, len);
    memset(out, CS, len - n);
    memmove(out + len - n, insn, n);
    return 0;
}

int pvrt_call_rel32(uintptr_t site, uintptr_t target, unsigned len, uint8_t *out,
                    struct pvrt_error *e)
{
    uint8_t insn[5] = {0xe8};
    if (len < 5 || len > PVPATCH_SITE_MAX)
        return pvrt_fail(e, 0, "", "a call rel32 needs 5..15 bytes, not %u", len);
    if (rel32(site + len, target, insn + 1, e) != 0)
        return -1;
    return stretch(insn, 5, len, out, e);
}

int pvrt_call_slot(uintptr_t site, uintptr_t slot, unsigned len, uint8_t *out,
                   struct pvrt_error *e)
{
    uint8_t insn[6] = {0xff, 0x15};
    if (len < 6 || len > PVPATCH_SITE_MAX)
        return pvrt_fail(e, 0, "", "a call through a slot needs 6..15 bytes, not %u", len);
    if (rel32(site + len, slot, insn + 2, e) != 0)
        return -1;
    return stretch(insn, 6, len, out, e);
}

int pvrt_default_site(uintptr_t site, uintptr_t slot, unsigned len, uint8_t *out,
                      struct pvrt_error *e)
{
    if (len < PVPATCH_SITE_MIN || len > PVPATCH_SITE_MAX)
        return pvrt_fail(e, 0, "", "a default site is 6..15 bytes, not %u", len);
    return pvrt_call_slot(site, slot, len, out, e);
}

int pvrt_render(uintptr_t site, unsigned len, uintptr_t fn, const uint8_t *tmpl,
                unsigned tmpl_len, int is_nop, int inline_ok, uint8_t *out,
                struct pvrt_error *e)
{
    if (is_nop)
        return pvrt_nop(len, out, e) == 0 ? PVRT_KIND_NOP : -1;
    if (tmpl != NULL && tmpl_len > 0 && inline_ok && tmpl_len <= len)
        return stretch(tmpl, tmpl_len, len, out, e) == 0 ? PVRT_KIND_INLINE : -1;
    return pvrt_call_rel32(site, fn, len, out, e) == 0 ? PVRT_KIND_CALL : -1;
}

const char *pvrt_kind_name(int kind)
{
    switch (kind) {
    case PVRT_KIND_NOP: return "nop";
    case PVRT_KIND_INLINE: return "inline";
    case PVRT_KIND_CALL: return "call";
    default: return "default";
    }
}

/* ---- trusted templates ------------------------------------------------------------------ */

/* Templates that ship with pvpatch (its C core), accepted without a decoder.  Safety is a
 * property of the bytes alone, so the table is keyed by them.  The suite checks, with capstone,
 * that these are exactly the core's templates and that each follows the template ABI
 * (tests/test_templates.py); registry.SHIPPED_TEMPLATES reads this table. */
const struct pvrt_shipped_template pvrt_shipped_templates[] = {
    {(const uint8_t *)"\xb8\x03\x10\x00\x00", 5, "movl $0x1003, %eax"}, /* selftest.value, alt */
    {(const uint8_t *)"\x48\x8d\x04\x37", 4, "leaq (%rdi, %rsi), %rax"}, /* selftest.add */
    {(const uint8_t *)"\x48\xb8\x44\x44\x33\x33\x22\x22\x11\x11", 10,
     "movabsq $0x1111222233334444, %rax"},                              /* selftest.wide */
    {(const uint8_t *)"\x48\x83\x07\x02", 4, "addq $2, (%rdi)"},        /* selftest.mark, alt */
    {(const uint8_t *)"\xc6\x07\x00", 3, "movb $0, (%rdi)"},            /* lock.unlock, native */
    {(const uint8_t *)"\xf3\x48\x0f\xb8\xc7", 5, "popcntq %rdi, %rax"}, /* bits.popcount */
    {(const uint8_t *)"\xf3\x48\x0f\xbd\xc7", 5, "lzcntq %rdi, %rax"},  /* bits.clz */
    {NULL, 0, NULL},
};

/* Templates the caller checked with its own decoder (Python: capstone), added before
 * registering the module that uses them.  A fixed table: registration is rare and the table
 * is read without a lock once published (n_trusted is the release point). */
#define MAX_TRUSTED 256
static struct {
    uint8_t b[PVPATCH_SITE_MAX];
    unsigned n;
} trusted[MAX_TRUSTED];
static unsigned n_trusted;
static pthread_mutex_t trusted_lock = PTHREAD_MUTEX_INITIALIZER;

int pvrt_template_trusted(const uint8_t *t, size_t n)
{
    for (const struct pvrt_shipped_template *s = pvrt_shipped_templates; s->bytes; s++)
        if (s->len == n && memcmp(s->bytes, t, n) == 0)
            return 1;
    unsigned k = __atomic_load_n(&n_trusted, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < k; i++)
        if (trusted[i].n == n && memcmp(trusted[i].b, t, n) == 0)
            return 1;
    return 0;
}

int pvrt_trust_template(const uint8_t *t, size_t n, struct pvrt_error *e)
{
    if (n == 0 || n > PVPATCH_SITE_MAX)
        return pvrt_fail(e, 0, "", "a template is 1..%d bytes, not %zu", PVPATCH_SITE_MAX, n);
    if (pvrt_template_trusted(t, n))
        return 0;
    pthread_mutex_lock(&trusted_lock);
    if (n_trusted == MAX_TRUSTED) {
        pthread_mutex_unlock(&trusted_lock);
        return pvrt_fail(e, 0, "", "too many trusted templates (%d)", MAX_TRUSTED);
    }
    memcpy(trusted[n_trusted].b, t, n);
    trusted[n_trusted].n = (unsigned)n;
    __atomic_store_n(&n_trusted, n_trusted + 1, __ATOMIC_RELEASE); /* partner: the acquire above */
    pthread_mutex_unlock(&trusted_lock);
    return 0;
}

/* ---- CPU features (the gates of PVPATCH_IMPL_NEEDS_*) ----------------------------------- */

#define XCR0_YMM 0x6u  /* SSE and AVX state */
#define XCR0_ZMM 0xe6u /* and opmask, ZMM_Hi256, Hi16_ZMM */

/* CPUID (Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3, appendix E); AVX2 and AVX-512 also need
 * the OS to save the registers (XGETBV, XCR0), as the kernel and glibc check. */
uint32_t pvrt_cpu_detected(void)
{
    uint32_t bits = 0;
    unsigned r[4];
    pvrt_cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    pvrt_cpuid(1, 0, r);
    unsigned c1 = r[2];
    if (c1 & (1u << 23))
        bits |= PVPATCH_IMPL_NEEDS_POPCNT;
    if (c1 & (1u << 22))
        bits |= PVPATCH_IMPL_NEEDS_MOVBE;
    uint64_t xcr0 = (c1 & (1u << 27)) ? pvrt_xgetbv(0) : 0; /* OSXSAVE: XGETBV is enabled */
    if (max_leaf >= 7) {
        pvrt_cpuid(7, 0, r);
        unsigned b7 = r[1];
        if (b7 & (1u << 3))
            bits |= PVPATCH_IMPL_NEEDS_BMI1;
        if (b7 & (1u << 8))
            bits |= PVPATCH_IMPL_NEEDS_BMI2;
        if ((b7 & (1u << 5)) && (xcr0 & XCR0_YMM) == XCR0_YMM)
            bits |= PVPATCH_IMPL_NEEDS_AVX2;
        if ((b7 & (1u << 16)) && (xcr0 & XCR0_ZMM) == XCR0_ZMM)
            bits |= PVPATCH_IMPL_NEEDS_AVX512F;
    }
    pvrt_cpuid(0x80000000u, 0, r);
    if (r[0] >= 0x80000001u) {
        pvrt_cpuid(0x80000001u, 0, r);
        if (r[2] & (1u << 5))
            bits |= PVPATCH_IMPL_NEEDS_LZCNT;
    }
    return bits;
}
