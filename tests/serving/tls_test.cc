// --tls-cert/--tls-key: the client API and the workers' control plane over TLS.
#include <cstdlib>

#include "serving_fixture.h"

namespace mla::testing {
namespace {

class TlsTest : public ServingTest {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("mla_tls_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    // A self-signed certificate for localhost and 127.0.0.1, made fresh per run.
    const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                            "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
                            (dir_ / "key.pem").string() + " -out " + (dir_ / "cert.pem").string() +
                            " >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::ifstream in(dir_ / "cert.pem");
    cert_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  void TearDown() override {
    ServingTest::TearDown();
    std::filesystem::remove_all(dir_);
  }
  std::filesystem::path dir_;
  std::string cert_;
};

TEST_F(TlsTest, ServesOverTls) {
  Serve(2, {"--tls-cert", (dir_ / "cert.pem").string(), "--tls-key", (dir_ / "key.pem").string()}, "", cert_);
  GenerateOutcome o = client_->Generate(Greedy({5, 6, 7}, 8, 0));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.tokens.size(), 8u);
  // A plaintext client cannot talk to it.
  Client plain(absl::StrCat("127.0.0.1:", port_));
  GenerateOutcome refused = plain.Generate(Greedy({5, 6, 7}, 8, 0), absl::Seconds(3));
  EXPECT_FALSE(refused.status.ok());
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
