#!/usr/bin/python3
"""A Python client for mla-serve: how an ordinary user calls the service.

Uses Debian's python3-grpcio and stubs generated from proto/ by protoc's
grpc_python_plugin (the build puts them in build/python):

    PYTHONPATH=build/python /usr/bin/python3 launcher/mla_client.py \\
        --server 127.0.0.1:50051 generate --prompt-ids 1,2,3 --max-new-tokens 16

Prints each generated token id as it streams in, then one JSON line with the
ids, finish reason and usage. `health` and `info` query the server. Exit
codes: 0 ok; 1 an RPC error (printed as CODE: message); 2 bad arguments.
"""
import argparse
import json
import os
import sys

import grpc

import health_pb2
import health_pb2_grpc
from mla.serving.v1 import serving_pb2, serving_pb2_grpc


def channel(args):
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(args.server, creds)
    return grpc.insecure_channel(args.server)


def metadata(args):
    key = args.api_key or os.environ.get("MLA_API_KEY", "")
    return [("authorization", "Bearer " + key)] if key else []


def ids(text):
    return [int(x) for x in text.split(",") if x]


def generate(args, stub):
    sampling = serving_pb2.SamplingParams(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    if args.top_p is not None:
        sampling.top_p = args.top_p
    request = serving_pb2.GenerateRequest(
        prompt_token_ids=ids(args.prompt_ids), max_new_tokens=args.max_new_tokens, sampling=sampling,
        top_logprobs=args.logprobs or 0, ignore_eos=args.ignore_eos, stop_token_ids=ids(args.stop_ids))
    tokens, final = [], None
    for response in stub.Generate(request, metadata=metadata(args), timeout=args.timeout):
        if response.HasField("token"):
            tokens.append(response.token)
            print(response.token.token_id, flush=True)
        elif response.HasField("final"):
            final = response.final
    reason = serving_pb2.FinishReason.Name(final.finish_reason).replace("FINISH_REASON_", "").lower()
    out = {"generated_ids": [t.token_id for t in tokens], "finish_reason": reason,
           "prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
           "cached_prompt_tokens": final.cached_prompt_tokens}
    if args.logprobs is not None:
        out["logprobs"] = [t.logprob for t in tokens]
        out["top_logprobs"] = [[{"token_id": a.token_id, "logprob": a.logprob} for a in t.top_logprobs]
                               for t in tokens]
    print(json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser(description="mla-serve Python client")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--tls-ca", default="")
    parser.add_argument("--timeout", type=float, default=None, help="call deadline in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--prompt-ids", required=True)
    gen.add_argument("--max-new-tokens", type=int, required=True)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--logprobs", type=int, default=None)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--stop-ids", default="")
    health = sub.add_parser("health")
    health.add_argument("--service", default="")
    sub.add_parser("info")
    args = parser.parse_args()

    try:
        with channel(args) as ch:
            if args.command == "generate":
                generate(args, serving_pb2_grpc.InferenceStub(ch))
            elif args.command == "health":
                response = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout or 10)
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                print(name)
                return 0 if name == "SERVING" else 1
            else:
                info = serving_pb2_grpc.InferenceStub(ch).GetModelInfo(
                    serving_pb2.GetModelInfoRequest(), metadata=metadata(args), timeout=args.timeout or 10)
                print(json.dumps({"model_type": info.model_type, "tp_size": info.tp_size,
                                  "vocab_size": info.vocab_size, "max_context": info.max_context,
                                  "cache_blocks": info.cache_blocks}))
    except grpc.RpcError as e:
        print(f"mla_client.py: rpc error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
