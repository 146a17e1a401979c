// Test harness: mla-launch as a real process group on loopback, and a gRPC
// client for it. Every process is bounded in time and stopped at teardown.
#pragma once

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "launcher/child_process.h"
#include "mla/serving/v1/serving.grpc.pb.h"

namespace mla::testing {

inline std::string FixtureDir(const std::string& name) {
  return std::string(MLA_TEST_DATA_DIR) + "/fixtures/" + name;
}

// A loopback port nobody listens on right now.
inline int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct GenerateOutcome {
  grpc::Status status;
  std::vector<serving::v1::GeneratedToken> tokens;
  serving::v1::GenerateFinal final;
  std::vector<int32_t> ids() const {
    std::vector<int32_t> out;
    for (const auto& t : tokens) out.push_back(t.token_id());
    return out;
  }
};

class Client {
 public:
  // The server may still be starting: retry every 100 ms, not gRPC's 1 s and up.
  static grpc::ChannelArguments FastReconnect() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    return args;
  }
  // `api_key`: sent as a bearer token on every call but health. `tls_ca_pem`:
  // connect with TLS trusting that certificate.
  explicit Client(const std::string& address, std::string api_key = "", const std::string& tls_ca_pem = "")
      : channel_(grpc::CreateCustomChannel(address, Credentials(tls_ca_pem), FastReconnect())),
        inference_(serving::v1::Inference::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)),
        api_key_(std::move(api_key)) {}

  static std::shared_ptr<grpc::ChannelCredentials> Credentials(const std::string& tls_ca_pem) {
    if (tls_ca_pem.empty()) return grpc::InsecureChannelCredentials();
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = tls_ca_pem;
    return grpc::SslCredentials(ssl);
  }

  // SERVING on the Inference service within `timeout`.
  bool WaitServing(absl::Duration timeout) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
      ctx.set_wait_for_ready(true);  // ride out the connection attempts while the server starts
      grpc::health::v1::HealthCheckRequest req;
      req.set_service("mla.serving.v1.Inference");
      grpc::health::v1::HealthCheckResponse resp;
      if (health_->Check(&ctx, req, &resp).ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  // `on_token` runs after each token; `keep_going` returning false cancels the call.
  GenerateOutcome Generate(const serving::v1::GenerateRequest& req, absl::Duration timeout = absl::Seconds(60),
                           std::function<void(int)> on_token = nullptr,
                           std::function<bool(int)> keep_going = nullptr) {
    GenerateOutcome out;
    grpc::ClientContext ctx;
    if (!api_key_.empty()) ctx.AddMetadata("authorization", "Bearer " + api_key_);
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    auto reader = inference_->Generate(&ctx, req);
    serving::v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      if (resp.has_token()) {
        out.tokens.push_back(resp.token());
        if (on_token) on_token(static_cast<int>(out.tokens.size()));
        if (keep_going && !keep_going(static_cast<int>(out.tokens.size()))) ctx.TryCancel();
      }
      if (resp.has_final()) out.final = resp.final();
    }
    out.status = reader->Finish();
    return out;
  }

  grpc::Status Info(serving::v1::ModelInfo* info) {
    grpc::ClientContext ctx;
    if (!api_key_.empty()) ctx.AddMetadata("authorization", "Bearer " + api_key_);
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return inference_->GetModelInfo(&ctx, serving::v1::GetModelInfoRequest(), info);
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<serving::v1::Inference::Stub> inference_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::string api_key_;
};

// GET http://127.0.0.1:port/path; the body, or "" on any failure.
inline std::string HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) < 0) {
    ::close(fd);
    return "";
  }
  std::string resp;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) resp.append(buf, static_cast<size_t>(n));
  ::close(fd);
  size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

// The value of an unlabelled (or exactly labelled) sample in Prometheus text, or -1.
inline double MetricValue(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series + " ", pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + series.size() + 1));
    pos += series.size();
  }
  return -1;
}

// One mla-launch process (one node of a group).
class Launch {
 public:
  // `args` are mla-launch flags; the model and a free port are the caller's.
  // With `stderr_path`, the launcher's stderr goes to that file.
  static std::unique_ptr<Launch> Start(const std::vector<std::string>& args, const std::string& stderr_path = "") {
    std::string path = MLA_LAUNCH_BIN;
    std::vector<std::string> argv = args;
    if (!stderr_path.empty()) {
      // exec keeps the pid: the shell becomes the launcher, stderr redirected.
      argv = {"-c", "exec \"$0\" \"$@\" 2>" + stderr_path, MLA_LAUNCH_BIN};
      argv.insert(argv.end(), args.begin(), args.end());
      path = "/bin/sh";
    }
    absl::StatusOr<ChildProcess> child =
        ChildProcess::Spawn(path, argv, {"OPENBLAS_NUM_THREADS=1"}, /*die_with_parent=*/true);
    EXPECT_TRUE(child.ok()) << child.status();
    if (!child.ok()) return nullptr;
    return std::unique_ptr<Launch>(new Launch(std::move(*child)));
  }
  ~Launch() {
    if (process_.running()) process_.Stop(absl::Seconds(10));
  }
  ChildProcess& process() { return process_; }

 private:
  explicit Launch(ChildProcess p) : process_(std::move(p)) {}
  ChildProcess process_;
};

inline serving::v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int max_new_tokens, int top_logprobs) {
  serving::v1::GenerateRequest req;
  for (int32_t id : prompt) req.add_prompt_token_ids(id);
  req.set_max_new_tokens(max_new_tokens);
  req.set_top_logprobs(top_logprobs);
  req.set_ignore_eos(true);
  return req;
}

// Whether pid names a live process (not a zombie).
inline bool Alive(int64_t pid) {
  if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

}  // namespace mla::testing
