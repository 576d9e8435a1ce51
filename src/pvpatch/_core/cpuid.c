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
#include "core.h"

#include <cpuid.h>

static PyObject *py_cpuid(PyObject *self, PyObject *args)
{
    unsigned int leaf, subleaf = 0;
    if (!PyArg_ParseTuple(args, "I|I", &leaf, &subleaf))
        return NULL;
    unsigned int a, b, c, d;
    /* __cpuid_count, not __get_cpuid_count: the latter refuses leaves above the basic maximum,
     * and the hypervisor range (0x40000000) is above it by design. */
    __cpuid_count(leaf, subleaf, a, b, c, d);
    return Py_BuildValue("(IIII)", a, b, c, d);
}

/* XGETBV: which register state the OS saves (XCR0), for AVX/AVX-512 detection.  Python calls it
 * only when CPUID says OSXSAVE (it raises #UD otherwise). */
static PyObject *py_xgetbv(PyObject *self, PyObject *args)
{
    unsigned int index;
    if (!PyArg_ParseTuple(args, "I", &index))
        return NULL;
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(index));
    return PyLong_FromUnsignedLongLong(((unsigned long long)hi << 32) | lo);
}

PyMethodDef core_cpuid_methods[] = {
    {"cpuid", py_cpuid, METH_VARARGS, "cpuid(leaf, subleaf=0) -> (eax, ebx, ecx, edx)."},
    {"xgetbv", py_xgetbv, METH_VARARGS, "xgetbv(index) -> XCR[index]; only if OSXSAVE."},
    {NULL, NULL, 0, NULL},
};
