#!/usr/bin/env python3
"""Opens N connections that each download PATH slowly, and reports how much the server's RSS
grew per connection while they hang on. PIDS is a comma-separated list (nginx's workers) whose
RSS is summed. Usage: slow_clients.py PIDS HOST PORT PATH N
Prints: connections, RSS before (KiB), RSS during (KiB), growth per connection (KiB)."""
import asyncio, resource, sys, time

def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return total

async def client(host, port, path, started, hold):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    got = 0
    while got < 64 * 1024:  # the head and a little of the body, then read slowly
        chunk = await reader.read(16 * 1024)
        if not chunk:
            break
        got += len(chunk)
    started.append(1)
    await hold.wait()
    writer.close()

async def main():
    pid = [int(p) for p in sys.argv[1].split(",") if p]
    host, port, path, n = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    before = rss_kib(pid)
    started, hold = [], asyncio.Event()
    tasks = [asyncio.create_task(client(host, port, path, started, hold)) for _ in range(n)]
    deadline = time.time() + 60
    while len(started) < n and time.time() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # let the server fill whatever it buffers
    during = rss_kib(pid)
    hold.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"{len(started)} {before} {during} {(during - before) / max(len(started), 1):.1f}")

asyncio.run(main())
