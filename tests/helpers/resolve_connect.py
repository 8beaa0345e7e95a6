"""What a confined agent does with host names, step by step, for the
DNS-aware egress tests: each argument is one step, each step prints one JSON
line.

  resolve:NAME[:PORT]   socket.getaddrinfo (the libc resolver), then a TCP
                        connect to every address: {"addrs": {ADDR: "ok" |
                        errno}} or {"error": "..."}
  connect:ADDR[:PORT]   a TCP connect: {"connect": "ok" | errno}
  raw:SERVER:NAME       a hand-made A query sent over UDP straight to SERVER
                        (as `dig @SERVER NAME` would): {"from": ADDR,
                        "rcode": N, "answers": N} or {"error": "..."}
  raw6:SERVER:NAME      the same from an AF_INET6 socket to ::ffff:SERVER
  bound:DEV:SERVER:NAME the same from a socket bound to DEV (SO_BINDTODEVICE)
  hold:SERVER:N         opens N TCP connections to SERVER:53 and keeps them
                        open until the end (a client hogging the resolver)
  udpconn:SERVER        connects a UDP socket to SERVER:53 and keeps it
  udpsend:NAME          sends an A query on that connected socket (no
                        address: no connect or sendmsg hook sees it):
                        {"rcode": N} or {"errno": N}
  flood:SERVER:NAME:N:OTHER
                        sends N A queries for NAME on one UDP socket to
                        SERVER:53 without waiting, then one for OTHER on
                        another socket, then reads replies for 4 s:
                        {"answered": n, "other_rcode": N,
                        "other_first": whether OTHER's reply came before
                        any of the N}
  wait                  reads one line from stdin (the test's go-ahead)
  sleep:SECONDS
"""

import json
import os
import select
import socket
import struct
import sys
import time

PORT = 8080


def connect(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        sock.connect((addr, port))
        return "ok"
    except OSError as error:
        return error.errno if error.errno is not None else str(error)
    finally:
        sock.close()


def resolve(name, port):
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        return {"error": str(error)}
    addrs = sorted({info[4][0] for info in infos})
    return {"addrs": {addr: connect(addr, port) for addr in addrs}}


def a_query(name):
    query_id = int.from_bytes(os.urandom(2), "big")
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return query_id, header + labels + b"\x00" + struct.pack(">HH", 1, 1)


CONNECTED = []


def udp_send(name):
    _, query = a_query(name)
    sock = CONNECTED[0]
    try:
        sock.send(query)
        reply = sock.recv(4096)
    except OSError as error:
        return {"error": str(error), "errno": error.errno}
    return {"rcode": struct.unpack(">H", reply[2:4])[0] & 0xF}


def raw_query(server, name, family=socket.AF_INET, device=None):
    query_id, query = a_query(name)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        if device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if family == socket.AF_INET6:
            server = "::ffff:" + server
        sock.sendto(query, (server, 53))
        reply, source = sock.recvfrom(4096)
    except OSError as error:
        return {"error": str(error), "errno": error.errno}
    finally:
        sock.close()
    reply_id, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    return {
        "from": source[0],
        "id_matches": reply_id == query_id,
        "rcode": flags & 0xF,
        "answers": answers,
    }


HELD = []


def hold(server, count):
    opened = 0
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(3)
        try:
            sock.connect((server, 53))
            HELD.append(sock)
            opened += 1
        except OSError:
            sock.close()
    return {"held": opened}


def flood(server, name, count, other):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(count):
        sock.sendto(a_query(name)[1], (server, 53))
    other_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other_sock.sendto(a_query(other)[1], (server, 53))
    answered, other_rcode, other_first = 0, None, None
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock, other_sock], [], [], max(0, deadline - time.monotonic()))
        for ready_sock in ready:
            reply = ready_sock.recv(4096)
            if ready_sock is other_sock:
                other_rcode = struct.unpack(">H", reply[2:4])[0] & 0xF
                other_first = answered == 0
            else:
                answered += 1
    return {"answered": answered, "other_rcode": other_rcode, "other_first": other_first}


def main():
    for step in sys.argv[1:]:
        kind, _, rest = step.partition(":")
        if kind == "resolve":
            name, _, port = rest.partition(":")
            result = resolve(name, int(port or PORT))
        elif kind == "connect":
            addr, port = rest, PORT
            if rest.count(":") == 1:
                addr, port = rest.split(":")[0], int(rest.split(":")[1])
            result = {"connect": connect(addr, port)}
        elif kind == "raw":
            server, _, name = rest.partition(":")
            result = raw_query(server, name)
        elif kind == "raw6":
            server, _, name = rest.partition(":")
            result = raw_query(server, name, family=socket.AF_INET6)
        elif kind == "bound":
            device, server, name = rest.split(":")
            result = raw_query(server, name, device=device)
        elif kind == "hold":
            server, _, count = rest.partition(":")
            result = hold(server, int(count))
        elif kind == "udpconn":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(3)
            sock.connect((rest, 53))
            CONNECTED.append(sock)
            result = {"connected": rest}
        elif kind == "udpsend":
            result = udp_send(rest)
        elif kind == "flood":
            server, name, count, other = rest.split(":")
            result = flood(server, name, int(count), other)
        elif kind == "wait":
            sys.stdin.readline()
            result = {"waited": True}
        elif kind == "sleep":
            time.sleep(float(rest))
            result = {"slept": float(rest)}
        else:
            result = {"error": "unknown step " + step}
        print(json.dumps({"step": step, **result}), flush=True)


main()
