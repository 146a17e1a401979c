#include "runtime/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "runtime/metrics.h"

namespace mla {
namespace {

constexpr char kPlainText[] = "text/plain; charset=utf-8";
// After the response, how long the connection may drain what the client still
// sends (see HttpServer::Linger), in all and without news.
constexpr absl::Duration kLinger = absl::Milliseconds(500);
constexpr absl::Duration kLingerQuiet = absl::Milliseconds(50);

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
  }
}

std::string BuildResponse(int status, std::string_view content_type, std::string_view body,
                          std::string_view extra_headers = "") {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", ReasonPhrase(status), "\r\n");
  out.append("Content-Type: ").append(content_type).append("\r\n");
  out.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
  out.append(extra_headers);
  out.append("Connection: close\r\n\r\n");
  out.append(body);
  return out;
}

std::string ErrorResponse(int status, std::string_view extra_headers = "") {
  return BuildResponse(status, kPlainText, absl::StrCat(ReasonPhrase(status), "\n"), extra_headers);
}

enum class Wait { kReady, kTimeout, kStopped, kError };

// Waits until `fd` has `events` (or an error to report), Stop() writes the
// stop pipe, or `deadline` passes.
Wait WaitFor(int fd, short events, int stop_fd, absl::Time deadline) {
  while (true) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return Wait::kTimeout;
    const int timeout_ms =
        static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, INT_MAX));
    pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    const int n = poll(fds, 2, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Wait::kError;
    }
    if (fds[1].revents != 0) return Wait::kStopped;
    if (fds[0].revents != 0) return Wait::kReady;  // the next read or write reports an error
  }
}

bool SendAll(int fd, std::string_view data, int stop_fd, absl::Time deadline) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (WaitFor(fd, POLLOUT, stop_fd, deadline) != Wait::kReady) return false;
    } else {
      return false;
    }
  }
  return true;
}

// Index just past the blank line that ends the request head, or npos. Bare LF
// line ends are accepted as well as CRLF.
size_t HeadEnd(std::string_view buf) {
  const size_t crlf = buf.find("\r\n\r\n");
  const size_t lf = buf.find("\n\n");
  size_t end = std::string_view::npos;
  if (crlf != std::string_view::npos) end = crlf + 4;
  if (lf != std::string_view::npos) end = std::min(end, lf + 2);
  return end;
}

std::string_view StripCr(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line;
}

struct RequestLine {
  std::string_view method;
  std::string_view target;
};

// "METHOD /target HTTP/1.x" (without the line end), or nullopt for anything else.
std::optional<RequestLine> ParseRequestLine(std::string_view line) {
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return std::nullopt;
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return std::nullopt;
  RequestLine request{line.substr(0, sp1), line.substr(sp1 + 1, sp2 - sp1 - 1)};
  const std::string_view version = line.substr(sp2 + 1);
  if (request.method.empty() || request.method.size() > 16) return std::nullopt;
  for (char c : request.method) {
    if (c < 'A' || c > 'Z') return std::nullopt;
  }
  if (request.target.empty() || request.target[0] != '/') return std::nullopt;
  for (char c : request.target) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return std::nullopt;
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return std::nullopt;
  return request;
}

// Each header line must be "Name: value" with a non-empty name free of spaces.
bool HeadersLookValid(std::string_view headers) {
  while (!headers.empty()) {
    const size_t nl = headers.find('\n');
    const std::string_view line = StripCr(headers.substr(0, nl));
    headers.remove_prefix(nl == std::string_view::npos ? headers.size() : nl + 1);
    if (line.empty()) continue;  // the blank line that ends the head
    const size_t colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) return false;
    for (char c : line.substr(0, colon)) {
      if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
    }
  }
  return true;
}

std::string DisplayAddress(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host.empty() ? "*" : host, ":", port);
}

}  // namespace

HttpServer::HttpServer(Options options) : options_(std::move(options)) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(std::string path, std::string content_type, BodyFn body) {
  absl::MutexLock lock(&lifecycle_mu_);
  CHECK(!started_) << "HttpServer::Handle(" << path << ") after Start()";
  routes_.push_back(Route{std::move(path), std::move(content_type), std::move(body)});
}

