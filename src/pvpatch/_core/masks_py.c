/* masks_py.c - the Python face of masks.c. */
#include "core.h"
#include "rt.h"

static PyObject *py_own_masks(PyObject *self, PyObject *unused)
{
    if (core_own_masks() < 0)
        return core_oserror("mprotect");
    unsigned long got, stripped;
    size_t objects;
    core_masks_counters(&got, &objects, &stripped);
    return Py_BuildValue("{s:k,s:n,s:k}", "got_entries", got, "objects", (Py_ssize_t)objects,
                         "masks_stripped", stripped);
}

PyMethodDef core_masks_methods[] = {
    {"own_masks", py_own_masks, METH_NOARGS,
     "Point every loaded object's pthread_sigmask/sigprocmask/sigaction at SIGTRAP-free "
     "wrappers; counters."},
    {NULL, NULL, 0, NULL},
};
