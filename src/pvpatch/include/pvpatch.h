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
 * pvpatch_site).  At build time a site holds its *default* rendering, an indirect call through
 * the op's slot, `call *slot(%rip)`, stretched to the site length with prefixes, so that the
 * return address is the end of the site.  When the module registers (pvpatch.register_module()),
 * every site is rewritten to the group's current variant, which is also one instruction:
 *
 *   call rel32      to the variant's function, stretched to the site length with CS prefixes
 *   inline template the variant's one-instruction template, stretched the same way
 *   nop             one NOP of the site's length, for an implementation that does nothing
 *
 * One instruction per site, the default included, means that a thread preempted or returning
 * anywhere near a site is on an instruction boundary of every rendering, so registration and
 * every later switch are safe for threads already running the site (see docs/protocol.md).
 *
 * Usage (one group `demo` with ops `get` and `put`, variants native and pv):
 *
 *   enum { PVPATCH_GROUP_ID(demo) = 0 };                       // index in the module's table
 *   enum { PVPATCH_OP_ID(demo, get), PVPATCH_OP_ID(demo, put), PVPATCH_NOPS(demo) };
 *   PVPATCH_DECLARE_SLOTS(demo);
 *
 *   long r = PVPATCH_CALL1(demo, get, 6, 0, arg);            // a 6-byte runtime site
 *
 * and, in one translation unit, the slots (initialised: see "Slots" below), the tables and the
 * module descriptor (see the selftest group in pvpatch's own core,
 * src/pvpatch/_core/selftest_sites.c, for a complete example).
 *
 * Site ABI: a site is an ordinary SysV call with up to three integer arguments (rdi, rsi, rdx)
 * and an integer result in rax; every caller-saved register is clobbered (AVX-512 registers and
 * masks too when the file is compiled with AVX-512), the function holding the site is made a
 * non-leaf so that it keeps nothing in the red zone, and the stack is 16-byte aligned at the
 * site.  Sites may sit in any function, leaf or not, at any optimisation level, with or without
 * frame pointers, with LTO; no compiler flag is required.  See "The site ABI" below and
 * docs/extensions.md.
 */
#ifndef PVPATCH_H
#define PVPATCH_H

#include <stdint.h>

#define PVPATCH_ABI_VERSION 2 /* 2: CPU feature bits in pvpatch_impl.flags */
#define PVPATCH_MODULE_MAGIC 0x54505650u /* "PVPT" little-endian */

#define PVPATCH_SITE_MIN 6  /* the default rendering: ff 15 rel32 */
#define PVPATCH_SITE_MAX 15 /* the longest x86-64 instruction */

/* Site flags (pvpatch_site.flags). */
#define PVPATCH_F_BOOT 0x01     /* patched at registration only, then dropped */
#define PVPATCH_F_NOINLINE 0x02 /* never render an inline template here */
#define PVPATCH_F_UNALIGNED 0x04 /* no NOPs before the site to align its rel32 field */

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
 * implementation does nothing at all (sites then render as one NOP; the result is undefined).
 * A template must follow the template ABI (docs/extensions.md): one whole instruction, no
 * RIP-relative operand, no control flow, no stack, writes only to rax rcx rdx rsi rdi r8-r11,
 * the flags and memory.  Registration refuses a template that breaks it. */
struct pvpatch_impl {
    void *fn;
    const uint8_t *tmpl;
    uint32_t tmpl_len;
    uint32_t flags;
};
#define PVPATCH_IMPL_NOP 0x01
/* CPU features the template needs (the kernel's ALTERNATIVE): the template is rendered only on a
 * CPU that has every one named and while policy has not masked any (pvpatch.mask_features());
 * otherwise the site calls fn, which must run on every x86-64 CPU.  Masking and unmasking
 * re-render the sites while threads run them.  Flags the reader does not know are refused. */
