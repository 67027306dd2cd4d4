#!/usr/bin/env python3
"""Writes the seed corpora of the rpc_envelope and h2_bridge fuzz targets.

    python3 tests/fuzz/seeds/rpc_h2_seeds.py   # from the repository's top

Realistic inputs (a unary Connect request, streaming envelope sequences, gzip'd envelopes, an
HTTP/2 client preface with HEADERS + DATA, Cursor's answers) and the edges around them (a gzip
bomb, an oversize or truncated envelope, corrupt gzip). Regression inputs from fuzzing are added
to the corpus directories by hand, not here.
"""
import gzip
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(b):
    return gzip.compress(b, mtime=0)


def env(flags, payload):
    return struct.pack(">BI", flags, len(payload)) + payload


def pb_string(field, s):
    b = s.encode() if isinstance(s, str) else s
    n, out = len(b), b""
    while True:
        if n < 0x80:
            out += bytes([n])
            break
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return bytes([(field << 3) | 2]) + out + b


CHAT = pb_string(1, pb_string(1, "list the files in src/ and explain main.cc") + pb_string(2, "user")) + pb_string(
    7, "claude-4-sonnet"
)
END_OK = b"{}"
END_ERR = b'{"error":{"code":"permission_denied","message":"blocked"}}'
GRPC_WEB_TRAILER = b"grpc-status: 0\r\ngrpc-message: \r\n"

# --- rpc_envelope: [config][piece size][body] ---------------------------------------------
# config: bits 0-1 limit (16, 1 KiB, 64 KiB, 16 MiB); bits 2-3 protocol (Connect stream, gRPC,
# gRPC-web, Connect unary); 0x10 gzip, 0x20 "br"; 0x40 a replacing observer.
LIM_1K, LIM_64K, LIM_16M = 1, 2, 3
CONNECT_STREAM, GRPC, GRPC_WEB, UNARY = 0 << 2, 1 << 2, 2 << 2, 3 << 2
GZIP, BR, REPLACE = 0x10, 0x20, 0x40


def rpc(name, config, piece, body):
    write("rpc_envelope", name, bytes([config, piece]) + body)


rpc("unary_connect_proto.bin", UNARY | LIM_64K, 255, CHAT)
rpc("unary_connect_gzip.bin", UNARY | LIM_64K | GZIP, 7, gz(CHAT))
rpc("unary_connect_gzip_replaced.bin", UNARY | LIM_64K | GZIP | REPLACE, 255, gz(CHAT))
rpc("unary_connect_json.bin", UNARY | LIM_1K, 255, b'{"modelName":"gpt-5","query":"hi"}')
STREAM = env(0, CHAT) + env(0, pb_string(1, "more")) + env(2, END_OK)
rpc("connect_stream_sequence.bin", CONNECT_STREAM | LIM_64K, 3, STREAM)
rpc("connect_stream_replaced.bin", CONNECT_STREAM | LIM_64K | REPLACE, 1, STREAM)
rpc("connect_stream_end_error.bin", CONNECT_STREAM | LIM_1K, 255, env(0, CHAT) + env(2, END_ERR))
GZ_STREAM = env(1, gz(CHAT)) + env(0, pb_string(1, "plain")) + env(3, gz(END_OK))
rpc("connect_stream_gzip.bin", CONNECT_STREAM | LIM_64K | GZIP, 5, GZ_STREAM)
rpc("connect_stream_gzip_replaced.bin", CONNECT_STREAM | LIM_64K | GZIP | REPLACE, 16, GZ_STREAM)
rpc("connect_stream_br_unsupported.bin", CONNECT_STREAM | LIM_64K | BR, 255, env(1, b"\x1b\x03\x00\xf8"))
rpc("grpc_stream.bin", GRPC | LIM_64K, 255, env(0, CHAT) + env(0, b""))
rpc("grpc_gzip.bin", GRPC | LIM_16M | GZIP, 255, env(1, gz(CHAT * 20)))
rpc("grpc_web_trailer.bin", GRPC_WEB | LIM_64K, 2, env(0, CHAT) + env(0x80, GRPC_WEB_TRAILER))
# 16 MiB of zeros in 16 KiB: refused by the size limit (1 KiB) or the ratio guard (16 MiB).
BOMB = gz(b"\0" * (16 << 20))
rpc("gzip_bomb_envelope_1k.bin", CONNECT_STREAM | LIM_1K | GZIP, 255, env(1, BOMB))
rpc("gzip_bomb_envelope_16m.bin", CONNECT_STREAM | LIM_16M | GZIP, 255, env(1, BOMB))
rpc("gzip_bomb_unary_64k.bin", UNARY | LIM_64K | GZIP, 255, BOMB)
rpc("oversize_envelope.bin", GRPC | LIM_1K, 255, env(0, b"x") + b"\x00\xff\xff\xff\xff")
rpc("truncated_envelope.bin", CONNECT_STREAM | LIM_64K, 1, env(0, CHAT)[:-3])
rpc("gzip_corrupt.bin", CONNECT_STREAM | LIM_64K | GZIP, 255, env(1, gz(CHAT)[:12] + b"garbage" + gz(CHAT)[19:]))
rpc("gzip_trailing_bytes.bin", UNARY | LIM_64K | GZIP, 255, gz(CHAT) + b"trailing")
rpc("gzip_two_members.bin", UNARY | LIM_64K | GZIP, 255, gz(b"one") + gz(b"two"))

