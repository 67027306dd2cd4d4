"""Thousands of TCP connections at once, for the fault suite's concurrency test (test_faults.py).

    many_conns.py serve HOST PORT        an asyncio echo server; prints {"listening": ...}, runs until
                                         stdin closes, then prints {"accepted", "peak"}
    many_conns.py hold HOST PORT COUNT   opens COUNT connections (at most 256 connecting at a time,
                                         so the listener's backlog is not what is measured), checks
                                         that each echoes one byte, prints {"served", "refused",
                                         "errors", "seconds"}, holds them all until a line arrives on
                                         stdin, closes them all and prints {"closed"}

Both raise their own RLIMIT_NOFILE to the hard limit first. Only the standard library.
"""
import asyncio
import collections
import errno
import json
import resource
import sys
import time


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def say(obj):
    print(json.dumps(obj), flush=True)


async def serve(host, port):
    accepted = 0
    live = 0
    peak = 0

    async def echo(reader, writer):
        nonlocal accepted, live, peak
        accepted += 1
        live += 1
        peak = max(peak, live)
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            live -= 1
            writer.close()

    server = await asyncio.start_server(echo, host, port, backlog=4096, reuse_address=True)
    say({"listening": f"{host}:{port}", "nofile": raise_nofile()})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
    say({"accepted": accepted, "peak": peak})


async def hold(host, port, count):
    limit = raise_nofile()
    gate = asyncio.Semaphore(256)
    conns = []
    errors = collections.Counter()

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                writer.write(b"x")
                await writer.drain()
                if await asyncio.wait_for(reader.readexactly(1), 30) != b"x":
                    errors["wrong reply"] += 1
                    writer.close()
                    return
                conns.append(writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                name = errno.errorcode.get(getattr(e, "errno", None) or 0, type(e).__name__)
                errors[name] += 1

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    say({"served": len(conns), "refused": sum(errors.values()), "errors": dict(errors),
         "seconds": round(time.monotonic() - started, 2), "nofile": limit})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in conns:
        w.close()
    for w in conns:
        try:
            await w.wait_closed()
        except OSError:
            pass
    say({"closed": len(conns)})


if __name__ == "__main__":
    cmd, host, port, *rest = sys.argv[1:]
    if cmd == "serve":
        asyncio.run(serve(host, int(port)))
    else:
        asyncio.run(hold(host, int(port), int(rest[0])))