#define PVPATCH_IMPL_NEEDS_POPCNT 0x0100u  /* CPUID.01H:ECX.POPCNT[23] */
#define PVPATCH_IMPL_NEEDS_LZCNT 0x0200u   /* CPUID.80000001H:ECX.LZCNT[5] */
#define PVPATCH_IMPL_NEEDS_BMI1 0x0400u    /* CPUID.(07H,0):EBX.BMI1[3] */
#define PVPATCH_IMPL_NEEDS_BMI2 0x0800u    /* CPUID.(07H,0):EBX.BMI2[8] */
#define PVPATCH_IMPL_NEEDS_AVX2 0x1000u    /* CPUID.(07H,0):EBX.AVX2[5], and the OS saves YMM */
#define PVPATCH_IMPL_NEEDS_MOVBE 0x2000u   /* CPUID.01H:ECX.MOVBE[22] */
#define PVPATCH_IMPL_NEEDS_AVX512F 0x4000u /* CPUID.(07H,0):EBX.AVX512F[16], OS saves ZMM/k */

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

/*
 * The site ABI (docs/extensions.md has the argument and the measurements).
 *
 * A site is one asm statement holding ONE instruction, `call *slot(%rip)` (ff 15 rel32) at build
 * time, stretched to the site length with CS prefixes (2e, ignored in 64-bit mode).  Nothing
 * else runs around it: no stack switch, no saved registers.  What makes that correct:
 *
 *  - Registers.  Arguments are in rdi, rsi, rdx, the result in rax; rcx, r8-r11, the argument
 *    registers the site does not use, xmm0-15 (whole registers: the compilers model ymm/zmm as
 *    the same hard register, so the upper halves go with them), the x87/MMX stack and the
 *    flags are clobbered, as by a call.  Files compiled with AVX-512 enabled (__AVX512F__) also
 *    clobber xmm16-31 and k0-7, so a compiler that may keep values there does not.
 *  - Red zone.  A call stores its return address at rsp-8, where a leaf function keeps data
 *    (the SysV red zone).  Every function holding a site is made a non-leaf at no run-time
 *    cost: PVPATCH__NONLEAF is an `asm goto` that never jumps, to a block that calls abort().
 *    A function that calls anything does not use the red zone (gcc, clang).
 *  - Alignment.  A non-leaf function keeps rsp 16-byte aligned after its prologue.  The site
 *    names rsp as an in/out operand (the kernel's ASM_CALL_CONSTRAINT), which keeps the
 *    prologue from being shrink-wrapped past the site: without it gcc -O2 sinks the prologue
 *    into the abort() block and the site runs with rsp = 8 mod 16.
 *  - Unwinding.  The asm does not move rsp, so the caller's CFI stays true at the call and at
 *    its return address (the site end): gdb, backtrace(), libunwind and pthread_cancel unwind
 *    through a site like through any call.
 *  - Arguments are evaluated once each, in order, into temporaries; only then are registers
 *    bound (through constraints, never by register variables that a later call would clobber).
 *  - The rel32 field (the last 4 bytes of every call rendering) is 4-byte aligned: the site is
 *    preceded by at most two NOPs (.balign 4, then (-len) & 3 bytes), so retargeting a call is
 *    one aligned 4-byte store.  PVPATCH_F_UNALIGNED drops them for a site where even a NOP
 *    counts; retargeting such a site takes the int3 path.
 *
 * Nothing here is an assembler macro: a .macro defined by a header is defined twice when LTO
 * puts two translation units in one assembly file.
 *
 * Slots: a site that runs before its module registers calls *slot, so every slot must hold a
 * valid function (normally the native implementation) from the start; initialise them with
 * PVPATCH_DEFINE_SLOTS(group) = { ... }.
 */

/* The stack pointer as an asm operand (the kernel's current_stack_pointer): at file scope,
 * because clang treats a local register variable as an ordinary value that it copies in and out
 * of rsp around the asm. */
register unsigned long pvpatch__sp __asm__("rsp");

/* Makes the enclosing function non-leaf (see above).  The label is never taken. */
#define PVPATCH__NONLEAF()                                                                   \
    do {                                                                                     \
        __label__ pvp_never__;                                                               \
        __asm__ goto("" : : : : pvp_never__);                                                \
        if (0) {                                                                             \
        pvp_never__:                                                                         \
            __builtin_abort();                                                               \
        }                                                                                    \
    } while (0)

