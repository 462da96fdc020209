"""Network hops (N spans) from the TC probes: agent/net/hops.py."""