absl::Status HttpServer::Start() {
  absl::MutexLock lock(&lifecycle_mu_);
  if (started_) return absl::FailedPreconditionError("HttpServer::Start() called twice");
  const std::string address = DisplayAddress(options_.host, options_.port);
  if (options_.port < 0 || options_.port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("HTTP server port ", options_.port, " is out of range: expected 0 to 65535"));
  }
  if (options_.max_connections < 1 || options_.max_request_bytes < 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP server needs max_connections >= 1 and max_request_bytes >= 16, got ",
        options_.max_connections, " and ", options_.max_request_bytes));
  }

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addresses = nullptr;
  const std::string service = std::to_string(options_.port);
  const int gai = getaddrinfo(options_.host.empty() ? nullptr : options_.host.c_str(),
                              service.c_str(), &hints, &addresses);
  if (gai != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot resolve HTTP server host \"",
                                                   options_.host, "\": ", gai_strerror(gai)));
  }
  int fd = -1;
  int last_errno = 0;
  for (addrinfo* ai = addresses; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last_errno = errno;
      continue;
    }
    const int one = 1;  // rebind at once over TIME_WAIT; a live listener still refuses
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
      last_errno = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(addresses);
  if (fd < 0) {
    if (last_errno == EADDRINUSE) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on ", address, ": address already in use"));
    }
    return absl::ErrnoToStatus(last_errno, absl::StrCat("cannot listen on ", address));
  }

  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len) != 0 ||
      pipe2(stop_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int error = errno;
    close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot set up HTTP server on ", address));
  }
  port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                      : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  listen_fd_ = fd;
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  LOG(INFO) << "HTTP server listening on " << DisplayAddress(options_.host, port_);
  return absl::OkStatus();
}

void HttpServer::Stop() {
  absl::MutexLock lock(&lifecycle_mu_);
  if (!started_ || stopped_) return;
  stopped_ = true;
  const char byte = 1;
  while (write(stop_pipe_[1], &byte, 1) < 0 && errno == EINTR) {
  }
  accept_thread_.join();  // it joins the connection threads before it returns
  close(listen_fd_);
  close(stop_pipe_[0]);
  close(stop_pipe_[1]);
  listen_fd_ = stop_pipe_[0] = stop_pipe_[1] = -1;
}

void HttpServer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      PLOG(ERROR) << "HTTP server poll failed; no longer accepting";
      break;
    }
    if (fds[1].revents != 0) break;
    if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) {
      LOG(ERROR) << "HTTP server listening socket failed; no longer accepting";
      break;
    }
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        PLOG_EVERY_N(WARNING, 100) << "HTTP server cannot accept";
        // Back off rather than spin on a listener that stays readable.
        WaitFor(stop_pipe_[0], POLLIN, stop_pipe_[0], absl::Now() + absl::Milliseconds(100));
      }
      continue;  // EAGAIN, ECONNABORTED, EINTR: the client went away first
    }
    ReapConnections(/*all=*/false);  // right before counting: finished ones free their slot
    absl::MutexLock lock(&connections_mu_);
    if (static_cast<int>(connections_.size()) >= options_.max_connections) {
      // Best effort, without blocking the accept thread: the socket buffer takes it.
      const std::string busy = ErrorResponse(503);
      (void)send(fd, busy.data(), busy.size(), MSG_NOSIGNAL);
      close(fd);
      continue;
    }
    Connection& connection = connections_.emplace_back();
    connection.thread = std::thread([this, fd, &connection] {
      Serve(fd);
      absl::MutexLock done_lock(&connections_mu_);
      connection.done = true;
    });
  }
  ReapConnections(/*all=*/true);
}

void HttpServer::ReapConnections(bool all) {
  std::list<Connection> finished;
  {
    absl::MutexLock lock(&connections_mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto next = std::next(it);
      if (all || it->done) finished.splice(finished.end(), connections_, it);
      it = next;
    }
  }
  for (Connection& connection : finished) connection.thread.join();
}

