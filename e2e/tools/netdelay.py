"""A packet delayer for kernels without `sch_netem`: holds every packet of an NFQUEUE for a delay with
uniform jitter (what `tc qdisc ... netem delay D J` does), then accepts it. Pure Python, standard library
only: it speaks nfnetlink_queue itself (no libnetfilter_queue).

Run it in the network namespace whose iptables rule feeds the queue, e.g. inside a pod's netns:

    iptables -A INPUT -i eth0 -j NFQUEUE --queue-num 7 --queue-bypass
    python3 netdelay.py --queue 7 --delay-ms 100 --jitter-ms 20 --max-seconds 120

Bounded: it exits after `--max-seconds` (or on SIGTERM/SIGINT), accepting every packet it still holds
first. With `--queue-bypass` on the rule, packets pass undelayed while nothing listens, so a dead delayer
never black-holes a link. Loss is not its job: `-m statistic --mode random --probability P -j DROP`.
Packets are released in due order, so jitter reorders them, as netem's does. It prints one line on exit:
packets held, the mean delay they got, and the most held at once.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1  # over the queue's length: accept rather than drop
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
NF_ACCEPT = 1
NLA_TYPE_MASK = 0x3FFF
QUEUE_MAXLEN = 4096


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def netlink_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload after the netlink header) of each message in one datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        yield kind, data[offset + 16 : offset + length]
        offset += (length + 3) & ~3


class Queue:
    """One bound NFQUEUE: metadata-only copies (no payload), fail-open when full."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._configure(attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, 0)), seq=1)
        params = attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
        maxlen = attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN))
        fail_open = attr(NFQA_CFG_MASK, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN))
        fail_open += attr(NFQA_CFG_FLAGS, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN))
        self._configure(params + maxlen + fail_open, seq=2)

    def _configure(self, attrs: bytes, seq: int) -> None:
        self.sock.send(message(NFQNL_MSG_CONFIG, self.number, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        for kind, payload in netlink_messages(self.sock.recv(65536)):
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", payload)
                if error:
                    raise OSError(-error, f"nfqueue {self.number} config: {os.strerror(-error)}")

    def packet_ids(self) -> list[int]:
        """The ids of the packets in whatever the socket has now (non-blocking after the first read)."""
        ids: list[int] = []
        try:
            data = self.sock.recv(1 << 20)
        except OSError as error:  # ENOBUFS: the kernel dropped messages for us; fail-open keeps the packets
            if error.errno == errno.ENOBUFS:
                return ids
            raise
        for kind, payload in netlink_messages(data):
            if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                continue
            for attr_kind, value in attributes(payload[4:]):  # after the nfgenmsg header
                if attr_kind == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", value)[0])
        return ids

    def accept(self, packet_id: int) -> None:
        verdict = attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))
        self.sock.send(message(NFQNL_MSG_VERDICT, self.number, verdict))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def run(queue: Queue, delay: float, jitter: float, max_seconds: float) -> tuple[int, float, int]:
    """Hold each packet for delay +- jitter (uniform) seconds until max_seconds or a signal; returns
    (packets, mean seconds held, most held at once)."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    held: list[tuple[float, int, float]] = []  # (due, packet id, arrived)
    packets, total, most = 0, 0.0, 0
    deadline = time.monotonic() + max_seconds
    while not stop and time.monotonic() < deadline:
        now = time.monotonic()
        wait = min(deadline - now, held[0][0] - now if held else 0.5)
        if wait > 0 and select.select([queue], [], [], wait)[0]:
            arrived = time.monotonic()
            for packet_id in queue.packet_ids():
                due = arrived + max(0.0, delay + random.uniform(-jitter, jitter))
                heapq.heappush(held, (due, packet_id, arrived))
            most = max(most, len(held))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id, arrived = heapq.heappop(held)
            queue.accept(packet_id)
            packets, total = packets + 1, total + (now - arrived)
    for _, packet_id, arrived in held:  # never leave a packet behind
        queue.accept(packet_id)
        packets, total = packets + 1, total + (time.monotonic() - arrived)
    return packets, (total / packets if packets else 0.0), most


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--max-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    queue = Queue(args.queue)
    print(f"netdelay: queue {args.queue} bound", flush=True)
    try:
        packets, mean, most = run(queue, args.delay_ms / 1000, args.jitter_ms / 1000, args.max_seconds)
    finally:
        queue.close()
    print(f"netdelay: {packets} packets held, mean {mean * 1000:.1f} ms, at most {most} at once", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
