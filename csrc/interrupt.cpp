#include "interrupt.h"

#include <pythread.h>

#include <utility>

namespace tensorbridge {

namespace {
unsigned long g_main_thread = 0;
thread_local std::shared_ptr<Transfer> t_interrupted;
}  // namespace

void init_interrupts() { g_main_thread = PyThread_get_thread_ident(); }

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
