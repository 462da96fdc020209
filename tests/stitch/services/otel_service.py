"""A service instrumented with the OpenTelemetry SDK (by hand: server span in, client
span out, W3C traceparent injected into the downstream call), exporting OTLP."""

import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

PORT, BACKEND, OTLP = int(sys.argv[1]), sys.argv[2], sys.argv[3]
provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=OTLP, insecure=True)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("checkout")


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with tracer.start_as_current_span(f"GET {self.path}", kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span(f"call {self.path}", kind=trace.SpanKind.CLIENT):
                headers = {}
                inject(headers)
                req = urllib.request.Request(f"{BACKEND}/down{self.path}", headers=headers)
                with urllib.request.urlopen(req) as r:
                    body = r.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


srv = ThreadingHTTPServer(("127.0.0.1", PORT), H)
print("ready", flush=True)
srv.serve_forever()