# --- h2_bridge: [config] then operations (see tests/fuzz/h2_bridge.cc) ---------------------
# The harness sends both prefaces; the frames below are what follows them.
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CLIENT, UPSTREAM, APPROVE, REFUSE_HELD, CLIENT_EOF, UPSTREAM_EOF, POLL = 0, 1, 0x0C, 0x14, 5, 6 | 8, 7


def frame(type_, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([type_, flags]) + struct.pack(">I", stream) + payload


def hpack_int(n, prefix_bits, first=0):
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes([first | n])
    out, n = bytearray([first | top]), n - top
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def hpack(headers):
    # Literal header fields without indexing, new names, no Huffman: valid and readable.
    out = b""
    for name, value in headers:
        n, v = name.encode(), value.encode() if isinstance(value, str) else value
        out += b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v
    return out


def request(stream, path, content_type, extra=(), method="POST", authority="api2.cursor.sh", end=False):
    h = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
    if content_type:
        h.append(("content-type", content_type))
    h += list(extra)
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream, hpack(h))


def response(stream, status="200", content_type=None, extra=(), end=False):
    h = [(":status", status)] + ([("content-type", content_type)] if content_type else []) + list(extra)
    return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream, hpack(h))


def data(stream, payload, end=False):
    return frame(DATA, END_STREAM if end else 0, stream, payload)


def op_data(side, b):
    # Long writes go in pieces of at most 64 KiB - 1 (the length field).
    out = b""
    for i in range(0, max(len(b), 1), 0xFFFF):
        piece = b[i : i + 0xFFFF]
        out += bytes([side]) + struct.pack("<H", len(piece)) + piece
    return out


def h2(name, config, *ops):
    write("h2_bridge", name, bytes([config]) + b"".join(ops))


SETTINGS_ACK = frame(SETTINGS, ACK, 0)
CHAT_PATH = "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"
UNARY_PATH = "/aiserver.v1.AiService/AvailableModels"
AUTH = [("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"), ("user-agent", "connect-es/1.6.1")]

