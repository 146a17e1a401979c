// The metrics HTTP server over real loopback sockets.
#include "runtime/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/metrics.h"

namespace mla {
namespace {

using ::testing::HasSubstr;

// A client socket to 127.0.0.1:port whose reads give up after `read_timeout`.
class Client {
 public:
  explicit Client(int port, absl::Duration read_timeout = absl::Seconds(5)) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv = absl::ToTimeval(read_timeout);
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    connect_errno_ = connected_ ? 0 : errno;
  }
  ~Client() { close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  int connect_errno() const { return connect_errno_; }

  void Send(const std::string& data) {
    ASSERT_EQ(send(fd_, data.data(), data.size(), MSG_NOSIGNAL), static_cast<ssize_t>(data.size()));
  }
  // Everything until the server closes (or the read timeout passes).
  std::string ReadAll() {
    std::string out;
    char buf[65536];
    while (true) {
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  int connect_errno_ = 0;
};

struct Response {
  int status = 0;
  std::string status_line;
  std::map<std::string, std::string> headers;
  std::string body;

  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

Response Parse(const std::string& raw) {
  Response response;
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) return response;
  response.body = raw.substr(head_end + 4);
  size_t at = 0;
  bool first = true;
  while (at < head_end) {
    size_t eol = raw.find("\r\n", at);
    const std::string line = raw.substr(at, eol - at);
    at = eol + 2;
    if (first) {
      response.status_line = line;
      if (line.size() >= 12) response.status = std::stoi(line.substr(9, 3));
      first = false;
    } else {
      const size_t colon = line.find(": ");
      response.headers[line.substr(0, colon)] = line.substr(colon + 2);
    }
  }
  return response;
}

Response Exchange(int port, const std::string& request) {
  Client client(port);
  EXPECT_TRUE(client.connected());
  client.Send(request);
  return Parse(client.ReadAll());
}

HttpServer::Options Loopback() {
  HttpServer::Options options;
  options.host = "127.0.0.1";
  options.port = 0;
  return options;
}

class MetricsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_.AddCounter("mla_test_total", "A test counter.", {{"k", "v\"1"}}).value()->Add(7);
    server_ = MakeMetricsServer(Loopback(), &registry_);
    ASSERT_TRUE(server_->Start().ok());
    ASSERT_GT(server_->port(), 0);
  }

  Registry registry_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(MetricsServerTest, GetMetricsServesTheRegistryWithPrometheusHeaders) {
  const Response response =
      Exchange(server_->port(), "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(response.status_line, "HTTP/1.1 200 OK");
  EXPECT_EQ(response.Header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(response.Header("Content-Length"), std::to_string(response.body.size()));
  EXPECT_EQ(response.Header("Connection"), "close");
  EXPECT_EQ(response.body,
            "# HELP mla_test_total A test counter.\n"
            "# TYPE mla_test_total counter\n"
            "mla_test_total{k=\"v\\\"1\"} 7\n");
}

TEST_F(MetricsServerTest, QueryStringsBareLineFeedsAndHttp10AreServed) {
  EXPECT_EQ(Exchange(server_->port(), "GET /metrics?name[]=x HTTP/1.1\r\n\r\n").status, 200);
  EXPECT_EQ(Exchange(server_->port(), "GET /metrics HTTP/1.0\n\n").status, 200);
}

TEST_F(MetricsServerTest, OtherPathsAre404) {
  for (const char* path : {"/", "/metrics/", "/metricsx", "/health"}) {
    const Response response = Exchange(server_->port(), std::string("GET ") + path + " HTTP/1.1\r\n\r\n");
    EXPECT_EQ(response.status_line, "HTTP/1.1 404 Not Found") << path;
    EXPECT_EQ(response.body, "Not Found\n") << path;
  }
}

TEST_F(MetricsServerTest, OtherMethodsAre405WithAllow) {
  for (const char* method : {"POST", "HEAD", "PUT", "DELETE", "OPTIONS"}) {
    const Response response =
        Exchange(server_->port(), std::string(method) + " /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    EXPECT_EQ(response.status_line, "HTTP/1.1 405 Method Not Allowed") << method;
    EXPECT_EQ(response.Header("Allow"), "GET") << method;
  }
}

TEST_F(MetricsServerTest, GarbageIs400) {
  const std::vector<std::string> garbage = {
      "hello\r\n\r\n",
      "GET\r\n\r\n",
      "GET /metrics\r\n\r\n",
      "GET metrics HTTP/1.1\r\n\r\n",
      "get /metrics HTTP/1.1\r\n\r\n",
      "GET /metrics HTTP/2.0\r\n\r\n",
      "GET  /metrics HTTP/1.1\r\n\r\n",
      "GET /met\x01rics HTTP/1.1\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
      "GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
      std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\n", 12),  // TLS hello, then a newline
  };
  for (const std::string& request : garbage) {
    EXPECT_EQ(Exchange(server_->port(), request).status_line, "HTTP/1.1 400 Bad Request") << request;
  }
}

TEST_F(MetricsServerTest, BadRequestLineIsRefusedBeforeTheHeadersEnd) {
  Client client(server_->port());
  client.Send("BOGUS REQUEST\r\nHost: x\r\n");  // no blank line yet; the client stays open
  EXPECT_EQ(Parse(client.ReadAll()).status, 400);
}

TEST_F(MetricsServerTest, OversizedRequestHeadIs431) {
  const std::string request =
      "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(10000, 'a') + "\r\n\r\n";
  EXPECT_EQ(Exchange(server_->port(), request).status_line,
            "HTTP/1.1 431 Request Header Fields Too Large");
}

TEST_F(MetricsServerTest, UnreadRequestBytesDoNotResetTheResponse) {
  // A GET with a 20 KB body the server never reads: the response still arrives whole.
  const std::string request = "GET /metrics HTTP/1.1\r\nContent-Length: 20000\r\n\r\n" +
                              std::string(20000, 'b');
  const Response response = Exchange(server_->port(), request);
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, registry_.RenderText());
}

TEST_F(MetricsServerTest, SilentClientBlocksNeitherOtherRequestsNorStop) {
  Client silent(server_->port());  // connects and sends nothing
  ASSERT_TRUE(silent.connected());
  Client partial(server_->port());
  partial.Send("GET /metr");  // half a request line, then nothing
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Exchange(server_->port(), "GET /metrics HTTP/1.1\r\n\r\n").status, 200);
  }
  // The default 5 s request timeout has not passed: Stop must not wait for it.
  const absl::Time start = absl::Now();
  server_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_EQ(silent.ReadAll(), "");  // closed, no response
  EXPECT_EQ(partial.ReadAll(), "");
}

TEST_F(MetricsServerTest, StopClosesTheListenerPromptlyAndIsIdempotent) {
  const int port = server_->port();
  const absl::Time start = absl::Now();
  server_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(200));
  Client after(port);
  EXPECT_FALSE(after.connected());
  EXPECT_EQ(after.connect_errno(), ECONNREFUSED);
  server_->Stop();
  EXPECT_EQ(server_->Start().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(HttpServerTest, SlowClientsTimeOut) {
  HttpServer::Options options = Loopback();
  options.request_timeout = absl::Milliseconds(200);
  HttpServer server(options);
  server.Handle("/metrics", "text/plain", [] { return std::string("ok"); });
  ASSERT_TRUE(server.Start().ok());

  const absl::Time start = absl::Now();
  Client partial(server.port());
  partial.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n");  // the blank line never comes
  EXPECT_EQ(Parse(partial.ReadAll()).status_line, "HTTP/1.1 408 Request Timeout");
  Client silent(server.port());
  EXPECT_EQ(silent.ReadAll(), "");  // closed without a response
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(HttpServerTest, ConnectionsBeyondTheLimitGet503AndSlotsFreeUp) {
  HttpServer::Options options = Loopback();
  options.max_connections = 2;
  HttpServer server(options);
  server.Handle("/metrics", "text/plain", [] { return std::string("ok"); });
  ASSERT_TRUE(server.Start().ok());
  {
    Client a(server.port()), b(server.port());
    Client c(server.port());  // accepted after a and b: the accept thread is FIFO
    EXPECT_EQ(Parse(c.ReadAll()).status_line, "HTTP/1.1 503 Service Unavailable");
  }
  // a and b hung up; their threads notice at once, then their slots are reused.
  Response response;
  for (int attempt = 0; attempt < 50 && response.status != 200; ++attempt) {
    response = Exchange(server.port(), "GET /metrics HTTP/1.1\r\n\r\n");
    if (response.status != 200) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "ok");
}

TEST(HttpServerTest, LargeBodiesArriveWhole) {
  HttpServer server(Loopback());
  std::string big(4 << 20, 'x');  // larger than the socket buffers: exercises waiting to write
  for (size_t i = 0; i < big.size(); i += 997) big[i] = static_cast<char>('a' + i % 26);
  server.Handle("/big", "application/octet-stream", [&big] { return big; });
  ASSERT_TRUE(server.Start().ok());
  const Response response = Exchange(server.port(), "GET /big HTTP/1.1\r\n\r\n");
  EXPECT_EQ(response.Header("Content-Length"), std::to_string(big.size()));
  EXPECT_TRUE(response.body == big);
}

TEST(HttpServerTest, AddressInUseIsUnavailableNamingTheAddress) {
  HttpServer first(Loopback());
  ASSERT_TRUE(first.Start().ok());
  HttpServer::Options options = Loopback();
  options.port = first.port();
  HttpServer second(options);
  const absl::Status status = second.Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(),
              HasSubstr("127.0.0.1:" + std::to_string(first.port()) + ": address already in use"));
  second.Stop();  // harmless after a failed Start
}

TEST(HttpServerTest, BadOptionsAreInvalidArgument) {
  HttpServer::Options options = Loopback();
  options.port = 70000;
  absl::Status status = HttpServer(options).Start();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("port 70000 is out of range"));
  options.port = 0;
  options.max_connections = 0;
  EXPECT_EQ(HttpServer(options).Start().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HttpServerTest, DestructorStopsAServerWithAnOpenConnection) {
  auto server = std::make_unique<HttpServer>(Loopback());
  ASSERT_TRUE(server->Start().ok());
  Client silent(server->port());
  ASSERT_TRUE(silent.connected());
  const absl::Time start = absl::Now();
  server.reset();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
}

}  // namespace
}  // namespace mla
