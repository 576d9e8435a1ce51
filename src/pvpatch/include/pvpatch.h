/*
 * pvpatch.h - patchable call sites for C extensions.
 *
 * A module declares op groups (a name, a list of variants, a list of ops, and for every op one
 * implementation per variant) and calls the ops through *sites*: a few bytes of machine code whose
 * rendering pvpatch rewrites while the process runs.  Every site is recorded in an ELF section:
 *
 *   pvpatch_runtime   sites that stay patchable for the life of the process
 *   pvpatch_boot      sites patched once, when the module registers, then forgotten
 *
 * A record is 8 bytes and PC-relative, so the sections need no relocations (see struct
 * pvpatch_site).  At build time a site holds its *default* rendering: canonical NOPs followed by an
 * indirect call through the op's slot, so that the call is the last instruction and the return
 * address is the end of the site.  When the module registers (pvpatch.register_module()), every
 * site is rewritten to the group's current variant, which is always one instruction:
 *
 *   call rel32      to the variant's function, stretched to the site length with CS prefixes
 *   inline template the variant's one-instruction template, stretched the same way
 *
 * One instruction per site means that a thread preempted or returning anywhere near a site is on
 * an instruction boundary of every rendering (see docs/protocol.md).
 *
 * Usage (one group `demo` with ops `get` and `put`, variants native and pv):
 *
 *   enum { PVPATCH_GROUP_ID(demo) = 0 };                       // index in the module's table
 *   enum { PVPATCH_OP_ID(demo, get), PVPATCH_OP_ID(demo, put), PVPATCH_NOPS(demo) };
 *   PVPATCH_DECLARE_SLOTS(demo);
 *
 *   long r = PVPATCH_CALL1(demo, get, 6, 0, arg);            // a 6-byte runtime site
 *
 * and, in one translation unit, the slots, the tables and the module descriptor (see the selftest
 * group in pvpatch's own core, src/pvpatch/_core/selftest_sites.c, for a complete example).
 *
 * Site ABI: a site is an ordinary SysV call with up to three integer arguments (rdi, rsi, rdx)
 * and an integer result in rax; every caller-saved register is clobbered, the red zone is
 * stepped over and the stack is 16-byte aligned at the call, so sites may sit inline in any
 * function, leaf or not.  Code that keeps values in x87, AVX-512 or mask registers across a
 * site must not be built with those extensions enabled.
 */
#ifndef PVPATCH_H
#define PVPATCH_H

#include <stdint.h>

#define PVPATCH_ABI_VERSION 1
#define PVPATCH_MODULE_MAGIC 0x54505650u /* "PVPT" little-endian */

#define PVPATCH_SITE_MIN 6  /* the default rendering: ff 15 rel32 */
#define PVPATCH_SITE_MAX 15 /* the longest x86-64 instruction */

/* Site flags (pvpatch_site.flags). */
#define PVPATCH_F_BOOT 0x01     /* patched at registration only, then dropped */
#define PVPATCH_F_NOINLINE 0x02 /* never render an inline template here */

/* One site record: 8 bytes, PC-relative (the site is at (char *)&rec->rel + rec->rel). */
struct pvpatch_site {
    int32_t rel;
    uint8_t len;
    uint8_t group; /* index into pvpatch_module.groups */
    uint8_t op;    /* index into pvpatch_group.ops */
    uint8_t flags;
};

/* One implementation of one op: a function (always) and optionally a one-instruction,
 * position-independent inline template that does the same thing, or PVPATCH_IMPL_NOP when the
 * implementation does nothing at all (sites then render as one NOP; the result is undefined). */
struct pvpatch_impl {
    void *fn;
    const uint8_t *tmpl;
    uint32_t tmpl_len;
    uint32_t flags;
};
#define PVPATCH_IMPL_NOP 0x01

struct pvpatch_op {
    const char *name;
    void **slot;                      /* default sites call *slot */
    const struct pvpatch_impl *impls; /* one per variant of the group, in the group's order */
};

struct pvpatch_group {
    const char *name;
    const char *const *variants; /* variant names */
    uint32_t nvariants;
    uint32_t native; /* index of the native variant */
    const struct pvpatch_op *ops;
    uint32_t nops;
    uint32_t reserved;
};

