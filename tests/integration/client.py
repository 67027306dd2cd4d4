"""Client programs the integration tests run inside a cgroup (as root or as nobody).

Each subcommand prints one JSON object on stdout. Only the standard library: these are ordinary
socket clients that know nothing about cordon.
"""
import asyncio
import errno
import hashlib
import json
import os
import socket
import sys


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def out(obj):
    print(json.dumps(obj))


def peer(host, port):
    """Connect, report what getsockname/getpeername say, exchange one line."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((host, int(port)))
    local = s.getsockname()[:2]
    remote = s.getpeername()[:2]
    s.sendall(b"ping\n")
    reply = s.recv(100)
    s.close()
    out({"pid": os.getpid(), "local": list(local), "peer": list(remote), "reply": reply.decode()})


def connect_only(host, port):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((host, int(port)))
    except OSError as e:
        out({"connected": False, "errno": errno.errorcode.get(e.errno, str(e.errno))})
        return
    try:
        s.sendall(b"ping\n")
        data = s.recv(100)
        out({"connected": True, "reply": data.decode(errors="replace")})
    except OSError as e:
        out({"connected": True, "errno": errno.errorcode.get(e.errno, str(e.errno))})


async def _echo_one(host, port, size, seed):
    payload = hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)
    reader, writer = await asyncio.open_connection(host, port)

    async def send():
        for off in range(0, size, 65536):
            writer.write(payload[off:off + 65536])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    received = await reader.readexactly(size)
    rest = await reader.read()
    await sender
    writer.close()
    return received == payload and rest == b""


async def _echo_many(host, port, count, size):
    results = await asyncio.gather(*[_echo_one(host, port, size, i) for i in range(count)],
                                   return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    errors = [repr(r) for r in results if r is not True][:5]
    out({"ok": ok, "count": count, "errors": errors})


def echo_many(host, port, count, size):
    asyncio.run(_echo_many(host, int(port), int(count), int(size)))


def half_close_client(host, port):
    """Send a request, shut our write side, then read the whole answer."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((host, int(port)))
    s.sendall(b"request-body" * 1000)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    out({"answer": data.decode()})


def half_close_server_first(host, port):
    """The server ends its side first; we keep sending afterwards."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((host, int(port)))
    greeting = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        greeting += chunk
    s.sendall(b"late-data-after-server-eof")
    s.shutdown(socket.SHUT_WR)
    s.close()
    out({"greeting": greeting.decode()})


def udp(host, port):
    res = {}
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    try:
        s.connect((host, int(port)))
        res["connect"] = "ok"
    except OSError as e:
        res["connect"] = errno.errorcode.get(e.errno, str(e.errno))
    s.close()
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    try:
        s.sendto(b"quic?", (host, int(port)))
        res["sendto"] = "ok"
    except OSError as e:
        res["sendto"] = errno.errorcode.get(e.errno, str(e.errno))
    s.close()
    out(res)


def churn(host, port, count):
    ok = 0
    for _ in range(int(count)):
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect((host, int(port)))
        s.sendall(b"x")
        if s.recv(1) == b"x":
            ok += 1
        s.close()
    out({"ok": ok})


def hold(host, port, count):
    """Open connections and keep them until stdin closes (for status checks)."""
    socks = []
    for _ in range(int(count)):
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.connect((host, int(port)))
        socks.append(s)
    print(json.dumps({"open": len(socks), "pid": os.getpid()}), flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


COMMANDS = {
    "peer": peer,
    "connect-only": connect_only,
    "echo-many": echo_many,
    "half-close-client": half_close_client,
    "half-close-server-first": half_close_server_first,
    "udp": udp,
    "churn": churn,
    "hold": hold,
}


def client_hello(sni):
    """The ClientHello a real TLS client sends for `sni` (Python's own ssl, nothing hand-made)."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def slowloris(host, port, count, interval_ms, deadline_s, sni="api2.cursor.sh"):
    """Open `count` connections and dribble a real ClientHello into each, one byte per
    `interval_ms`, until the server closes them or `deadline_s` passes. Reports how long each
    lasted, how many bytes it sent and whether a TLS alert came back."""
    import selectors
    import time
    hello = client_hello(sni)
    sel = selectors.DefaultSelector()
    started = time.monotonic()
    state = {}
    for _ in range(int(count)):
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.connect((host, int(port)))
        s.setblocking(False)
        state[s] = {"sent": 0, "opened": time.monotonic(), "alert": False}
        sel.register(s, selectors.EVENT_READ)
    print(json.dumps({"open": len(state), "hello_bytes": len(hello)}), flush=True)
    lasted, sent, alerts = [], [], 0
    next_byte = time.monotonic()
    while state and time.monotonic() - started < float(deadline_s):
        for key, _ in sel.select(timeout=0.02):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data[:1] == b"\x15":
                state[s]["alert"] = True
            if not data:
                st = state.pop(s)
                lasted.append(time.monotonic() - st["opened"])
                sent.append(st["sent"])
                alerts += st["alert"]
                sel.unregister(s)
                s.close()
        if time.monotonic() >= next_byte:
            next_byte += int(interval_ms) / 1000
            for s, st in state.items():
                if st["sent"] < len(hello):
                    try:
                        s.send(hello[st["sent"]:st["sent"] + 1])
                        st["sent"] += 1
                    except OSError:
                        pass
    for s in state:
        s.close()
    out({"closed": len(lasted), "still_open": len(state), "alerts": alerts,
         "lasted_ms": [round(min(lasted) * 1000), round(max(lasted) * 1000)] if lasted else [],
         "sent_max": max(sent) if sent else 0, "hello_bytes": len(hello)})


COMMANDS["slowloris"] = slowloris

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
