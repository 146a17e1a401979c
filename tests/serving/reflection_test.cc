// Server reflection lists the services (so grpcurl and friends work), and is
// guarded by --api-key like every call but health.
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "serving_fixture.h"

namespace mla::testing {
namespace {

namespace rv1 = grpc::reflection::v1alpha;

// The services reflection lists, or the call's error.
grpc::Status ListServices(int port, const std::string& api_key, std::vector<std::string>* names) {
  auto stub = rv1::ServerReflection::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  if (!api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + api_key);
  auto stream = stub->ServerReflectionInfo(&ctx);
  rv1::ServerReflectionRequest req;
  req.set_list_services("");
  stream->Write(req);
  stream->WritesDone();
  rv1::ServerReflectionResponse resp;
  while (stream->Read(&resp)) {
    for (const auto& s : resp.list_services_response().service()) names->push_back(s.name());
  }
  return stream->Finish();
}

TEST_F(ServingTest, ReflectionListsTheServices) {
  Serve(1);
  std::vector<std::string> names;
  ASSERT_TRUE(ListServices(port_, "", &names).ok());
  auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  EXPECT_TRUE(has("mla.serving.v1.Inference"));
  EXPECT_TRUE(has("grpc.health.v1.Health"));
  EXPECT_TRUE(has("grpc.reflection.v1alpha.ServerReflection"));
}

TEST_F(ServingTest, ReflectionNeedsTheApiKey) {
  Serve(1, {"--api-key", "k"}, "k");
  std::vector<std::string> names;
  EXPECT_FALSE(ListServices(port_, "", &names).ok());
  EXPECT_TRUE(names.empty());
  ASSERT_TRUE(ListServices(port_, "k", &names).ok());
  EXPECT_FALSE(names.empty());
}

}  // namespace
}  // namespace mla::testing

int main(int argc, char** argv) {
  mla::MaybeRunExecChild(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