struct pvpatch_module {
    uint32_t magic;
    uint32_t abi_version;
    const char *name;
    const struct pvpatch_group *groups;
    uint32_t ngroups;
    uint32_t reserved;
    const struct pvpatch_site *runtime_start, *runtime_stop;
    const struct pvpatch_site *boot_start, *boot_stop;
};

/* ---- naming ----------------------------------------------------------------------------- */

#define PVPATCH_GROUP_ID(group) pvpatch_gid_##group
#define PVPATCH_OP_ID(group, op) pvpatch_op_##group##_##op
#define PVPATCH_NOPS(group) pvpatch_nops_##group
#define PVPATCH_SLOTS(group) pvpatch_slots_##group

/* The op slots of a group: hidden, so every site reaches them RIP-relative without the GOT. */
#define PVPATCH_DECLARE_SLOTS(group) \
    extern void *PVPATCH_SLOTS(group)[] __attribute__((visibility("hidden")))
#define PVPATCH_DEFINE_SLOTS(group) \
    __attribute__((visibility("hidden"))) void *PVPATCH_SLOTS(group)[PVPATCH_NOPS(group)]

/* ---- sites ------------------------------------------------------------------------------ */

/* Canonical NOPs (Intel SDM, "Recommended Multi-Byte Sequence of NOP Instruction"); the padding
 * of a default site is at most 9 bytes, so one of these. */
__asm__(".macro pvpatch_nop n\n"
        ".if \\n == 1\n .byte 0x90\n"
        ".elseif \\n == 2\n .byte 0x66,0x90\n"
        ".elseif \\n == 3\n .byte 0x0f,0x1f,0x00\n"
        ".elseif \\n == 4\n .byte 0x0f,0x1f,0x40,0x00\n"
        ".elseif \\n == 5\n .byte 0x0f,0x1f,0x44,0x00,0x00\n"
        ".elseif \\n == 6\n .byte 0x66,0x0f,0x1f,0x44,0x00,0x00\n"
        ".elseif \\n == 7\n .byte 0x0f,0x1f,0x80,0x00,0x00,0x00,0x00\n"
        ".elseif \\n == 8\n .byte 0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00\n"
        ".elseif \\n == 9\n .byte 0x66,0x0f,0x1f,0x84,0x00,0x00,0x00,0x00,0x00\n"
        ".elseif \\n != 0\n .error \"pvpatch: bad padding\"\n"
        ".endif\n"
        ".endm\n");

/* The bytes of one site and its record.  Around the site: the old stack pointer is kept on the
 * stack, the red zone is skipped and the stack aligned, as the callee's ABI wants. */
#define PVPATCH__SITE(group, section)                                                        \
    "mov %%rsp, %%rax\n\t"                                                                   \
    "lea -128(%%rsp), %%rsp\n\t"                                                             \
    "and $-16, %%rsp\n\t"                                                                    \
    "push %%rax\n\t"                                                                         \
    "push %%rax\n"                                                                           \
    ".if %c[pvp_len] < 6 || %c[pvp_len] > 15\n\t"                                            \
    ".error \"pvpatch: a site is 6 to 15 bytes long\"\n"                                     \
    ".endif\n"                                                                               \
    "661:\n\t"                                                                               \
    "pvpatch_nop (%c[pvp_len] - 6)\n\t"                                                      \
    ".byte 0xff, 0x15\n\t"                                                                   \
    ".long pvpatch_slots_" #group " + 8 * %c[pvp_op] - (. + 4)\n"                            \
    "662:\n\t"                                                                               \
    ".pushsection " section ", \"a\"\n\t"                                                    \
    ".balign 8\n\t"                                                                          \
    ".long 661b - .\n\t"                                                                     \
    ".byte %c[pvp_len], %c[pvp_group], %c[pvp_op], %c[pvp_flags]\n\t"                        \
    ".popsection\n\t"                                                                        \
    "mov (%%rsp), %%rsp\n"

#define PVPATCH__CLOBBERS                                                                    \
    "memory", "cc", "rcx", "r8", "r9", "r10", "r11", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", \
        "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", \
        "xmm15"

