#!/usr/bin/env python3
"""Streams one generate from specd, then prints its stats. Usage: specd_client_example.py [PROMPT] [SOCKET]"""
import os, socket, sys
import msgpack  # the only dependency (Debian: python3-msgpack)

prompt = sys.argv[1] if len(sys.argv) > 1 else "Once upon a time"
xdg = os.environ.get("XDG_RUNTIME_DIR")
path = sys.argv[2] if len(sys.argv) > 2 else f"{xdg}/specd.sock" if xdg else f"/tmp/specd-{os.getuid()}.sock"
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
params = {"prompt": prompt, "max_tokens": 64, "temperature": 0, "stream": True}
sock.sendall(msgpack.packb([0, 1, "generate", [params]]))  # request [0, msgid, method, [params]]
unpacker = msgpack.Unpacker(raw=False, max_buffer_size=16 << 20)
while data := sock.recv(65536):
    unpacker.feed(data)
    for msg in unpacker:
        if msg[:2] == [2, "chunk"]:  # notification [2, "chunk", [{"id", "text", "tokens"}]]
            print(msg[2][0]["text"], end="", flush=True)
        elif msg[:2] == [1, 1]:  # response [1, msgid, error, result]
            if msg[2]:
                sys.exit(f"specd: {msg[2]['code']} {msg[2]['name']}: {msg[2]['message']}")
            r = msg[3]
            print(f"\n[{r['finish_reason']}] {r['usage']['completion_tokens']} tokens"
                  f" in {r['timing']['total_ms']:.0f} ms, acceptance {r['speculative']['acceptance']:.2f}")
            sys.exit(0)
sys.exit("specd closed the connection")
