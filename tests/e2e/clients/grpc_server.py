"""A grpcio server from stubs generated at test time (argv: stub dir, address, port,
HPACK decoder table size or "default")."""

import sys
import time
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import greeter_pb2  # noqa: E402
import greeter_pb2_grpc  # noqa: E402
import grpc  # noqa: E402


class Greeter(greeter_pb2_grpc.GreeterServicer):
    def SayHello(self, request, context):
        if request.name == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
        if request.name == "slow":
            time.sleep(0.02)
        return greeter_pb2.HelloReply(message="hello " + request.name)

    def Count(self, request, context):
        for i in range(request.n):
            yield greeter_pb2.Number(value=i)


opts = [] if sys.argv[4] == "default" else [("grpc.http2.hpack_table_size.decoder",
                                              int(sys.argv[4]))]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=opts)
greeter_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
server.add_insecure_port(f"{sys.argv[2]}:{sys.argv[3]}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
