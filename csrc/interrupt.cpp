#include "interrupt.h"

#include <pythread.h>

#include <utility>

namespace tensorbridge {

namespace {
unsigned long g_main_thread = 0;
thread_local std::shared_ptr<Transfer> t_interrupted;
}  // namespace

void init_interrupts() {
  // threading's idea of the main thread: the importing thread may be another.
  PyObject* threading = PyImport_ImportModule("threading");
  PyObject* main = threading ? PyObject_CallMethod(threading, "main_thread", nullptr) : nullptr;
  PyObject* ident = main ? PyObject_GetAttrString(main, "ident") : nullptr;
  g_main_thread = ident ? PyLong_AsUnsignedLong(ident) : PyThread_get_thread_ident();
  if (PyErr_Occurred()) {
    PyErr_Clear();
    g_main_thread = PyThread_get_thread_ident();
  }
  Py_XDECREF(ident);
  Py_XDECREF(main);
  Py_XDECREF(threading);
}

InterruptCheck python_interrupt_check() {
  if (PyThread_get_thread_ident() != g_main_thread) return {};
  return [] {
    const PyGILState_STATE state = PyGILState_Ensure();
    const bool stop = PyErr_CheckSignals() != 0;
    PyGILState_Release(state);
    return stop;
  };
}

void set_interrupted(std::shared_ptr<Transfer> pending) { t_interrupted = std::move(pending); }

std::shared_ptr<Transfer> take_interrupted() { return std::exchange(t_interrupted, nullptr); }

}  // namespace tensorbridge