void HttpServer::Serve(int fd) {
  const int stop_fd = stop_pipe_[0];
  const absl::Time read_deadline = absl::Now() + options_.request_timeout;
  const size_t max_bytes = options_.max_request_bytes;
  std::string buf;
  std::string response;
  bool unread_bytes = true;  // whether the client sent (or is sending) more than the head we answer
  char chunk[4096];
  while (response.empty()) {
    const size_t end = HeadEnd(buf);
    if (end != std::string_view::npos) {
      response = end <= max_bytes ? Respond(buf.substr(0, end)) : ErrorResponse(431);
      unread_bytes = buf.size() > end;
      break;
    }
    // Reject a bad request line as soon as it is complete, before the headers.
    const size_t first_nl = buf.find('\n');
    if (first_nl != std::string::npos &&
        !ParseRequestLine(StripCr(std::string_view(buf).substr(0, first_nl)))) {
      response = ErrorResponse(400);
      break;
    }
    if (buf.size() > max_bytes) {
      response = ErrorResponse(431);
      break;
    }
    const Wait wait = WaitFor(fd, POLLIN, stop_fd, read_deadline);
    if (wait == Wait::kTimeout && !buf.empty()) {
      response = ErrorResponse(408);
      break;
    }
    if (wait != Wait::kReady) {  // stopped, failed, or silent until the deadline
      close(fd);
      return;
    }
    // At most one byte past the limit: enough to tell that it was exceeded.
    const ssize_t n = recv(fd, chunk, std::min(sizeof(chunk), max_bytes + 1 - buf.size()), 0);
    if (n > 0) {
      buf.append(chunk, static_cast<size_t>(n));
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
      close(fd);  // the client went away
      return;
    }
  }
  if (SendAll(fd, response, stop_fd, absl::Now() + options_.write_timeout)) {
    shutdown(fd, SHUT_WR);
    Linger(fd, unread_bytes);
  }
  close(fd);
}

// Closing a socket with unread bytes makes the kernel send a reset, which can
// discard the response before the client reads it. So after the response,
// drain what the client still sends until it closes or goes quiet for
// kLingerQuiet, bounded by kLinger and 64 KiB. A plain GET, with nothing past
// its head, closes at once.
void HttpServer::Linger(int fd, bool unread_bytes) const {
  const absl::Time hard_deadline = absl::Now() + kLinger;
  char chunk[4096];
  size_t drained = 0;
  while (drained < 65536) {
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n > 0) {
      drained += static_cast<size_t>(n);
      unread_bytes = true;
      continue;
    }
    if (n == 0) return;  // the client closed
    if (errno == EINTR) continue;
    if ((errno != EAGAIN && errno != EWOULDBLOCK) || !unread_bytes) return;
    const absl::Time deadline = std::min(hard_deadline, absl::Now() + kLingerQuiet);
    if (WaitFor(fd, POLLIN, stop_pipe_[0], deadline) != Wait::kReady) return;
  }
}

std::string HttpServer::Respond(const std::string& head) const {
  const std::string_view view(head);
  const size_t first_nl = view.find('\n');
  const std::optional<RequestLine> request = ParseRequestLine(StripCr(view.substr(0, first_nl)));
  if (!request || !HeadersLookValid(view.substr(first_nl + 1))) return ErrorResponse(400);
  if (request->method != "GET") return ErrorResponse(405, "Allow: GET\r\n");
  const std::string_view path = request->target.substr(0, request->target.find('?'));
  for (const Route& route : routes_) {
    if (route.path == path) return BuildResponse(200, route.content_type, route.body());
  }
  return ErrorResponse(404);
}

std::unique_ptr<HttpServer> MakeMetricsServer(HttpServer::Options options, const Registry* registry) {
  auto server = std::make_unique<HttpServer>(std::move(options));
  server->Handle("/metrics", kPrometheusContentType, [registry] { return registry->RenderText(); });
  return server;
}

}  // namespace mla
