"""grpcio client: unary calls (one NOT_FOUND) and a server-streaming call, timed, all
on one channel (one HTTP/2 connection).  argv: stub dir, address, port, HPACK decoder
table size or "default"."""

import sys
import time

sys.path.insert(0, sys.argv[1])

import greeter_pb2  # noqa: E402
import greeter_pb2_grpc  # noqa: E402
import grpc  # noqa: E402

from tests.e2e.clients.timed import op, report  # noqa: E402

opts = [] if sys.argv[4] == "default" else [("grpc.http2.hpack_table_size.decoder",
                                              int(sys.argv[4]))]
with grpc.insecure_channel(f"{sys.argv[2]}:{sys.argv[3]}", options=opts) as ch:
    grpc.channel_ready_future(ch).result(timeout=10)
    stub = greeter_pb2_grpc.GreeterStub(ch)
    stub.SayHello(greeter_pb2.HelloRequest(name="warm-up"), timeout=5)
    time.sleep(0.05)
    for name in ("ann", "slow"):
        with op("/demo.v1.Greeter/SayHello", code="0") as rec:
            rec["reply"] = stub.SayHello(greeter_pb2.HelloRequest(name=name),
                                         metadata=(("x-request-id", f"grpc-{name}"),),
                                         timeout=5).message
    with op("/demo.v1.Greeter/SayHello") as rec:
        try:
            stub.SayHello(greeter_pb2.HelloRequest(name="missing"), timeout=5)
        except grpc.RpcError as e:
            rec["code"] = str(e.code().value[0])
    with op("/demo.v1.Greeter/Count", code="0") as rec:
        rec["values"] = [m.value for m in stub.Count(greeter_pb2.CountRequest(n=5),
                                                      timeout=5)]
    time.sleep(0.05)
report()
