/* cpuid_py.c - the Python face of cpuid.c: cpuid() and xgetbv(). */
#include "core.h"
#include "rt.h"

static PyObject *py_cpuid(PyObject *self, PyObject *args)
{
    unsigned int leaf, subleaf = 0, r[4];
    if (!PyArg_ParseTuple(args, "I|I", &leaf, &subleaf))
        return NULL;
    pvrt_cpuid(leaf, subleaf, r);
    return Py_BuildValue("(IIII)", r[0], r[1], r[2], r[3]);
}

/* Python calls it only when CPUID says OSXSAVE (it raises #UD otherwise). */
static PyObject *py_xgetbv(PyObject *self, PyObject *args)
{
    unsigned int index;
    if (!PyArg_ParseTuple(args, "I", &index))
        return NULL;
    return PyLong_FromUnsignedLongLong(pvrt_xgetbv(index));
}

PyMethodDef core_cpuid_methods[] = {
    {"cpuid", py_cpuid, METH_VARARGS, "cpuid(leaf, subleaf=0) -> (eax, ebx, ecx, edx)."},
    {"xgetbv", py_xgetbv, METH_VARARGS, "xgetbv(index) -> XCR[index]; only if OSXSAVE."},
    {NULL, NULL, 0, NULL},
};