/* The bytes of one site and its record. */
#define PVPATCH__SITE(group, section)                                                        \
    ".if %c[pvp_len] < 6 || %c[pvp_len] > 15\n\t"                                            \
    ".error \"pvpatch: a site is 6 to 15 bytes long\"\n\t"                                   \
    ".endif\n\t"                                                                             \
    ".if (%c[pvp_flags] & 4) == 0\n\t"                                                       \
    ".balign 4\n\t"                                                                          \
    ".if ((-%c[pvp_len]) & 3) == 1\n\t"                                                      \
    ".byte 0x90\n\t"                                                                         \
    ".elseif ((-%c[pvp_len]) & 3) == 2\n\t"                                                  \
    ".byte 0x66, 0x90\n\t"                                                                   \
    ".elseif ((-%c[pvp_len]) & 3) == 3\n\t"                                                  \
    ".byte 0x0f, 0x1f, 0x00\n\t"                                                             \
    ".endif\n\t"                                                                             \
    ".endif\n"                                                                               \
    "661:\n\t"                                                                               \
    ".fill %c[pvp_len] - 6, 1, 0x2e\n\t"                                                     \
    ".byte 0xff, 0x15\n\t"                                                                   \
    ".long pvpatch_slots_" #group " + 8 * %c[pvp_op] - (. + 4)\n"                            \
    "662:\n\t"                                                                               \
    ".pushsection " section ", \"a\"\n\t"                                                    \
    ".balign 8\n\t"                                                                          \
    ".long 661b - .\n\t"                                                                     \
    ".byte %c[pvp_len], %c[pvp_group], %c[pvp_op], %c[pvp_flags]\n\t"                        \
    ".popsection"

#ifdef __AVX512F__
#define PVPATCH__CLOBBERS_AVX512                                                             \
    , "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",        \
        "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k0", "k1", "k2", "k3", \
        "k4", "k5", "k6", "k7"
#else
#define PVPATCH__CLOBBERS_AVX512
#endif

/* Caller-saved state of the SysV ABI that is not an operand of the site. */
#define PVPATCH__CLOBBERS                                                                    \
    "memory", "cc", "rcx", "r8", "r9", "r10", "r11", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", \
        "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", \
        "xmm15", "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "mm0",  \
        "mm1", "mm2", "mm3", "mm4", "mm5", "mm6", "mm7" PVPATCH__CLOBBERS_AVX512

#define PVPATCH__IMM(group, op, len, flags)                                                  \
    [pvp_len] "i"(len), [pvp_group] "i"(PVPATCH_GROUP_ID(group)),                           \
        [pvp_op] "i"(PVPATCH_OP_ID(group, op)), [pvp_flags] "i"(flags)

/* One site with n arguments: evaluate a0..a2 in order into temporaries, then run the site with
 * them bound to rdi, rsi, rdx by constraint. */
#define PVPATCH__CALL0(group, op, len, flags, section)                                       \
    __extension__({                                                                         \
        unsigned long pvp_ret__;                                                            \
        PVPATCH__NONLEAF();                                                                 \
        __asm__ volatile(PVPATCH__SITE(group, section)                                      \
                         : "=a"(pvp_ret__), "+r"(pvpatch__sp)                                  \
                         : PVPATCH__IMM(group, op, len, flags)                              \
                         : "rdi", "rsi", "rdx", PVPATCH__CLOBBERS);                         \
        pvp_ret__;                                                                          \
    })
#define PVPATCH__CALL1(group, op, len, flags, section, a0)                                   \
    __extension__({                                                                         \
        unsigned long pvp_a0__ = (unsigned long)(a0);                                       \
        unsigned long pvp_ret__;                                                            \
        PVPATCH__NONLEAF();                                                                 \
        __asm__ volatile(PVPATCH__SITE(group, section)                                      \
                         : "=a"(pvp_ret__), "+r"(pvpatch__sp), "+D"(pvp_a0__)                  \
                         : PVPATCH__IMM(group, op, len, flags)                              \
                         : "rsi", "rdx", PVPATCH__CLOBBERS);                                \
        pvp_ret__;                                                                          \
    })
#define PVPATCH__CALL2(group, op, len, flags, section, a0, a1)                               \
    __extension__({                                                                         \
        unsigned long pvp_a0__ = (unsigned long)(a0);                                       \
        unsigned long pvp_a1__ = (unsigned long)(a1);                                       \
        unsigned long pvp_ret__;                                                            \
        PVPATCH__NONLEAF();                                                                 \
        __asm__ volatile(PVPATCH__SITE(group, section)                                      \
                         : "=a"(pvp_ret__), "+r"(pvpatch__sp), "+D"(pvp_a0__), "+S"(pvp_a1__)  \
                         : PVPATCH__IMM(group, op, len, flags)                              \
                         : "rdx", PVPATCH__CLOBBERS);                                       \
        pvp_ret__;                                                                          \
    })