#define PVPATCH__CALL(group, op, len, flags, section, a0, a1, a2)                             \
    __extension__({                                                                         \
        register unsigned long pvp_rdi__ __asm__("rdi") = (unsigned long)(a0);              \
        register unsigned long pvp_rsi__ __asm__("rsi") = (unsigned long)(a1);              \
        register unsigned long pvp_rdx__ __asm__("rdx") = (unsigned long)(a2);              \
        unsigned long pvp_ret__;                                                            \
        __asm__ volatile(PVPATCH__SITE(group, section)                                      \
                         : "=a"(pvp_ret__), "+r"(pvp_rdi__), "+r"(pvp_rsi__), "+r"(pvp_rdx__) \
                         : [pvp_len] "i"(len), [pvp_group] "i"(PVPATCH_GROUP_ID(group)),     \
                           [pvp_op] "i"(PVPATCH_OP_ID(group, op)), [pvp_flags] "i"(flags)    \
                         : PVPATCH__CLOBBERS);                                              \
        pvp_ret__;                                                                          \
    })

/* A runtime site: call op `op` of `group` with up to three integer arguments; the value is an
 * unsigned long (the op's rax).  `len` is the site length (6..15), `flags` PVPATCH_F_NOINLINE or
 * 0. */
#define PVPATCH_CALL3(group, op, len, flags, a0, a1, a2) \
    PVPATCH__CALL(group, op, len, (flags) & ~PVPATCH_F_BOOT, "pvpatch_runtime", a0, a1, a2)
#define PVPATCH_CALL2(group, op, len, flags, a0, a1) PVPATCH_CALL3(group, op, len, flags, a0, a1, 0)
#define PVPATCH_CALL1(group, op, len, flags, a0) PVPATCH_CALL3(group, op, len, flags, a0, 0, 0)
#define PVPATCH_CALL0(group, op, len, flags) PVPATCH_CALL3(group, op, len, flags, 0, 0, 0)

/* A boot-only site: rendered once, when the module registers, as the variant current then. */
#define PVPATCH_BOOT_CALL3(group, op, len, flags, a0, a1, a2) \
    PVPATCH__CALL(group, op, len, (flags) | PVPATCH_F_BOOT, "pvpatch_boot", a0, a1, a2)
#define PVPATCH_BOOT_CALL1(group, op, len, flags, a0) \
    PVPATCH_BOOT_CALL3(group, op, len, flags, a0, 0, 0)

/* ---- the module descriptor -------------------------------------------------------------- */

/* The linker defines __start_/__stop_ for every section whose name is a C identifier; weak, so a
 * module without boot sites still links. */
extern const struct pvpatch_site __start_pvpatch_runtime[]
    __attribute__((weak, visibility("hidden")));
extern const struct pvpatch_site __stop_pvpatch_runtime[]
    __attribute__((weak, visibility("hidden")));
extern const struct pvpatch_site __start_pvpatch_boot[] __attribute__((weak, visibility("hidden")));
extern const struct pvpatch_site __stop_pvpatch_boot[] __attribute__((weak, visibility("hidden")));

/* Define the module's descriptor, `pvpatch_module` (hidden), from an array of groups. */
#define PVPATCH_MODULE(modname, group_array)                                                \
    __attribute__((visibility("hidden"))) const struct pvpatch_module pvpatch_module = {  \
        PVPATCH_MODULE_MAGIC,                                                               \
        PVPATCH_ABI_VERSION,                                                                \
        (modname),                                                                          \
        (group_array),                                                                      \
        sizeof(group_array) / sizeof((group_array)[0]),                                     \
        0,                                                                                  \
        __start_pvpatch_runtime,                                                            \
        __stop_pvpatch_runtime,                                                             \
        __start_pvpatch_boot,                                                               \
        __stop_pvpatch_boot,                                                                \
    }

#ifdef Py_PYTHON_H /* include Python.h before this header to get pvpatch_export() */
/* Attach the descriptor to a Python module as `__pvpatch__`; pvpatch.register_module(mod) then
 * patches its sites.  Call from the module's init function. */
static inline int pvpatch_export(PyObject *module, const struct pvpatch_module *desc)
{
    PyObject *cap = PyCapsule_New((void *)desc, "pvpatch.module", NULL);
    if (cap == NULL)
        return -1;
    if (PyModule_AddObject(module, "__pvpatch__", cap) < 0) {
        Py_DECREF(cap);
        return -1;
    }
    return 0;
}
#endif

#endif /* PVPATCH_H */
