"""Query side: the gRPC QueryService over a SpanStore."""
