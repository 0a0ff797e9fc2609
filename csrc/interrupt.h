// Ctrl-C during a synchronous copy, for the bindings and the fast path.
#pragma once

#include <Python.h>

#include <memory>

#include "transfer.h"

namespace tensorbridge {

// Remembers which thread is Python's main one (the only one signals reach).
// Called with the GIL held when the module is imported, and again in a forked
// child (whose main thread is the one that forked).
void init_interrupts();

// An InterruptCheck that runs Python's signal handlers (taking the GIL for a
// moment) and says stop when one raised, leaving that exception set; empty
// off the main thread, where no signal is delivered. Call with the GIL held.
InterruptCheck python_interrupt_check();

// The copies an interrupted call left in flight, for its Python caller to
// keep their buffers alive (one per thread; taken once).
void set_interrupted(std::shared_ptr<Transfer> pending);
std::shared_ptr<Transfer> take_interrupted();

}  // namespace tensorbridge