# A unary Connect call and its answer.
h2(
    "unary_connect.bin",
    0,
    op_data(CLIENT, SETTINGS_ACK + request(1, UNARY_PATH, "application/proto", AUTH + [("content-length", str(len(CHAT)))])
            + data(1, CHAT, end=True)),
    op_data(UPSTREAM, SETTINGS_ACK + response(1, "200", "application/proto") + data(1, pb_string(1, "gpt-5"), end=True)),
)
# The same, gzip'd (content-encoding), with a message that gets masked.
MASKED = gz(pb_string(1, "please mask AKIAIOSFODNN7EXAMPLE"))
h2(
    "unary_connect_gzip_masked.bin",
    0,
    op_data(CLIENT, request(1, UNARY_PATH, "application/proto", [("content-encoding", "gzip")]) + data(1, MASKED, end=True)),
    op_data(UPSTREAM, response(1, "200", "application/proto", [("content-encoding", "gzip")]) + data(1, gz(b"ok"), end=True)),
)
# A Connect server-streaming chat: the request envelope, three response envelopes, end of stream.
h2(
    "connect_stream_chat.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto", AUTH + [("connect-protocol-version", "1")])
            + data(1, env(0, CHAT), end=True)),
    op_data(UPSTREAM, response(1, "200", "application/connect+proto") + data(1, env(0, pb_string(1, "Hello")))),
    op_data(UPSTREAM, data(1, env(0, pb_string(1, " world")) + env(2, END_OK), end=True)),
)
# Bidi with gzip'd envelopes (connect-content-encoding), split across DATA frames, a PING.
GZ_ENV = env(1, gz(CHAT))
h2(
    "connect_bidi_gzip_split.bin",
    0,
    op_data(CLIENT, request(1, "/agent.v1.AgentService/Run", "application/connect+proto",
                            [("connect-content-encoding", "gzip"), ("connect-accept-encoding", "gzip")])
            + data(1, GZ_ENV[:7]) + frame(PING, 0, 0, b"12345678") + data(1, GZ_ENV[7:])),
    op_data(UPSTREAM, response(1, "200", "application/connect+proto", [("connect-content-encoding", "gzip")])
            + data(1, env(1, gz(pb_string(1, "exec ls"))))),
    op_data(CLIENT, data(1, env(0, pb_string(1, "result")), end=True)),
    op_data(UPSTREAM, data(1, env(3, gz(END_OK)), end=True)),
)
# gRPC with te: trailers and trailers after the response body; a trailers-only error.
h2(
    "grpc_trailers.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/grpc", [("te", "trailers"), ("grpc-encoding", "identity")])
            + data(1, env(0, CHAT), end=True)
            + request(3, UNARY_PATH, "application/grpc+proto", [("te", "trailers")]) + data(3, env(0, b""), end=True)),
    op_data(UPSTREAM, response(1, "200", "application/grpc") + data(1, env(0, pb_string(1, "answer")))
            + frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([("grpc-status", "0")]))
            + response(3, "200", "application/grpc", [("grpc-status", "7"), ("grpc-message", "denied")], end=True)),
)
# gRPC-web: the trailer frame inside the body.
h2(
    "grpc_web.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/grpc-web+proto") + data(1, env(0, CHAT), end=True)),
    op_data(UPSTREAM, response(1, "200", "application/grpc-web+proto")
            + data(1, env(0, pb_string(1, "x")) + env(0x80, GRPC_WEB_TRAILER), end=True)),
)
# A message held for approval, approved; a request path held, refused; the upstream's output
# drained only in small budgets.
h2(
    "held_then_approved.bin",
    0x04,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto") + data(1, env(0, pb_string(1, "please hold this"))
            + env(0, pb_string(1, "after")), end=True)),
    bytes([3, 2 | 0x08, POLL, APPROVE, 3 | 0xF8, 2 | 0xF8]),
    op_data(UPSTREAM, SETTINGS_ACK + response(1, "200", "application/connect+proto") + data(1, env(2, END_OK), end=True)),
    bytes([2 | 0xF8, 3 | 0xF8]),
)
h2(
    "held_path_refused.bin",
    0,
    op_data(CLIENT, request(1, "/aiserver.v1.ChatService/hold", "application/proto") + data(1, CHAT, end=True)),
    bytes([POLL, REFUSE_HELD]),
)
# Refusals: a denied message mid-stream, a denied path, a response header, a bad host, CONNECT.
h2(
    "refusals.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto") + data(1, env(0, pb_string(1, "ok")))),
    op_data(UPSTREAM, response(1, "200", "application/connect+proto") + data(1, env(0, pb_string(1, "hi")))),
    op_data(CLIENT, data(1, env(0, pb_string(1, "deny me")), end=True)
            + request(3, "/aiserver.v1.Deny/deny", "application/proto", end=True)
            + request(5, UNARY_PATH, "application/proto") + data(5, b"", end=True)
            + request(7, UNARY_PATH, "application/proto", authority="evil.example.com", end=True)
            + frame(HEADERS, END_HEADERS, 9, hpack([(":method", "CONNECT"), (":authority", "api2.cursor.sh:443")]))),
    # Stream 5 is the second one sent upstream: stream 3 there.
    op_data(UPSTREAM, response(3, "200", "application/proto", [("x-deny", "1")], end=True)),
)
# Oversize envelope under small limits; a truncated stream; a REST download passing as bytes.
h2(
    "limits_and_truncation.bin",
    0x01,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto") + data(1, b"\x00\x00\x01\x00\x00" + b"x" * 100)
            + request(3, CHAT_PATH, "application/connect+proto") + data(3, env(0, b"abc")[:6], end=True)
            + request(5, "/v1/download", None, method="GET", end=True)),
    op_data(UPSTREAM, response(5, "200", "application/octet-stream", [("content-length", "2000")]) + data(5, b"z" * 2000, end=True)),
)
# A gzip bomb in an envelope, within the 16 MiB message limit: refused by the ratio guard.
h2(
    "gzip_bomb_envelope.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto", [("connect-content-encoding", "gzip")])
            + data(1, env(1, BOMB)[:16000]) + data(1, env(1, BOMB)[16000:], end=True)),
)
# Cursor resets a stream, then says GOAWAY; the job's next request is refused.
h2(
    "upstream_reset_goaway.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto") + data(1, env(0, CHAT))
            + request(3, CHAT_PATH, "application/connect+proto") + data(3, env(0, CHAT))),
    op_data(UPSTREAM, frame(RST_STREAM, 0, 1, struct.pack(">I", 2))
            + frame(GOAWAY, 0, 0, struct.pack(">II", 3, 0))),
    op_data(CLIENT, request(5, UNARY_PATH, "application/proto", end=True) + frame(RST_STREAM, 0, 3, struct.pack(">I", 8))
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20))),
    bytes([UPSTREAM_EOF, CLIENT_EOF]),
)
# A header block in CONTINUATION frames; an informational 103 before the answer.
BLOCK = hpack([(":method", "POST"), (":scheme", "https"), (":authority", "api2.cursor.sh"), (":path", UNARY_PATH),
               ("content-type", "application/json"), ("x-long", "v" * 300)])
