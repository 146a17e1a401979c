// A minimal HTTP/1.1 server for the metrics endpoint (GET /metrics). Plain
// POSIX sockets, no keep-alive: one request per connection, then close.
//
// One accept thread; each connection gets a short-lived thread, at most
// `max_connections` at a time (beyond that a connection gets 503 at once). The
// request head is bounded (`max_request_bytes`) and must arrive within
// `request_timeout`, and the response must drain within `write_timeout`, so a
// slow or silent client holds one slot for a bounded time and never blocks
// other scrapes or Stop(). Stop() wakes every thread through a pipe and joins
// them without waiting for any timeout.
#pragma once

#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace mla {

class Registry;

class HttpServer {
 public:
  struct Options {
    std::string host = "0.0.0.0";  // numeric address or name; "::" for IPv6 (dual stack)
    int port = 0;                  // 0 picks a free port; port() reports it
    absl::Duration request_timeout = absl::Seconds(5);  // whole request head, from accept
    absl::Duration write_timeout = absl::Seconds(5);    // whole response
    size_t max_request_bytes = 8192;                    // request line + headers; more -> 431
    int max_connections = 16;                           // served at once; more -> 503
  };
  // Produces a response body; runs on a connection thread, possibly several at once.
  using BodyFn = std::function<std::string()>;

  explicit HttpServer(Options options);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Serves GET `path` (exact match; a query string is ignored) with `body()`.
  // Call before Start().
  void Handle(std::string path, std::string content_type, BodyFn body);

  // Binds and listens on host:port and starts serving. Unavailable naming
  // host:port when the address is in use; InvalidArgument for a bad host or
  // port; FailedPrecondition when called twice.
  absl::Status Start();
  // Closes the listener and joins every thread; idempotent. Connections being
  // served are cut off. Must not be called from a BodyFn.
  void Stop();

  // The bound port (the picked one for port 0); valid after Start() succeeds.
  int port() const { return port_; }

 private:
  struct Route {
    std::string path;
    std::string content_type;
    BodyFn body;
  };
  struct Connection {
    std::thread thread;
    bool done = false;  // set by its own thread as it exits; guarded by connections_mu_
  };

  void AcceptLoop();
  void ReapConnections(bool all);
  void Serve(int fd);
  void Linger(int fd, bool unread_bytes) const;
  // The full response (status line, headers, body) for one request head.
  std::string Respond(const std::string& head) const;

  const Options options_;
  std::vector<Route> routes_;
  int port_ = 0;
  // Set by Start() before any thread runs, closed by Stop() after every thread is joined.
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};  // written once by Stop(), never drained: wakes every poll

  absl::Mutex lifecycle_mu_;  // serializes Start() and Stop()
  bool started_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(lifecycle_mu_) = false;
  std::thread accept_thread_;

  absl::Mutex connections_mu_;
  // Added and reaped by the accept thread only; a list so that addresses stay put.
  std::list<Connection> connections_ ABSL_GUARDED_BY(connections_mu_);
};

// A server on host:port that serves `registry->RenderText()` at GET /metrics
// (Prometheus text format 0.0.4). `registry` must outlive the server.
std::unique_ptr<HttpServer> MakeMetricsServer(HttpServer::Options options, const Registry* registry);

}  // namespace mla
