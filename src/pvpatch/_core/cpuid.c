/*
 * cpuid.c - the CPUID instruction, for the hint sources (the hypervisor leaves 0x40000000+).
 *
 * Mechanism only: returns the four registers of one leaf (and XGETBV's XCR0, for the feature
 * gates of cpufeatures.py); Python decodes signatures and bits.
 * CPUID needs machine code and pvpatch never makes memory writable and executable, so it lives
 * here rather than in a ctypes-built buffer.  CPUID cannot fail: an unsupported leaf returns
 * whatever the CPU (or hypervisor) returns for it, which is why Python checks the maximum leaf
 * first.
 */
#include "rt.h"

#include <cpuid.h>

void pvrt_cpuid(unsigned leaf, unsigned subleaf, unsigned out[4])
{
    /* __cpuid_count, not __get_cpuid_count: the latter refuses leaves above the basic maximum,
     * and the hypervisor range (0x40000000) is above it by design. */
    __cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

/* XGETBV: which register state the OS saves (XCR0), for AVX/AVX-512 detection.  Call it only
 * when CPUID says OSXSAVE (it raises #UD otherwise). */
uint64_t pvrt_xgetbv(unsigned index)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(index));
    return ((uint64_t)hi << 32) | lo;
}