h2(
    "continuation_and_103.bin",
    0,
    op_data(CLIENT, frame(HEADERS, 0, 1, BLOCK[:50]) + frame(CONTINUATION, END_HEADERS, 1, BLOCK[50:])
            + data(1, b'{"query":"hi"}', end=True)),
    op_data(UPSTREAM, response(1, "103", None, [("link", "</a>; rel=preload")])
            + response(1, "200", "application/json") + data(1, b'{"ok":true}', end=True)),
)
# No usable upstream: answered locally.
h2(
    "upstream_unavailable.bin",
    0x02,
    op_data(CLIENT, request(1, UNARY_PATH, "application/proto") + data(1, CHAT, end=True)),
)
# HPACK amplification: one 4000-byte header in the dynamic table, referenced 20 times, is an
# 80 KB header list, beyond the 64 KiB the bridge accepts (both directions).
BIG = b"\x40" + hpack_int(3, 7) + b"x-a" + hpack_int(4000, 7) + b"a" * 4000
h2(
    "header_list_amplified.bin",
    0,
    op_data(CLIENT, frame(HEADERS, END_HEADERS, 1, hpack([(":method", "POST"), (":scheme", "https"),
            (":authority", "api2.cursor.sh"), (":path", UNARY_PATH)]) + BIG + b"\xbe" * 20)
            + request(3, UNARY_PATH, "application/proto") + data(3, b"", end=True)),
    op_data(UPSTREAM, frame(HEADERS, END_HEADERS, 1, hpack([(":status", "200")]) + BIG + b"\xbe" * 20)),
)
# Request trailers (gRPC from the job), a host header beside :authority.
h2(
    "request_trailers_host.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/grpc", [("host", "API2.cursor.sh."), ("te", "trailers")])
            + data(1, env(0, CHAT)) + frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([("x-checksum", "abc")]))),
    op_data(UPSTREAM, response(1, "200", "application/grpc") + data(1, env(0, b"ok"))
            + frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([("grpc-status", "0")]))),
)
# Responses held for approval: one approved at its end, one refused mid-stream; a denied
# unary answer.
h2(
    "response_held.bin",
    0,
    op_data(CLIENT, request(1, CHAT_PATH, "application/connect+proto") + data(1, env(0, CHAT), end=True)
            + request(3, CHAT_PATH, "application/connect+proto") + data(3, env(0, CHAT), end=True)
            + request(5, UNARY_PATH, "application/proto") + data(5, CHAT, end=True)),
    op_data(UPSTREAM, response(1, "200", "application/connect+proto") + data(1, env(0, b"hold on") + env(2, END_OK), end=True)),
    bytes([POLL, APPROVE]),
    op_data(UPSTREAM, response(3, "200", "application/connect+proto") + data(3, env(0, b"ok") + env(0, b"hold it"))),
    bytes([REFUSE_HELD]),
    op_data(UPSTREAM, response(5, "200", "application/proto") + data(5, b"deny this", end=True)),
)
# Three streams each holding most of a 1000-byte envelope: past the connection's budget
# (twice the 1 KiB message limit).
PART = b"\x00\x00\x00\x03\xe8" + b"p" * 900
h2(
    "over_budget.bin",
    0x01,
    op_data(CLIENT, b"".join(request(i, CHAT_PATH, "application/connect+proto") + data(i, PART) for i in (1, 3, 5))),
    op_data(UPSTREAM, response(1, "200", "application/connect+proto") + data(1, PART)
            + response(3, "200", "application/connect+proto") + data(3, PART)),
)
# Request paths (config 0x80): what the proxy routes on.
PATH = 0x80
for name, path in [
    ("path_rpc.bin", "/aiserver.v1.ChatService/StreamUnifiedChatWithTools"),
    ("path_rpc_query.bin", "/agent.v1.AgentService/Run?x=%2F&y=1"),
    ("path_encoded_letter.bin", "/aiserver.v1.ChatService/%53treamUnifiedChat"),
    ("path_encoded_slash.bin", "/aiserver.v1.ChatService%2fRun"),
    ("path_encoded_dot.bin", "/aiserver%2ev1.ChatService/Run"),
    ("path_dot_segments.bin", "/a/./b/../aiserver.v1.AdminService/Run"),
    ("path_percent_percent.bin", "/aiserver.v1.ChatService/%2553"),
    ("path_bad_percent.bin", "/aiserver.v1.ChatService/%zz%4"),
    ("path_absolute_form.bin", "https://api2.cursor.sh/aiserver.v1.ChatService/Run"),
]:
    write("rpc_envelope", name, bytes([PATH]) + path.encode())
