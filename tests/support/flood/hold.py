"""Opens N connections to a unix socket and holds them, sending nothing, until stdin closes.

Prints one line when done connecting: how many connected and how many were refused.
Usage: python3 hold.py SOCKET N
"""
import socket
import sys

path, n = sys.argv[1], int(sys.argv[2])
held, refused = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        held.append(s)
    except OSError:
        refused += 1
        s.close()
print(f"connected {len(held)} refused {refused}", flush=True)
sys.stdin.read()
