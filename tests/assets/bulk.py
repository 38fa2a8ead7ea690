#!/usr/bin/env python3
"""Bulk TCP transfers, for the path MTU tests.

usage:
  bulk.py serve PORT        listens on PORT (IPv4 and IPv6); prints "ready".
                            Each connection sends one line, "get N" or
                            "put N": for get, N bytes come back and the
                            connection closes; for put, N bytes follow and
                            the server answers with how many it received.
  bulk.py get ADDR PORT N   fetches N bytes; prints how many arrived.
  bulk.py put ADDR PORT N   sends N bytes; prints the server's count.

Every socket operation times out after TIMEOUT seconds, so a transfer that
stalls (a path MTU black hole) fails instead of hanging.
"""
import socket
import sys
import threading

TIMEOUT = 15
CHUNK = 65536


def serve_one(conn):
    with conn:
        conn.settimeout(TIMEOUT)
        f = conn.makefile("rb")
        words = f.readline().split()
        if len(words) != 2:
            return
        verb, n = words[0], int(words[1])
        if verb == b"get":
            block = b"x" * CHUNK
            left = n
            while left > 0:
                conn.sendall(block[: min(left, CHUNK)])
                left -= min(left, CHUNK)
        elif verb == b"put":
            got = 0
            while got < n:
                data = f.read1(CHUNK)
                if not data:
                    break
                got += len(data)
            conn.sendall(b"%d\n" % got)


def serve(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def connect(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect((addr, port))
    return s


def get(addr, port, n):
    with connect(addr, port) as s:
        s.sendall(b"get %d\n" % n)
        got = 0
        while True:
            data = s.recv(CHUNK)
            if not data:
                break
            got += len(data)
    print(got)


def put(addr, port, n):
    with connect(addr, port) as s:
        s.sendall(b"put %d\n" % n)
        block = b"x" * CHUNK
        left = n
        while left > 0:
            s.sendall(block[: min(left, CHUNK)])
            left -= min(left, CHUNK)
        print(s.makefile("rb").readline().decode().strip())


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(int(sys.argv[2]))
    elif cmd in ("get", "put"):
        {"get": get, "put": put}[cmd](sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
