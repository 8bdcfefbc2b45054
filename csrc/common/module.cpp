// The Python module lateint_kernels._C. Importing it runs the static initializers that
// register every family's kernels with torch's dispatcher (TORCH_LIBRARY_IMPL in
// <family>/<family>_cpu.cpp and <family>_cuda.cu). The op schemas are defined once, in
// Python (each family's module in lateint_kernels/; lateint_kernels/_registry.py defines
// them), so the extension carries no schema of its own. The module's functions control the
// instruction-set layer (common/isa.h); the `testing_` ones serve the test suite only.
#include <Python.h>

#include "common/isa.h"
#include "maxsim/maxsim_core.h"

namespace {

// cpu_isa(request): -1 queries, -2 restores the best, 0..4 forces scalar / avx2 / avx512 /
// avx512bf16 / amx (clamped to what the processor has). Returns the active level.
PyObject* py_cpu_isa(PyObject*, PyObject* arg) {
  const long request = PyLong_AsLong(arg);
  if (request == -1 && PyErr_Occurred()) return nullptr;
  if (request < -2 || request >= lateint::kIsaCount) {
    PyErr_Format(PyExc_ValueError,
                 "cpu_isa: `request` must be -1 (query), -2 (restore the best) or 0..4 "
                 "(scalar, avx2, avx512, avx512bf16, amx), got %ld", request);
    return nullptr;
  }
  lateint::Isa isa;
  if (request == -2) isa = lateint::set_cpu_isa(-1);
  else if (request >= 0) isa = lateint::set_cpu_isa((int)request);
  else isa = lateint::cpu_active_isa();
  return PyLong_FromLong((long)isa);
}

PyObject* py_cpu_best_isa(PyObject*, PyObject*) { return PyLong_FromLong((long)lateint::cpu_best_isa()); }

// cpu_amx() -> (tile, bf16, int8, fp16, os_enabled, permitted): see AmxInfo in common/isa.h.
PyObject* py_cpu_amx(PyObject*, PyObject*) {
  const lateint::AmxInfo& a = lateint::amx_info();
  return Py_BuildValue("(OOOOOO)", a.tile ? Py_True : Py_False, a.bf16 ? Py_True : Py_False,
                       a.int8 ? Py_True : Py_False, a.fp16 ? Py_True : Py_False,
                       a.os_enabled ? Py_True : Py_False, a.permitted ? Py_True : Py_False);
}

// 1 if bf16 MaxSim inputs run on VDPBF16PS dot products, 0 if widened to float32.
PyObject* py_testing_bf16_dot(PyObject*, PyObject*) { return PyLong_FromLong(lateint::bf16_use_dot() ? 1 : 0); }

// testing_isa_trace(on): turns the dispatch trace on or off and clears it.
PyObject* py_testing_isa_trace(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  lateint::isa_trace_reset();
  lateint::isa_trace_enable(on != 0);
  Py_RETURN_NONE;
}

// testing_isa_trace_masks(): per family (maxsim, pool, kmeans, codec, plaid) a bit mask of
// the levels its kernels ran at since the trace was turned on.
PyObject* py_testing_isa_trace_masks(PyObject*, PyObject*) {
  PyObject* out = PyTuple_New(lateint::kFamilyCount);
  if (!out) return nullptr;
  for (int f = 0; f < lateint::kFamilyCount; ++f)
    PyTuple_SET_ITEM(out, f, PyLong_FromLong(lateint::isa_trace_mask((lateint::Family)f)));
  return out;
}

PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_O, "cpu_isa(request) -> active level (see common/isa.h)"},
    {"cpu_best_isa", py_cpu_best_isa, METH_NOARGS, "best level this processor has"},
    {"cpu_amx", py_cpu_amx, METH_NOARGS, "AMX as CPUID, XCR0 and the OS permission report it"},
    {"testing_bf16_dot", py_testing_bf16_dot, METH_NOARGS, "testing: bf16 MaxSim on VDPBF16PS (1) or not (0)"},
    {"testing_isa_trace", py_testing_isa_trace, METH_O, "testing: clear the dispatch trace, turn it on/off"},
    {"testing_isa_trace_masks", py_testing_isa_trace_masks, METH_NOARGS, "testing: levels run per family"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
