// Runs the real mla-client binary against a fake Inference + Health server in
// this process, on a loopback port the server picks, and pins its stdout,
// stderr and exit code.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "mla/serving/v1/serving.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mla {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using serving::v1::GenerateRequest;
using serving::v1::GenerateResponse;
using serving::v1::GetModelInfoRequest;
using serving::v1::Inference;
using serving::v1::ModelInfo;

// The fake model's output: token i is kTokens[i % 4] with logprob
// kLogprobs[i % 4]; 2 is its end-of-sequence token. -0.1f is there to pin that
// a float logprob prints as its shortest decimal.
constexpr int32_t kTokens[] = {7, 8, 9, 2};
constexpr float kLogprobs[] = {-0.1f, -0.25f, -1.5f, -0.03125f};
constexpr int32_t kEos = 2;
constexpr auto kGateWait = std::chrono::seconds(10);

// request_id picks a behaviour: "slow" never answers (until cancelled),
// "cancelled" ends after one token as a cancelled request, "gated" holds token
// 1 back until the test has read token 0 from the client's stdout.
class FakeInference final : public Inference::Service {
 public:
  grpc::Status Generate(grpc::ServerContext* context, const GenerateRequest* request,
                        grpc::ServerWriter<GenerateResponse>* writer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_request_ = *request;
    }
    if (request->sampling().temperature() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "sampling.temperature must be >= 0, got " +
                              std::to_string(static_cast<int>(request->sampling().temperature())));
    }
    if (request->request_id() == "slow") return WaitForCancel(context);
    GenerateResponse final;
    final.mutable_final()->set_finish_reason(serving::v1::FINISH_REASON_LENGTH);
    int32_t generated = 0;
    for (int32_t i = 0; i < request->max_new_tokens(); ++i) {
      if (!writer->Write(Token(i, request->top_logprobs()))) return grpc::Status::CANCELLED;
      ++generated;
      if (request->request_id() == "gated" && i == 0 && !WaitForGate()) {
        return grpc::Status(grpc::StatusCode::ABORTED, "the client did not show token 0 before token 1 was sent");
      }
      if (request->request_id() == "cancelled") {
        final.mutable_final()->set_finish_reason(serving::v1::FINISH_REASON_CANCELLED);
        break;
      }
      if (kTokens[i % 4] == kEos && !request->ignore_eos()) {
        final.mutable_final()->set_finish_reason(serving::v1::FINISH_REASON_STOP);
        break;
      }
    }
    final.mutable_final()->set_prompt_tokens(request->prompt_token_ids_size());
    final.mutable_final()->set_completion_tokens(generated);
    final.mutable_final()->set_total_time_us(1234);
    writer->Write(final);
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const GetModelInfoRequest*, ModelInfo* info) override {
    info->set_architecture("DeepseekV3ForCausalLM");
    info->set_model_type("deepseek_v3");
    info->set_vocab_size(129280);
    info->set_tp_size(2);
    info->set_backend("cpu");
    info->set_eos_token_id(1);
    serving::v1::RankInfo* rank = info->add_ranks();
    rank->set_rank(1);
    rank->set_device("cpu");
    rank->mutable_weight_bytes()->set_experts(4096);
    return grpc::Status::OK;  // kv_lora_rank and the rest stay 0.
  }

  GenerateRequest LastRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_request_;
  }

  void OpenGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = true;
    gate_cv_.notify_all();
  }

 private:
  static GenerateResponse Token(int32_t i, int32_t top) {
    GenerateResponse response;
    serving::v1::GeneratedToken* token = response.mutable_token();
    token->set_index(i);
    token->set_token_id(kTokens[i % 4]);
    token->set_logprob(kLogprobs[i % 4]);
    for (int32_t j = 0; j < top; ++j) {
      serving::v1::TokenLogprob* alt = token->add_top_logprobs();
      alt->set_token_id(j == 0 ? kTokens[i % 4] : 1000 + j);
      alt->set_logprob(j == 0 ? kLogprobs[i % 4] : -2.0f * static_cast<float>(j));
    }
    return response;
  }

  static grpc::Status WaitForCancel(grpc::ServerContext* context) {
    auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!context->IsCancelled() && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return grpc::Status::CANCELLED;
  }

  bool WaitForGate() {
    std::unique_lock<std::mutex> lock(mu_);
    return gate_cv_.wait_for(lock, kGateWait, [this] { return gate_open_; });
  }

  std::mutex mu_;
  GenerateRequest last_request_;
  std::condition_variable gate_cv_;
  bool gate_open_ = false;
};

