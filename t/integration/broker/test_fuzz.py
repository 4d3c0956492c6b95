"""Hostile input does not hurt the broker: a fixed-seed stream of mangled
commands (truncated, oversized, random bytes, bad lengths, compressed
garbage after deflate) over many connections; the server must still answer
and deliver afterwards (run it under --enable-sanitizers to catch memory
errors)."""

import random
import socket
import struct

import nsqwire as nw

VERBS = [b"IDENTIFY", b"SUB", b"PUB", b"MPUB", b"DPUB", b"RDY", b"FIN", b"REQ", b"TOUCH",
         b"CLS", b"NOP", b"AUTH", b"BOGUS", b""]


def mangled(rng):
    verb = rng.choice(VERBS)
    params = [rng.choice([b"t", b"ch", b"x" * rng.randint(0, 80), b"-1", b"99999999999",
                          b"0123456789abcdef", bytes(rng.randrange(256) for _ in range(5))])
              for _ in range(rng.randint(0, 3))]
    line = b" ".join([verb] + params) + rng.choice([b"\n", b"\r\n", b""])
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    size = rng.choice([len(body), 0, -1 & 0xffffffff, 0x7fffffff, rng.randint(0, 100)])
    return line + rng.choice([b"", struct.pack(">I", size) + body, body])


def test_mangled_input(broker):
    b = broker(http=False, max_body_size="64KiB", max_msg_size="16KiB")
    rng = random.Random(20261130)
    for i in range(300):
        s = socket.create_connection(("127.0.0.1", b.tcp_port), timeout=2)
        try:
            if rng.random() < 0.9:
                s.sendall(b"  V2")
            if rng.random() < 0.2:
                s.sendall(b"IDENTIFY\n" + nw.frame_body(
                    b'{"feature_negotiation":true,"deflate":true}'))
            for _ in range(rng.randint(1, 6)):
                s.sendall(mangled(rng))
            s.settimeout(0.05)
            try:
                s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            s.close()
    assert b.alive()
    c = nw.consumer(b.tcp_port, "after", "ch", rdy=1)
    nw.publish(b.tcp_port, "after", [b"still fine"])
    assert c.read_message().body == b"still fine"