# A real (fake) job (config 0x10): client data operations are its requests, [kind][body]; kind
# & 3: unary proto, Connect stream, gRPC, GET; 0x04: path with "hold", 0x0C: path with "deny".
JOB = 0x10
UNARY_K, STREAM_K, GRPC_K, GET_K, HOLD_PATH, DENY_PATH = 0, 1, 2, 3, 0x04, 0x0C


def job_request(kind, body=b""):
    return op_data(CLIENT, bytes([kind]) + body)


h2("job_unary_masked_length.bin", JOB,
   job_request(UNARY_K, CHAT),
   op_data(UPSTREAM, SETTINGS_ACK + response(1, "200", "application/proto", [("content-length", "22")])
           + data(1, b"please mask this value", end=True)))
h2("job_stream_held_approved.bin", JOB,
   job_request(STREAM_K, b"hello"),
   op_data(UPSTREAM, response(1, "200", "application/connect+proto") + data(1, env(0, b"hold this"))),
   bytes([POLL, APPROVE]),
   op_data(UPSTREAM, data(1, env(0, b"mask me") + env(2, END_OK), end=True)))
h2("job_grpc_trailers_and_refusal.bin", JOB,
   job_request(GRPC_K, CHAT), job_request(GRPC_K, b"second"),
   op_data(UPSTREAM, response(1, "200", "application/grpc") + data(1, env(0, b"ok"))
           + frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack([("grpc-status", "0")]))
           + response(3, "200", "application/grpc") + data(3, env(0, b"deny this"))))