// "" serves, the Inference service does not (yet), anything else is unknown.
class FakeHealth final : public Health::Service {
 public:
  grpc::Status Check(grpc::ServerContext*, const HealthCheckRequest* request,
                     HealthCheckResponse* response) override {
    if (request->service().empty()) {
      response->set_status(HealthCheckResponse::SERVING);
    } else if (request->service() == "mla.serving.v1.Inference") {
      response->set_status(HealthCheckResponse::NOT_SERVING);
    } else {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service " + request->service());
    }
    return grpc::Status::OK;
  }
};

// A scratch directory for the client's captured output, removed with its contents.
class ScratchDir {
 public:
  ScratchDir() {
    std::string templ = (std::filesystem::path(testing::TempDir()) / "mla_client_cli_XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) ADD_FAILURE() << "mkdtemp " << templ << " failed";
    path_ = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string File(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A loopback port bound but not listening: nothing answers there, and while
// this is alive nothing else can take the port.
class DeadPort {
 public:
  DeadPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot bind a loopback port";
    }
    port_ = ntohs(addr.sin_port);
  }
  ~DeadPort() {
    if (fd_ >= 0) close(fd_);
  }
  DeadPort(const DeadPort&) = delete;
  DeadPort& operator=(const DeadPort&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string ClientShellCommand(const std::vector<std::string>& args) {
  std::string cmd = "timeout 30 " + ShellQuote(MLA_CLIENT_BIN);
  for (const std::string& a : args) {
    cmd += ' ';
    cmd += ShellQuote(a);
  }
  return cmd;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int ExitCode(int wait_status) { return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1; }

struct CliResult {
  int exit_code;
  std::string out;
  std::string err;
};

CliResult RunClient(const std::vector<std::string>& args) {
  ScratchDir dir;
  std::string cmd = ClientShellCommand(args) + " >" + ShellQuote(dir.File("out")) + " 2>" + ShellQuote(dir.File("err"));
  int status = std::system(cmd.c_str());
  return {ExitCode(status), ReadFile(dir.File("out")), ReadFile(dir.File("err"))};
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class ClientCliTest : public testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&inference_);
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    address_ = "127.0.0.1:" + std::to_string(port_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  int port_ = 0;
  std::string address_;
  FakeInference inference_;
  FakeHealth health_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ClientCliTest, GenerateStreamsTokensThenOneJsonLine) {
  CliResult r = RunClient({"--server", address_, "generate", "--prompt-ids", "1,2,3", "--max-new-tokens", "3",
                           "--top-k", "40", "--seed", "42", "--request-id", "abc"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out,
            "7\n8\n9\n"
            R"({"generated_ids":[7,8,9],"finish_reason":"length","prompt_tokens":3,"completion_tokens":3,"cached_prompt_tokens":0,"queue_time_us":0,"time_to_first_token_us":0,"total_time_us":1234})"
            "\n");
  GenerateRequest seen = inference_.LastRequest();
  EXPECT_EQ(seen.prompt_token_ids_size(), 3);
  EXPECT_EQ(seen.max_new_tokens(), 3);
  EXPECT_EQ(seen.sampling().top_k(), 40);
  EXPECT_EQ(seen.sampling().seed(), 42u);
  EXPECT_FALSE(seen.sampling().has_top_p());
  EXPECT_EQ(seen.request_id(), "abc");
  EXPECT_EQ(seen.top_logprobs(), 0);
  EXPECT_FALSE(seen.ignore_eos());
}

TEST_F(ClientCliTest, GenerateStopsAtEosUnlessIgnored) {
  CliResult r = RunClient({"generate", "--server", address_, "--prompt-ids", "5", "--max-new-tokens", "6"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "7\n8\n9\n2\n"
            R"({"generated_ids":[7,8,9,2],"finish_reason":"stop","prompt_tokens":1,"completion_tokens":4,"cached_prompt_tokens":0,"queue_time_us":0,"time_to_first_token_us":0,"total_time_us":1234})"
            "\n");

  r = RunClient({"generate", "--server", address_, "--prompt-ids", "5", "--max-new-tokens", "6", "--ignore-eos"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 7u) << r.out;
  EXPECT_EQ(lines.back(),
            R"({"generated_ids":[7,8,9,2,7,8],"finish_reason":"length","prompt_tokens":1,"completion_tokens":6,"cached_prompt_tokens":0,"queue_time_us":0,"time_to_first_token_us":0,"total_time_us":1234})");
  EXPECT_TRUE(inference_.LastRequest().ignore_eos());
}

TEST_F(ClientCliTest, GenerateWithLogprobs) {
  CliResult r = RunClient({"generate", "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--logprobs", "2",
                           "--top-p", "0.9", "--server=" + address_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out,
            "7\n8\n"
            R"({"generated_ids":[7,8],"finish_reason":"length","prompt_tokens":3,"completion_tokens":2,)"
            R"("cached_prompt_tokens":0,"queue_time_us":0,"time_to_first_token_us":0,"total_time_us":1234,)"
            R"("logprobs":[-0.1,-0.25],)"
            R"("top_logprobs":[[{"token_id":7,"logprob":-0.1},{"token_id":1001,"logprob":-2.0}],)"
            R"([{"token_id":8,"logprob":-0.25},{"token_id":1001,"logprob":-2.0}]]})"
            "\n");
  GenerateRequest seen = inference_.LastRequest();
  EXPECT_EQ(seen.top_logprobs(), 2);
  ASSERT_TRUE(seen.sampling().has_top_p());
  EXPECT_EQ(seen.sampling().top_p(), 0.9f);
}

TEST_F(ClientCliTest, GenerateReportsCancelled) {
  CliResult r = RunClient({"--server", address_, "generate", "--prompt-ids", "1", "--max-new-tokens", "5",
                           "--request-id", "cancelled"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "7\n"
            R"({"generated_ids":[7],"finish_reason":"cancelled","prompt_tokens":1,"completion_tokens":1,"cached_prompt_tokens":0,"queue_time_us":0,"time_to_first_token_us":0,"total_time_us":1234})"
            "\n");
}

// The server, not the client, refuses a negative temperature; the client
// passes it on and prints the server's code and message.
TEST_F(ClientCliTest, NegativeTemperatureIsTheServersToRefuse) {
  CliResult r = RunClient({"--server", address_, "generate", "--prompt-ids", "1", "--max-new-tokens", "2",
                           "--temperature", "-1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "mla-client: rpc error: INVALID_ARGUMENT: sampling.temperature must be >= 0, got -1\n");
  EXPECT_EQ(inference_.LastRequest().sampling().temperature(), -1.0f);
}

// Token 1 is sent only after the test has read token 0 from the client's
// stdout, so a client that buffered its output would fail with ABORTED.
TEST_F(ClientCliTest, GenerateShowsEachTokenAsItArrives) {
  ScratchDir dir;
  std::string cmd = ClientShellCommand({"--server", address_, "generate", "--prompt-ids", "1", "--max-new-tokens", "3",
                                   "--request-id", "gated"}) +
                    " 2>" + ShellQuote(dir.File("err"));
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::vector<std::string> lines;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) {
    lines.emplace_back(buf);
    if (lines.size() == 1) inference_.OpenGate();
  }
  int status = pclose(pipe);
  std::string err = ReadFile(dir.File("err"));
  EXPECT_EQ(ExitCode(status), 0) << err;
  EXPECT_EQ(err, "");
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "7\n");
  EXPECT_EQ(lines[3], R"({"generated_ids":[7,8,9],"finish_reason":"length","prompt_tokens":1,"completion_tokens":3,"cached_prompt_tokens":0,"queue_time_us":0,"time_to_first_token_us":0,"total_time_us":1234})"
                      "\n");
}

TEST_F(ClientCliTest, TimeoutMsIsTheDeadline) {
  auto start = std::chrono::steady_clock::now();
  CliResult r = RunClient({"--server", address_, "generate", "--prompt-ids", "1", "--max-new-tokens", "2",
                           "--request-id", "slow", "--timeout-ms", "300"});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "mla-client: rpc error: DEADLINE_EXCEEDED: Deadline Exceeded\n");
  EXPECT_LT(seconds, 15.0) << "the deadline did not end the call";
}

TEST_F(ClientCliTest, HealthPrintsTheStatusAndExitsZeroOnlyWhenServing) {
  CliResult r = RunClient({"health", "--server", address_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  EXPECT_EQ(r.err, "");

  r = RunClient({"--server", address_, "health", "--service", "mla.serving.v1.Inference"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "NOT_SERVING\n");
  EXPECT_EQ(r.err, "");

  r = RunClient({"--server", address_, "health", "--service", "no.such.Service"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "mla-client: rpc error: NOT_FOUND: unknown service no.such.Service\n");
}

TEST_F(ClientCliTest, InfoPrintsModelInfoAsOneJsonLine) {
  CliResult r = RunClient({"info", "--server", address_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  nlohmann::json j = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(j["architecture"], "DeepseekV3ForCausalLM");
  EXPECT_EQ(j["model_type"], "deepseek_v3");  // Proto field names, not lowerCamelCase.
  EXPECT_EQ(j["vocab_size"], "129280");       // int64 is a string in proto3 JSON.
  EXPECT_EQ(j["tp_size"], 2);
  EXPECT_EQ(j["eos_token_id"], "1");
  EXPECT_EQ(j["kv_lora_rank"], "0") << "zero fields are printed too";
  EXPECT_EQ(j["block_size"], 0);
  ASSERT_EQ(j["ranks"].size(), 1u);
  EXPECT_EQ(j["ranks"][0]["rank"], 1);
  EXPECT_EQ(j["ranks"][0]["weight_bytes"]["experts"], "4096");
  EXPECT_EQ(j["ranks"][0]["decode_kernel"], "") << "empty strings are printed too";
}

TEST_F(ClientCliTest, NothingListeningIsUnavailable) {
  DeadPort dead;
  std::string address = "127.0.0.1:" + std::to_string(dead.port());
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--server", address, "generate", "--prompt-ids", "1", "--max-new-tokens", "2"},
           {"--server", address, "health"},
           {"--server", address, "info"}}) {
    CliResult r = RunClient(args);
    EXPECT_EQ(r.exit_code, 1) << args[2];
    EXPECT_EQ(r.out, "") << args[2];
    EXPECT_EQ(r.err.rfind("mla-client: rpc error: UNAVAILABLE: ", 0), 0u) << r.err;
    EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;
  }
}

TEST_F(ClientCliTest, SyntaxErrorsExitTwoWithOneLine) {
  CliResult r = RunClient({"--server", address_, "generate", "--prompt-ids", "1,x", "--max-new-tokens", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "mla-client: error: --prompt-ids: 'x' is not an integer (expected e.g. 1,2,3)\n");

  r = RunClient({"--server", address_, "generate", "--prompt-ids", "1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "mla-client: error: generate needs --max-new-tokens N\n");

  r = RunClient({"--server", address_, "info", "--verbose"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "mla-client: error: unknown flag --verbose (see --help)\n");

  r = RunClient({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "mla-client: error: missing command: generate, health or info\n");
  EXPECT_EQ(inference_.LastRequest().ByteSizeLong(), 0u) << "nothing reached the server";
}

TEST_F(ClientCliTest, HelpPrintsUsage) {
  CliResult r = RunClient({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("usage: mla-client [--server HOST:PORT] <command> [flags]\n", 0), 0u) << r.out;
  EXPECT_EQ(r.err, "");
}

}  // namespace
}  // namespace mla
