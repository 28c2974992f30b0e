#!/usr/bin/env python3
"""Writes the seed corpus under corpus/<target>/: a few small, meaningful inputs per
fuzz target (the message layouts are those of vdpa/tests/message_sequences.rs). Run it
again after changing a target's input format; the fuzzer's own finds are not kept."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NEED_REPLY = 0x8
USER_ADDR = 0x7F00_0000_0000
MEM_SIZE = 0x40_0000


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def frame(req, flags, body):
    return struct.pack("<III", req, 1 | flags, len(body)) + body


def state(ring, num):
    return u32(ring) + u32(num)


def region(gpa, size, user, off):
    return u64(gpa) + u64(size) + u64(user) + u64(off)


def vring_addr(ring):
    base = USER_ADDR + 0x1_0000 * (ring + 1)
    return u32(ring) + u32(0) + u64(base) + u64(base + 0x2000) + u64(base + 0x1000) + u64(0)


FEATURES = (1 << 32) | (1 << 29) | (1 << 30)
# (name, request code, body, fds the message carries)
MESSAGES = [
    ("get_features", 1, b"", 0),
    ("set_features", 2, u64(FEATURES), 0),
    ("set_owner", 3, b"", 0),
    ("set_mem_table", 5, u32(1) + u32(0) + region(0, MEM_SIZE, USER_ADDR, 0), 1),
    ("set_vring_num", 8, state(0, 256), 0),
    ("set_vring_addr", 9, vring_addr(0), 0),
    ("set_vring_base", 10, state(1, 7), 0),
    ("get_vring_base", 11, state(0, 0), 0),
    ("set_vring_kick", 12, u64(0), 1),
    ("set_vring_call_nofd", 13, u64(0x100 | 1), 0),
    ("set_protocol_features", 16, u64(0x8000 | 0x200 | 0x1 | 0x8), 0),
    ("set_vring_enable", 18, state(1, 1), 0),
    ("net_set_mtu", 20, u64(1500), 0),
    ("get_config", 24, u32(0) + u32(12) + u32(0) + bytes(12), 0),
    ("add_mem_reg", 37, u64(0) + region(0x10_0000, 0x1000, USER_ADDR + 0x10_0000, 0), 1),
    ("rem_mem_reg", 38, u64(0) + region(0x10_0000, 0x1000, USER_ADDR + 0x10_0000, 0), 0),
    ("set_status", 39, u64(0xF), 0),
]


def main():
    # vhost_user_framing: fd count byte, then the stream.
    qemu = [frame(1, 0, b""), frame(3, 0, b""), frame(2, NEED_REPLY, u64(FEATURES)),
            frame(8, NEED_REPLY, state(0, 256)), frame(9, NEED_REPLY, vring_addr(0))]
    put("vhost_user_framing", "qemu_setup_sequence", b"\x00" + b"".join(qemu))
    put("vhost_user_framing", "mem_table_with_fd",
        b"\x01" + frame(5, NEED_REPLY, MESSAGES[3][2]))
    put("vhost_user_framing", "bad_version", b"\x00" + struct.pack("<III", 1, 2, 0))
    put("vhost_user_framing", "truncated_body", b"\x00" + frame(2, 0, u64(1))[:15])

    # request_decode: limits (2 rings... 4 rings, queue size 1024, MTU 9000), fd count,
    # fd kinds (2 bits each: memfd, eventfd, pipe, empty memfd), request, flags, body.
    for name, code, body, nfds in MESSAGES:
        kinds = 0 if code in (5, 37) else 0x5555
        head = struct.pack("<HHHBHII", 4, 1024, 9000, nfds, kinds, code, 1 | NEED_REPLY)
        put("request_decode", name, head + body)

    # memory_table: file length, then ops (see the target's doc comment).
    small = 0x80

    def h(*vals):
        return b"".join(struct.pack("<H", v) for v in vals)
    put("memory_table", "two_regions_and_lookups",
        h(0x4000)
        + bytes([small | 0]) + h(0x0, 0x2000, 0x1000, 0x0)
        + bytes([small | 0]) + h(0x8000, 0x1000, 0x4000, 0x1010)
        + bytes([small | 3]) + h(0x1ff8, 8)
        + bytes([small | 3]) + h(0x8ff0, 0x10)
        + bytes([small | 4]) + h(0x1010, 0x10)
        + bytes([1, 0])
        + bytes([small | 3]) + h(0x10, 4))
    put("memory_table", "overlap_and_from_regions",
        h(0x3000)
        + bytes([small | 2]) + h(0x0, 0x1000, 0x0, 0x0) + h(0x800, 0x1000, 0x2000, 0x1000)
        + bytes([small | 2]) + h(0x0, 0x1000, 0x0, 0x0) + h(0x1000, 0x1000, 0x1000, 0x2000)
        + bytes([small | 3]) + h(0xfff, 2))
    put("memory_table", "full_width_addresses",
        h(0x1000) + bytes([0]) + u64(0xFFFF_FFFF_FFFF_F000) + u64(0x1000) + u64(0) + u64(0)
        + bytes([3]) + u64(0xFFFF_FFFF_FFFF_FFFF) + u64(1))

    # descriptor_chain: config (log2 size), base, avail idx, descriptors, avail ring.
    def desc(addr, length, flags, nxt):
        return struct.pack("<QIHH", addr, length, flags, nxt)
    table = (desc(0x1000, 12, 1, 1) + desc(0x1100, 1500, 0, 0)      # TX: header + frame
             + desc(0x2000, 2048, 2, 0)                              # RX: one buffer
             + desc(0x3000, 64, 4, 0))                               # indirect (refused)
    put("descriptor_chain", "tx_rx_indirect",
        bytes([2]) + struct.pack("<HH", 0, 3) + table + struct.pack("<HHHH", 0, 2, 3, 0))
    put("descriptor_chain", "wrapping_index",
        bytes([1]) + struct.pack("<HH", 0xFFFF, 1) + desc(0x1000, 64, 2, 0) + bytes(16)
        + struct.pack("<HH", 0, 0))
    loop = desc(0x1000, 8, 1, 1) + desc(0x1008, 8, 1, 0)
    put("descriptor_chain", "loop", bytes([1]) + struct.pack("<HH", 0, 1) + loop + struct.pack("<HH", 0, 0))

    # config_toml: mode byte (0 = file, 1 = snippet), then the text.
    with open(os.path.join(ROOT, "tools", "examples", "vdpad.toml"), "rb") as f:
        put("config_toml", "examples_vdpad_toml", b"\x00" + f.read())
    put("config_toml", "minimal_file", b'\x00[[device]]\nname = "vm1-net0"\n')
    put("config_toml", "bad_queue_size", b'\x00[[device]]\nname = "a"\nqueue_size = 300\n')
    put("config_toml", "snippet", b'\x01[[device]]\nname = "vm2-net0"\nbackend = "loopback"\n')

    # control_json: one request line each.
    for name, line in [
        ("list", '{"version":1,"command":"list"}\n'),
        ("stats", '{"version":1,"command":"stats","device":"vm1-net0","queue":0}\n'),
        ("add", '{"version":1,"command":"add","config":"[[device]]\\nname = \\"vm2-net0\\"\\n","origin":"vm2.toml"}\n'),
        ("remove", '{"version":1,"command":"remove","device":"vm2-net0"}\n'),
        ("log_level", '{"version":1,"command":"log-level","level":"debug"}\n'),
        ("bad_version", '{"version":2,"command":"list"}\n'),
    ]:
        put("control_json", name, line.encode())

    # metrics_http: request heads.
    put("metrics_http", "get_metrics", b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\nUser-Agent: Prometheus/2.45.0\r\nAccept: text/plain\r\n\r\n")
    put("metrics_http", "head_lf_only", b"HEAD /metrics?x=1 HTTP/1.0\n\n")
    put("metrics_http", "post", b"POST /metrics HTTP/1.1\r\n\r\n")
    put("metrics_http", "incomplete", b"GET /metrics HTTP/1.1\r\nHost: x\r\n")


if __name__ == "__main__":
    main()
