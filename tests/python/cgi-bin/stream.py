#!/usr/bin/env python3
"""`mib` MiB (default 5) in 64 KiB blocks, each led by its number, written as they are made."""
import os
import sys
from urllib.parse import parse_qs

query = parse_qs(os.environ.get("QUERY_STRING", ""))
blocks = int(query.get("mib", ["5"])[0]) * 16
out = sys.stdout.buffer
out.write(b"Content-Type: application/octet-stream\r\n\r\n")
for i in range(blocks):
    out.write(("block %08d\n" % i).encode().ljust(65536, b"."))
    out.flush()
