/* The layer taps' eval callback, in C: llama.cpp calls it for every graph node of every decode of a context
 * with taps. Between tapped decodes it answers "nothing wanted" without entering Python (no GIL, no Python
 * frame, so no signal can land in it); during a tapped decode it forwards to the armed Python callback.
 *
 * `user_data` (cb_eval_user_data) points at one pointer-sized slot that Python owns: NULL when nothing is
 * armed, else the ctypes callback to forward to (see sia_local/llama/taps.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>

typedef bool (*sia_eval_callback)(void *tensor, bool ask, void *user_data);

static bool sia_tap_trampoline(void *tensor, bool ask, void *user_data) {
    sia_eval_callback armed = user_data ? *(sia_eval_callback volatile *)user_data : NULL;
    if (armed == NULL) {
        return !ask; /* observe nothing, never stop */
    }
    return armed(tensor, ask, NULL);
}

static struct PyModuleDef tapshim_module = {
    PyModuleDef_HEAD_INIT, "_tapshim",
    "The layer taps' C eval callback: `trampoline` is its address (see sia_local/llama/taps.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__tapshim(void) {
    PyObject *module = PyModule_Create(&tapshim_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObject(module, "trampoline", PyLong_FromVoidPtr((void *)&sia_tap_trampoline)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
