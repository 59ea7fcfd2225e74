#!/usr/bin/env python3
"""wa-onboard from Python: creates a Gupshup onboarding against the sandbox account and prints
WatchOnboarding until the onboarding is LIVE.

Stubs are generated from ../../proto with grpcio-tools (the standard tool) into ./gen on
every run, so they always match the contract:

    pip install -r requirements.txt
    python onboard.py --target localhost:50051 --api-key "$(cat ../../data/dev-api-key)"

Exit status: 0 once LIVE; 1 on a terminal state (FAILED, EXPIRED, CANCELLED) or an error;
2 when --timeout passes first.
"""

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
GEN = HERE / "gen"


def generate_stubs() -> None:
    from grpc_tools import protoc  # grpcio-tools
    import importlib.resources

    GEN.mkdir(exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "wa" / "onboard" / "v1").glob("*.proto"))
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")  # google/protobuf/*.proto
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO}", f"-I{well_known}",
                        f"--python_out={GEN}", f"--grpc_python_out={GEN}", *protos])
    if code != 0:
        sys.exit(f"protoc failed ({code})")
    sys.path.insert(0, str(GEN))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default=os.environ.get("WA_ONBOARD_TARGET", "localhost:50051"))
    ap.add_argument("--api-key", default=os.environ.get("WA_ONBOARD_API_KEY"),
                    help="tenant API key (default: $WA_ONBOARD_API_KEY, else ./data/dev-api-key)")
    ap.add_argument("--account", default="accounts/sandbox-gupshup")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for LIVE")
    args = ap.parse_args()
    key = args.api_key
    if not key and Path("data/dev-api-key").exists():
        key = Path("data/dev-api-key").read_text().strip()
    if not key:
        print("no API key: pass --api-key or set WA_ONBOARD_API_KEY", file=sys.stderr)
        return 1

    generate_stubs()
    import grpc
    from wa.onboard.v1 import common_pb2, onboarding_pb2, onboarding_pb2_grpc

    state_name = common_pb2.OnboardingState.Name
    live = common_pb2.ONBOARDING_STATE_LIVE
    terminal = {common_pb2.ONBOARDING_STATE_FAILED, common_pb2.ONBOARDING_STATE_EXPIRED,
                common_pb2.ONBOARDING_STATE_CANCELLED}
    metadata = [("authorization", f"Bearer {key}")]
    deadline = time.monotonic() + args.timeout

    with grpc.insecure_channel(args.target) as channel:
        stub = onboarding_pb2_grpc.OnboardingServiceStub(channel)
        suffix = uuid.uuid4().hex[:8]
        request = onboarding_pb2.CreateOnboardingRequest(
            account=args.account,
            reference=f"python-example-{suffix}",
            request_id=f"python-example-{suffix}",
            gupshup=onboarding_pb2.GupshupLinkAppRequest(
                app_name=f"PythonExample{suffix}",
                waba_id="104996122399160",
                # A phone per run: a phone's app belongs to one onboarding, and a second
                # onboarding of the same phone is refused.
                phone=f"+9198{int(suffix, 16) % 10**8:08d}",
            ),
        )
        try:
            created = stub.CreateOnboarding(request, metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            print(f"CreateOnboarding failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(f"created {created.name} state={state_name(created.state)}", flush=True)

        after = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                print(f"timeout: {created.name} not LIVE after {args.timeout:.0f}s", file=sys.stderr)
                return 2
            watch = onboarding_pb2.WatchOnboardingRequest(name=created.name, after_sequence=after)
            try:
                for msg in stub.WatchOnboarding(watch, metadata=metadata, timeout=remaining):
                    kind = msg.WhichOneof("message")
                    if kind == "snapshot":
                        state = msg.snapshot.state
                        after = max(after, msg.snapshot.sequence)
                        print(f"snapshot  seq={msg.snapshot.sequence} state={state_name(state)}", flush=True)
                    elif kind == "event":
                        e = msg.event
                        state = e.state
                        after = max(after, e.sequence)
                        print(f"event     seq={e.sequence} {e.type} state={state_name(state)}"
                              + (f" ({e.reason})" if e.reason else ""), flush=True)
                    else:
                        print(f"heartbeat last_sequence={msg.heartbeat.last_sequence}", flush=True)
                        continue
                    if state == live:
                        print(f"{created.name} is LIVE", flush=True)
                        return 0
                    if state in terminal:
                        print(f"{created.name} ended {state_name(state)}", file=sys.stderr)
                        return 1
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # the loop reports the timeout
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    print(f"WatchOnboarding failed: {e.code().name}: {e.details()}", file=sys.stderr)
                    return 1
            # The stream ended or was cut: resume after the last sequence seen.
            print(f"stream ended; resuming after sequence {after}", flush=True)
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
