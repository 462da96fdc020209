"""dnspython over UDP and TCP, timed."""

import sys
import time

import dns.message
import dns.query
import dns.rcode

from tests.e2e.clients.timed import op, report

server = sys.argv[1]
for transport, name in (("udp", "a.x.test"), ("tcp", "b.x.test"), ("udp", "nothere.invalid")):
    q = dns.message.make_query(name, "A")
    with op(f"A {name}", transport=transport) as rec:
        f = dns.query.udp if transport == "udp" else dns.query.tcp
        r = f(q, server, timeout=5)
        rec["rcode"] = dns.rcode.to_text(r.rcode())
        rec["answers"] = [str(rr) for rrs in r.answer for rr in rrs]
    time.sleep(0.02)
report()
