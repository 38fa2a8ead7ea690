#!/usr/bin/env python3
"""A pod's workload: answers with the pod's name over HTTP (TCP) and UDP,
on IPv4 and IPv6 at once, on each given port. Prints "ready" once every
socket listens.

Except: HTTP GET /client and the UDP datagram "client" are answered with
the client's address as this server saw it (an IPv4-mapped address shown
as plain IPv4), for tests of source NAT and externalTrafficPolicy.

usage: pod_server.py NAME PORT [PORT...]
"""
import socket
import sys
import threading

name, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
body = (name + "\n").encode()


def dual_stack(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s


def client_ip(peer):
    ip = peer[0]
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[len("::ffff:"):]
    return (ip + "\n").encode()


def answer(request_target, peer):
    if request_target == "client":
        return client_ip(peer)
    return body


def serve_http(conn, peer):
    with conn:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return
        # "GET /client HTTP/1.1": the path, without its leading slash.
        words = data.split(b"\r\n", 1)[0].split()
        path = words[1].decode(errors="replace") if len(words) > 1 else "/"
        reply = answer(path.split("?", 1)[0].lstrip("/"), peer)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(reply)
            + reply
        )


def tcp_loop(s):
    while True:
        conn, peer = s.accept()
        threading.Thread(target=serve_http, args=(conn, peer), daemon=True).start()


def udp_loop(s):
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(answer(data.decode(errors="replace").strip(), peer), peer)


for port in ports:
    tcp = dual_stack(socket.SOCK_STREAM, port)
    tcp.listen(128)
    udp = dual_stack(socket.SOCK_DGRAM, port)
    threading.Thread(target=tcp_loop, args=(tcp,), daemon=True).start()
    threading.Thread(target=udp_loop, args=(udp,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
