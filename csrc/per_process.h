// One process-wide instance of T, created on first use.
//
// A child after fork gets a fresh one: the parent's threads do not exist
// there, and its state (pinned blocks, queued jobs, a mutex another parent
// thread may have held) must be forgotten, never used or freed. The old
// instance is deliberately leaked, and no instance is ever destroyed: driver
// work may still finish while the interpreter exits.
#pragma once

#include <pthread.h>

#include <mutex>

namespace tensorbridge {

template <class T>
T& per_process() {
  static T* instance = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    instance = new T();
    pthread_atfork(nullptr, nullptr, [] { instance = new T(); });
  });
  return *instance;
}

}  // namespace tensorbridge