#define PVPATCH__CALL3(group, op, len, flags, section, a0, a1, a2)                           \
    __extension__({                                                                         \
        unsigned long pvp_a0__ = (unsigned long)(a0);                                       \
        unsigned long pvp_a1__ = (unsigned long)(a1);                                       \
        unsigned long pvp_a2__ = (unsigned long)(a2);                                       \
        unsigned long pvp_ret__;                                                            \
        PVPATCH__NONLEAF();                                                                 \
        __asm__ volatile(PVPATCH__SITE(group, section)                                      \
                         : "=a"(pvp_ret__), "+r"(pvpatch__sp), "+D"(pvp_a0__), "+S"(pvp_a1__), \
                           "+d"(pvp_a2__)                                                   \
                         : PVPATCH__IMM(group, op, len, flags)                              \
                         : PVPATCH__CLOBBERS);                                              \
        pvp_ret__;                                                                          \
    })

#define PVPATCH__RT(flags) ((flags) & ~PVPATCH_F_BOOT)
#define PVPATCH__BT(flags) ((flags) | PVPATCH_F_BOOT)

/* A runtime site: call op `op` of `group` with 0..3 integer or pointer arguments, each
 * evaluated exactly once, in order; the value is an unsigned long (the op's rax).  `len` is the
 * site length (6..15), `flags` 0 or PVPATCH_F_NOINLINE | PVPATCH_F_UNALIGNED.  Both must be
 * integer constants. */
#define PVPATCH_CALL0(group, op, len, flags) \
    PVPATCH__CALL0(group, op, len, PVPATCH__RT(flags), "pvpatch_runtime")
#define PVPATCH_CALL1(group, op, len, flags, a0) \
    PVPATCH__CALL1(group, op, len, PVPATCH__RT(flags), "pvpatch_runtime", a0)
#define PVPATCH_CALL2(group, op, len, flags, a0, a1) \
    PVPATCH__CALL2(group, op, len, PVPATCH__RT(flags), "pvpatch_runtime", a0, a1)
#define PVPATCH_CALL3(group, op, len, flags, a0, a1, a2) \
    PVPATCH__CALL3(group, op, len, PVPATCH__RT(flags), "pvpatch_runtime", a0, a1, a2)

/* A boot-only site: rendered once, when the module registers, as the variant current then. */
#define PVPATCH_BOOT_CALL0(group, op, len, flags) \
    PVPATCH__CALL0(group, op, len, PVPATCH__BT(flags), "pvpatch_boot")
#define PVPATCH_BOOT_CALL1(group, op, len, flags, a0) \
    PVPATCH__CALL1(group, op, len, PVPATCH__BT(flags), "pvpatch_boot", a0)
#define PVPATCH_BOOT_CALL2(group, op, len, flags, a0, a1) \
    PVPATCH__CALL2(group, op, len, PVPATCH__BT(flags), "pvpatch_boot", a0, a1)
#define PVPATCH_BOOT_CALL3(group, op, len, flags, a0, a1, a2) \
    PVPATCH__CALL3(group, op, len, PVPATCH__BT(flags), "pvpatch_boot", a0, a1, a2)

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

