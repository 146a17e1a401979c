// Turns SIGTERM/SIGINT into a callback on a dedicated thread, so a process
// with gRPC threads can shut down in an orderly way. Construct it first thing
// in main, before any gRPC object (gRPC starts threads early, and a thread
// created before the signals are blocked would take them): the signals are
// blocked in every thread created afterwards and only this one waits for them.
#pragma once

#include <csignal>
#include <functional>
#include <thread>

namespace mla {

class SignalWatcher {
 public:
  explicit SignalWatcher(std::function<void(int)> on_signal);
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

 private:
  sigset_t set_;
  std::thread thread_;
};

}  // namespace mla
