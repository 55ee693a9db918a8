#!/usr/bin/env python3
"""Opens N connections that each send a build request's headers and the first bytes of its body,
then stall; while they hang on, times HITS cache hits (each on a new connection, 1 KiB range) and
as many GET /healthz on the admin listener, each with a deadline of WAIT seconds.
Usage: stalled_bodies.py HOST PORT ADMIN_PORT N HITS WAIT REQUEST_JSON
Prints one line: N, hits answered, slowest hit (ms), healthz answered, slowest healthz (ms),
and the stalled connections that got an answer (408) while the hits ran."""
import asyncio, json, resource, sys, time

async def stall(host, port, held):
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        return
    w.write(b"POST /_velox/v1/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300\r\n\r\n{\"rr_version\":")
    await w.drain()
    held.append((r, w))

async def timed(host, port, raw, wait):
    t = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
        w.write(raw)
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), max(0.001, wait - (time.monotonic() - t)))
        w.close()
        ok = head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 206")
        return ok, time.monotonic() - t
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False, time.monotonic() - t

async def main():
    host, port, admin, n, hits, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    body = open(sys.argv[7], "rb").read()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    await asyncio.gather(*(stall(host, port, held) for _ in range(n)))
    await asyncio.sleep(0.5)
    hit_raw = (b"POST /_velox/v1/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Range: bytes=0-1023\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    health_raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    h_ok = h_max = z_ok = z_max = 0
    for _ in range(hits):
        ok, d = await timed(host, port, hit_raw, wait)
        h_ok += ok; h_max = max(h_max, d)
        ok, d = await timed(host, admin, health_raw, wait)
        z_ok += ok; z_max = max(z_max, d)
    answered = sum(1 for r, _ in held if r._buffer or r.at_eof())
    print(f"{n} stalled ({len(held)} connected): hits {h_ok}/{hits}, slowest {h_max*1e3:.1f} ms; "
          f"healthz {z_ok}/{hits}, slowest {z_max*1e3:.1f} ms; stalled answered meanwhile {answered}")
    for _, w in held:
        w.close()

asyncio.run(main())
