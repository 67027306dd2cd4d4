"""DNS latency through cordond's proxy vs straight to the resolver, from an enforced job: 5000
sequential queries on a connected UDP socket to the test's authoritative server (loopback).
Not part of the suite (the file name keeps pytest from collecting it); run it explicitly:

    /usr/bin/python3 -m pytest -p no:cacheprovider -q -s tests/integration/bench_dns.py
"""
import json

import pytest

from test_dns import DnsJob, dns_cordond, build_query, DNS_IP, dns_server  # noqa: F401

LOOP = r"""
import json, socket, sys, time
q = bytes.fromhex(sys.argv[1]); n = int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.connect((sys.argv[3], 53))
lat = []
for i in range(n):
    t = time.perf_counter(); s.send(q); s.recv(4096); lat.append(time.perf_counter() - t)
lat.sort()
print(json.dumps({"p50_us": lat[n//2]*1e6, "p99_us": lat[int(n*0.99)]*1e6, "qps": n/sum(lat)}))
"""

@pytest.mark.parametrize("proxy", [False, True])
def test_dns_latency(cordond, cgroups, journal, tmp_path, dns_server, proxy):
    d = dns_cordond(cordond, proxy=proxy)
    job = DnsJob(cgroups, tmp_path)
    job.python(LOOP, build_query("direct.cursor.sh").hex(), 200, DNS_IP)  # warm-up
    got = job.python(LOOP, build_query("direct.cursor.sh").hex(), 5000, DNS_IP)
    print("\nDNS proxy=%s %s" % (proxy, json.dumps(got)))