/* ---- the C API -----------------------------------------------------------------------------
 *
 * Exported by pvpatch the way numpy exports its C API: the package holds a capsule,
 * `pvpatch._C_API`, of a versioned table of functions; pvpatch_import_api() finds it and the
 * macros below call through it.  Call pvpatch_import_api() once, in the module's init function
 * (it imports pvpatch, which registers pvpatch's own core first), before any other macro here:
 *
 *   if (pvpatch_import_api() < 0) return NULL;      // ImportError set
 *
 * The table pointer is one hidden weak variable per shared object, so every translation unit of
 * an extension shares it (with or without LTO) and two extensions never do.
 *
 *   int pvpatch_runtime_patch(const char *group, const char *variant)
 *       pvpatch.runtime_patch({group: variant}): 0, or -1 with a Python exception set.  Takes
 *       the GIL if the calling thread does not hold it (any thread may call it, including one
 *       that Python never saw); such a caller gets -1 with errno set (the exception's errno, or
 *       EINVAL) and the exception is cleared, since it has no Python frame to go to.  Do not
 *       call it (or pvpatch_current) holding a pvpatch_lock_t that a thread holding the GIL
 *       may wait for: it takes the GIL.
 *   int pvpatch_current(const char *group, char *buf, size_t size)
 *       The group's current variant, NUL-terminated, into buf: 0, or -1 with an exception
 *       (unknown group: pvpatch.RegistryError; buf too small: ValueError), GIL as above.
 *   pvpatch_lock_t, PVPATCH_LOCK_INIT, pvpatch_lock(l), pvpatch_unlock(l), pvpatch_trylock(l)
 *       pvpatch's switchable queued spinlock (docs/locks.md) for your own C code.  lock and
 *       unlock run through the core's patchable `lock` sites, so pvpatch.runtime_patch({"lock":
 *       ...}) and pvpatch.auto() switch your locks with pvpatch's own, while they are held.
 *       trylock (1 taken, 0 not, never waits) is the same in every variant: all of them take a
 *       free lock with one compare-and-swap of the whole word.  None of them needs the GIL;
 *       none may be called from a signal handler that interrupted the same lock's holder.
 *       A lock is 4 bytes, zero when free: PVPATCH_LOCK_INIT or memset to 0 initialises it.
 */
#include <stddef.h>

/* The table's layout changes only by growing at its end; PVPATCH_API_VERSION changes when an
 * existing entry changes meaning, and then an extension must be rebuilt. */
#define PVPATCH_API_VERSION 1

typedef struct pvpatch_lock_s {
    uint32_t val; /* the qspinlock word of docs/locks.md; never touch it directly */
} pvpatch_lock_t;
#define PVPATCH_LOCK_INIT {0}

struct pvpatch_api {
    uint32_t version; /* PVPATCH_API_VERSION of the pvpatch that filled the table */
    uint32_t size;    /* sizeof(struct pvpatch_api) there */
    int (*runtime_patch)(const char *group, const char *variant);
    int (*current)(const char *group, char *buf, size_t size);
    void (*lock)(pvpatch_lock_t *l);
    void (*unlock)(pvpatch_lock_t *l);
    int (*trylock)(pvpatch_lock_t *l);
    /* Forget a module before its code goes away (docs/extensions.md, "Lifecycle"): no GIL, no
     * loader lock taken, so a destructor run by dlclose may call it.  0, or -1 when the module
     * was not registered. */
    int (*unregister)(const struct pvpatch_module *desc);
};

__attribute__((weak, visibility("hidden"))) const struct pvpatch_api *pvpatch_api_table = 0;

static inline int pvpatch_import_api(void)
{
    PyObject *mod = PyImport_ImportModule("pvpatch");
    if (mod == NULL)
        return -1;
    PyObject *cap = PyObject_GetAttrString(mod, "_C_API");
    Py_DECREF(mod);
    if (cap == NULL)
        return -1;
    /* The table is static data of pvpatch._core, which is never unloaded. */
    const struct pvpatch_api *api =
        (const struct pvpatch_api *)PyCapsule_GetPointer(cap, "pvpatch._C_API");
    Py_DECREF(cap);
    if (api == NULL)
        return -1;
    if (api->version != PVPATCH_API_VERSION || api->size < sizeof(struct pvpatch_api)) {
        PyErr_Format(PyExc_ImportError,
                     "pvpatch C API version %u (%u bytes) is installed, this extension was "
                     "built against version %d (%u bytes): rebuild it against the installed "
                     "pvpatch", api->version, api->size, PVPATCH_API_VERSION,
                     (unsigned)sizeof(struct pvpatch_api));
        return -1;
    }
    pvpatch_api_table = api;
    return 0;
}

#define pvpatch_runtime_patch(group, variant) (pvpatch_api_table->runtime_patch((group), (variant)))
#define pvpatch_current(group, buf, size) (pvpatch_api_table->current((group), (buf), (size)))
#define pvpatch_lock(l) (pvpatch_api_table->lock(l))
#define pvpatch_unlock(l) (pvpatch_api_table->unlock(l))
#define pvpatch_trylock(l) (pvpatch_api_table->trylock(l))
#define pvpatch_unregister(desc) (pvpatch_api_table->unregister(desc))
#endif /* Py_PYTHON_H */

#endif /* PVPATCH_H */