h2("job_get_204_and_length.bin", JOB,
   job_request(GET_K), job_request(GET_K),
   op_data(UPSTREAM, response(1, "200", "application/octet-stream", [("content-length", "5")]) + data(1, b"hello", end=True)
           + response(3, "204", None, end=True)))
h2("job_paths_hold_deny.bin", JOB,
   job_request(HOLD_PATH | UNARY_K, b"x"), job_request(DENY_PATH | STREAM_K, b"y"),
   bytes([REFUSE_HELD]))
h2("job_and_cursor.bin", JOB | 0x08,
   job_request(UNARY_K, CHAT), job_request(STREAM_K, b"please mask it"), job_request(GRPC_K, b"hold me"),
   job_request(GET_K), bytes([POLL, APPROVE]), job_request(STREAM_K, b"deny"))
h2("job_upstream_reset.bin", JOB,
   job_request(STREAM_K, CHAT),
   op_data(UPSTREAM, response(1, "200", "application/connect+proto") + data(1, env(0, b"partial"))
           + frame(RST_STREAM, 0, 1, struct.pack(">I", 2))))

# Cursor's graceful shutdown (GOAWAY with 2^31-1, then with the last stream) while the job,
# not yet told, opens another stream: the job must never see the last stream ID grow.
h2("job_cursor_double_goaway.bin", JOB | 0x04,
   job_request(STREAM_K, b"first"), bytes([3 | 0xF8]),
   op_data(UPSTREAM, SETTINGS_ACK + frame(GOAWAY, 0, 0, struct.pack(">II", 0x7FFFFFFF, 0))),
   job_request(STREAM_K, b"second"),
   op_data(UPSTREAM, frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0))),
   bytes([2 | 0xF8, 3 | 0xF8, 2 | 0xF8]))

# Both real (config 0x18), nothing refused, replaced or held: every body comes back as sent.
h2("job_and_cursor_untouched.bin", JOB | 0x08,
   job_request(UNARY_K, CHAT), job_request(STREAM_K, CHAT), job_request(GRPC_K, b"x" * 3000),
   job_request(GET_K), job_request(STREAM_K, b""))

# Bidi streams left open, one gzip'd, ended later (op 7 | 0x08), both real endpoints.
OPEN_K, GZIP_K, END_BODIES = 0x10, 0x20, 7 | 0x08
h2("job_and_cursor_bidi_gzip.bin", JOB | 0x08,
   job_request(STREAM_K | OPEN_K | GZIP_K, CHAT), job_request(GRPC_K | OPEN_K, b"tool output"),
   job_request(GRPC_K | GZIP_K, b"z" * 500), bytes([POLL, END_BODIES]))
h2("job_bidi_gzip_upstream.bin", JOB,
   job_request(STREAM_K | OPEN_K | GZIP_K, CHAT),
   op_data(UPSTREAM, SETTINGS_ACK + response(1, "200", "application/connect+proto", [("connect-content-encoding", "gzip")])
           + data(1, env(1, gz(b"mask this")))),
   bytes([END_BODIES]),
   op_data(UPSTREAM, data(1, env(2, END_OK), end=True)))

# The same conversations with a real (fake) Cursor answering (config 0x08): only the job's side
# of each seed is used.
d = os.path.join(ROOT, "h2_bridge")
for name in sorted(os.listdir(d)):
    if name.startswith(("cursor_", "crash_", "job_")):
        continue
    with open(os.path.join(d, name), "rb") as f:
        seed = f.read()
    write("h2_bridge", "cursor_" + name, bytes([seed[0] | 0x08]) + seed[1:])
