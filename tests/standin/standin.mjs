// A local stand-in for Cursor's back end, for the demo, the tests and the benchmarks.
//
// One HTTPS server (HTTP/2, and HTTP/1.1 through ALPN) answers for api2.cursor.sh,
// agentn.api5.cursor.sh, repo42.cursor.sh and api.cursor.com (one certificate with all four names):
//   - Connect RPCs (connect-es, proto and JSON codecs; gRPC and gRPC-web too) with the message
//     types of proto/cursor, loaded at run time from the descriptor set (build/cursor.desc):
//       aiserver.v1.ChatService/StreamUnifiedChatWithTools  bidi chat
//       agent.v1.AgentService/Run                           bidi agent, with exec messages
//       agent.v1.AgentService/RunSSE + aiserver.v1.BidiService/BidiAppend   its HTTP/1.1 form
//       aiserver.v1.AiService/{AvailableModels,StreamCpp,CppConfig}, agent.v1.AgentService/GetUsableModels,
//       aiserver.v1.RepositoryService/FastUpdateFileV2
//     Streaming responses are gzip-compressed message by message when the client accepts gzip,
//     and labelled `content-type: text/event-stream` on HTTP/1.1, as Cursor's are.
//   - POST /auth/exchange_user_api_key (Bearer crsr_... -> {accessToken, refreshToken});
//   - the Cloud Agents REST API: POST /v0/agents (and /v1/agents), GET /v0/me, GET /v0/models,
//     with `Authorization: Bearer <key>` or HTTP Basic (key as user name, empty password);
//   - GET / (a greeting naming the peer).
// Every request, every message received and every message sent is logged as one JSON line, with
// the raw bytes of each message, so tests can prove what reached "Cursor" byte for byte.
//
// The log (--log FILE, appended; stdout without it). Every line has
//   seq      1, 2, ... in write order          time   ISO 8601 UTC, milliseconds
//   t_ms     monotonic ms since start (us precision)   event  see below
// and every line about a request also has
//   id       the request's number (1, 2, ...)   http   "2.0" or "1.1"
//   authority  :authority or Host as sent (Node's HTTP/2 clients add ":443")
//   host     authority without the port         method, path   as sent (path with the query)
//   peer     "ip:port" of the TCP peer (with cordond in between: cordond's upstream socket)
// Events, in order for one request:
//   request      direction "received"; local "ip:port"; sni (TLS server name); stream (HTTP/2
//                stream id, HTTP/2 only); rpc "pkg.Service/Method" or null; method_kind "unary",
//                "server_streaming", "bidi_streaming" or null; headers {lower-case name: value}
//                (HTTP/2 pseudo-headers included; repeated headers joined by ", ")
//   message      one per message, direction "received" or "sent":
//                index (0, 1, ... per direction of the request; absent on end-of-stream and
//                trailer frames), codec "proto" | "json" | "raw", flags (envelope flag byte;
//                enveloped bodies only), compressed, encoding ("gzip", "identity", ...), wire_size
//                (bytes before decompression), size and raw_base64 (the message exactly as
//                received or sent, after decompression), type (protobuf full name or null), json
//                (protobuf JSON mapping of `type`; parsed JSON for other JSON bodies; else null),
//                decode_error (if decoding failed);
//                BidiAppendRequest also has inner {source "data" | "data_binary", raw_base64, size,
//                type "agent.v1.AgentClientMessage", json}: the hex-decoded client message;
//                end_stream true: a Connect end-of-stream frame (json {} or {"error": ...});
//                trailers_frame true and text: a gRPC-web trailers frame;
//                error true: a unary response with a non-200 status (json: the Connect error)
//   request_end  the request body ended: messages (count received), wire_bytes
//   response     direction "sent": status, headers (as sent; streams on HTTP/1.1 are relabelled
//                content-type text/event-stream), wire_content_type (the type before relabelling)
//   response_end direction "sent": messages, wire_bytes, trailers (gRPC, when any)
//   aborted      the response closed before it ended (client reset or gone)
// A received message is logged before the service sees it, a sent one before it is written, and
// response_end before the last bytes go out (a body's last bytes by content-length, an end-of-stream
// or trailers frame, or the end): once a client has its answer, its lines are in the log.
//
// What it answers:
//   StreamUnifiedChatWithTools  stream_start once, then for each request message: a thinking
//       delta and several text deltas ("Stand-in reply N: you said \"<prompt>\". Attached: <paths>.");
//       a ClientSideToolV2Call (RUN_TERMINAL_COMMAND_V2, raw_args {"command": ...}) when the prompt
//       contains "rm -rf /" (that command) or the word run/execute ("ls -la"); a text delta for
//       each tool result. It ends when the client closes its side.
//   Run   for each run_request: a thinking update, text deltas, exec_server_message {id n,
//       shell_args {command "rm -rf /" if the prompt contains it, else "ls -la",
//       working_directory "/workspace"}}, then turn_ended; a text delta for each exec result and
//       a heartbeat for each client heartbeat; it ends when the client closes its side.
//   RunSSE  the same turn, fed by the BidiAppends of its request id (in append_seqno order), but
//       it waits for the exec result before turn_ended, then ends the stream.
//   A prompt containing the word "leak" gets --leak-text (default: AWS's example key id) in the
//   reply, cut into --leak-pieces text deltas (default 3) at character offsets, the way a model
//   streams tokens: the secret arrives split across messages. --delay-ms (default 20) paces the
//   deltas. --require-auth makes every RPC without
//   `authorization: Bearer ...` fail with unauthenticated.
//
//   node standin.mjs --host 127.0.0.77[,127.0.0.78...] --port 443 --cert c.pem --key k.pem
//                    [--log requests.jsonl] [--descriptors build/cursor.desc] [--delay-ms 20]
//                    [--require-auth] [--leak-text TEXT] [--leak-pieces N]
//
// Without the npm packages (make standin) or the descriptor set, and without an explicit
// --descriptors, it serves only the plain HTTP routes and says so on stderr.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import zlib from 'node:zlib';

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' }, // a comma-separated list listens on each
    port: { type: 'string', default: '443' },
    cert: { type: 'string' },
    key: { type: 'string' },
    log: { type: 'string' },
    descriptors: { type: 'string' },
    'delay-ms': { type: 'string', default: '20' },
    'require-auth': { type: 'boolean', default: false },
    'leak-text': { type: 'string', default: 'AKIAIOSFODNN7EXAMPLE' },
    'leak-pieces': { type: 'string', default: '3' },
  },
});
if (!opts.cert || !opts.key) {
  console.error('standin: --cert and --key are required');
  process.exit(2);
}
const DELAY_MS = Number(opts['delay-ms']);

// ---------------------------------------------------------------------------------------------
// The log: one JSON object per line, written synchronously so a test that has its answer can
// read the line at once.

const logFd = opts.log ? fs.openSync(opts.log, 'a') : null;
let logSeq = 0;

function log(ctx, event, fields) {
  const line = JSON.stringify({
    seq: ++logSeq,
    time: new Date().toISOString(),
    t_ms: Math.round(performance.now() * 1000) / 1000,
    event,
    ...(ctx ? ctx.common : {}),
    ...fields,
  }) + '\n';
  if (logFd !== null) fs.writeSync(logFd, line);
  else process.stdout.write(line);
}

// ---------------------------------------------------------------------------------------------
// RPC machinery: npm packages and the descriptor set, both optional unless --descriptors is given.

const rpc = await loadRpc().catch((err) => {
  if (opts.descriptors) {
    console.error(`standin: ${err.message}`);
    process.exit(2);
  }
  console.error(`standin: RPCs disabled (${err.message}); serving only the plain HTTP routes`);
  return null;
});

async function loadRpc() {
  const descPath = opts.descriptors ?? new URL('../../build/cursor.desc', import.meta.url).pathname;
  let pb, wkt, connect, connectNode;
  try {
    pb = await import('@bufbuild/protobuf');
    wkt = await import('@bufbuild/protobuf/wkt');
    connect = await import('@connectrpc/connect');
    connectNode = await import('@connectrpc/connect-node');
  } catch (err) {
    throw new Error(`npm packages missing, run \`make standin\`: ${err.message}`);
  }
  let bytes;
  try {
    bytes = fs.readFileSync(descPath);
  } catch (err) {
    throw new Error(`cannot read the descriptor set ${descPath}: ${err.message}`);
  }
  const registry = pb.createFileRegistry(pb.fromBinary(wkt.FileDescriptorSetSchema, bytes));
  const need = (kind, name) => {
    const d = kind === 'service' ? registry.getService(name) : registry.getMessage(name);
    if (!d) throw new Error(`${descPath} has no ${kind} ${name}`);
    return d;
  };
  return {
    pb, connect, connectNode, registry, need, descPath,
    services: {
      chat: need('service', 'aiserver.v1.ChatService'),
      ai: need('service', 'aiserver.v1.AiService'),
      bidi: need('service', 'aiserver.v1.BidiService'),
      repository: need('service', 'aiserver.v1.RepositoryService'),
      agent: need('service', 'agent.v1.AgentService'),
    },
    AgentClientMessage: need('message', 'agent.v1.AgentClientMessage'),
  };
}

// "/pkg.Service/Method" -> the method's descriptor, or undefined.
function methodForPath(path) {
  if (!rpc) return undefined;
  const m = /^\/([A-Za-z0-9_.]+)\/([A-Za-z0-9_]+)$/.exec(path.split('?', 1)[0]);
  if (!m) return undefined;
  return rpc.registry.getService(m[1])?.methods.find((x) => x.name === m[2]);
}

// Decodes one message for the log: {type, json} or {type, decode_error}.
function decodeForLog(schema, bytes, codec) {
  if (!rpc || !schema) return { type: null, json: null };
  const { pb, registry } = rpc;
  try {
    const msg = codec === 'json'
      ? pb.fromJsonString(schema, Buffer.from(bytes).toString('utf8'), { registry })
      : pb.fromBinary(schema, bytes);
    const out = { type: schema.typeName, json: pb.toJson(schema, msg, { registry }) };
    if (schema.typeName === 'aiserver.v1.BidiAppendRequest') out.inner = decodeBidiAppendData(msg);
    return out;
  } catch (err) {
    return { type: schema.typeName, json: null, decode_error: err.message };
  }
}

// BidiAppend carries an AgentClientMessage as hex text (`data`) or as bytes (`data_binary`).
function bidiAppendPayload(msg) {
  if (msg.data !== '') {
    if (!/^([0-9a-fA-F]{2})*$/.test(msg.data)) throw new Error('BidiAppend data is not hex');
    return { source: 'data', bytes: Buffer.from(msg.data, 'hex') };
  }
  return { source: 'data_binary', bytes: Buffer.from(msg.dataBinary) };
}

function decodeBidiAppendData(msg) {
  try {
    const { source, bytes } = bidiAppendPayload(msg);
    const inner = decodeForLog(rpc.AgentClientMessage, bytes, 'proto');
    return { source, raw_base64: bytes.toString('base64'), size: bytes.length, ...inner };
  } catch (err) {
    return { decode_error: err.message };
  }
}

// ---------------------------------------------------------------------------------------------
// Wire taps: what the client sent and what we answered, message by message, before and after
// connect-es saw it.

function decompress(encoding, data) {
  switch ((encoding ?? 'identity').toLowerCase()) {
    case 'identity': return Buffer.from(data);
    case 'gzip': return zlib.gunzipSync(data);
    case 'br': return zlib.brotliDecompressSync(data);
    case 'deflate': return zlib.inflateSync(data);
    default: throw new Error(`unknown encoding ${encoding}`);
  }
}

// Splits a byte stream into Connect / gRPC envelopes (flag byte, 4-byte big-endian length,
// payload); a header may be split across chunks.
class EnvelopeReader {
  constructor(onEnvelope) {
    this.buf = Buffer.alloc(0);
    this.onEnvelope = onEnvelope;
  }

  push(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : Buffer.from(chunk);
    while (this.buf.length >= 5) {
      const len = this.buf.readUInt32BE(1);
      if (this.buf.length < 5 + len) break;
      const flags = this.buf[0];
      const payload = this.buf.subarray(5, 5 + len);
      this.buf = this.buf.subarray(5 + len);
      this.onEnvelope(flags, payload);
    }
  }
}

// How a body is framed, from its content type: 'connect' (streaming), 'grpc', 'grpc-web', or
// 'whole' (unary Connect, REST, anything else).
function framingOf(contentType) {
  const ct = (contentType ?? '').toLowerCase();
  if (ct.startsWith('application/connect+')) return 'connect';
  if (ct.startsWith('application/grpc-web')) return 'grpc-web';
  if (ct.startsWith('application/grpc')) return 'grpc';
  return 'whole';
}

function codecOf(contentType) {
  const ct = (contentType ?? '').toLowerCase();
  if (/json/.test(ct)) return 'json';
  if (/proto|grpc/.test(ct)) return 'proto';
  return 'raw';
}

// Logs one message; `payload` is the message exactly as received / sent, after decompression.
function logMessage(ctx, direction, index, schema, codec, payload, extra) {
  let decoded;
  if (codec === 'proto' || (codec === 'json' && schema)) decoded = decodeForLog(schema, payload, codec);
  else if (codec === 'json') decoded = { type: null, json: parseJsonOrNull(payload) };
  else decoded = { type: null, json: null };
  log(ctx, 'message', {
    direction, index, codec, ...extra, size: payload.length, raw_base64: Buffer.from(payload).toString('base64'),
    ...decoded,
  });
}

function parseJsonOrNull(bytes) {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return null;
  }
}

// A tap on one direction of one request: feeds body chunks, logs each message as it completes.
function makeTap(ctx, direction, { contentType, headers, schema, status, rpc: isRpc = false }) {
  const framing = framingOf(contentType);
  const codec = codecOf(contentType);
  let index = 0;
  let wireBytes = 0;
  // `final`: the last message has been seen (the body reached its content-length, or an
  // end-of-stream / trailers frame): the caller may log the end before the bytes go out.
  if (framing === 'whole') {
    const chunks = [];
    const expected = headers['content-length'] !== undefined ? Number(headers['content-length']) : undefined;
    let summary = null;
    const finish = () => {
      if (summary) return summary;
      const body = Buffer.concat(chunks);
      if (body.length === 0 && direction === 'received' && !isRpc) return (summary = { messages: 0, wire_bytes: 0 });
      summary = { messages: 1, wire_bytes: wireBytes };
      const encoding = headers['content-encoding'] ?? 'identity';
      let payload;
      try {
        payload = decompress(encoding, body);
      } catch (err) {
        log(ctx, 'message', { direction, index: 0, wire_size: body.length, encoding, error: err.message,
          raw_base64: body.toString('base64') });
        return summary;
      }
      // A unary Connect error (non-200) is JSON whatever the request codec was.
      const isError = status !== undefined && status !== 200;
      logMessage(ctx, direction, 0, isError ? null : schema, isError ? 'json' : codec, payload, {
        wire_size: body.length, encoding, compressed: encoding !== 'identity', ...(isError ? { error: true } : {}),
      });
      return summary;
    };
    const tap = {
      final: false,
      push(chunk) {
        wireBytes += chunk.length;
        chunks.push(Buffer.from(chunk));
        if (expected !== undefined && wireBytes >= expected) {
          finish();
          tap.final = true;
        }
      },
      end: finish,
    };
    return tap;
  }
  const encoding = (framing === 'connect' ? headers['connect-content-encoding'] : headers['grpc-encoding']) ?? 'identity';
  let final = false;
  const reader = new EnvelopeReader((flags, wire) => {
    const compressed = (flags & 0x01) !== 0;
    let payload;
    try {
      payload = compressed ? decompress(encoding, wire) : Buffer.from(wire);
    } catch (err) {
      log(ctx, 'message', { direction, index, flags, wire_size: wire.length, encoding, error: err.message,
        raw_base64: Buffer.from(wire).toString('base64') });
      index++;
      return;
    }
    const extra = { flags, compressed, encoding: compressed ? encoding : 'identity', wire_size: wire.length };
    if (framing === 'connect' && (flags & 0x02)) {
      final = true;
      log(ctx, 'message', { direction, end_stream: true, ...extra, size: payload.length,
        raw_base64: payload.toString('base64'), json: parseJsonOrNull(payload) });
    } else if (framing === 'grpc-web' && (flags & 0x80)) {
      final = true;
      log(ctx, 'message', { direction, trailers_frame: true, ...extra, size: payload.length,
        raw_base64: payload.toString('base64'), text: payload.toString('utf8') });
    } else {
      logMessage(ctx, direction, index++, schema, codec, payload, extra);
    }
  });
  let summary = null;
  return {
    get final() { return final; },
    push(chunk) { wireBytes += chunk.length; reader.push(chunk); },
    end() {
      if (summary) return summary;
      if (reader.buf.length) log(ctx, 'message', { direction, incomplete: true, leftover_bytes: reader.buf.length });
      return (summary = { messages: index, wire_bytes: wireBytes });
    },
  };
}

// Replaces the request's async iterator (what connect-es reads the body with) by one that shows
// every chunk to the tap first.
function tapRequestIterator(req, tap, ctx) {
  const original = req[Symbol.asyncIterator].bind(req);
  let ended = false;
  const finish = () => {
    if (ended) return;
    ended = true;
    log(ctx, 'request_end', tap.end());
  };
  req[Symbol.asyncIterator] = function () {
    const it = original();
    return {
      async next() {
        const r = await it.next();
        if (r.done) finish();
        else tap.push(r.value);
        return r;
      },
      async return(value) {
        return it.return ? it.return(value) : { done: true, value };
      },
      async throw(err) {
        return it.throw ? it.throw(err) : Promise.reject(err);
      },
      [Symbol.asyncIterator]() { return this; },
    };
  };
  return finish;
}

// Wraps writeHead/write/end of the response: logs status and headers, every message sent
// (decompressed) and the end. Streaming Connect responses on HTTP/1.1 are relabelled
// `text/event-stream`, as Cursor labels them.
function tapResponse(res, ctx, schema) {
  let tap = null;
  const origWriteHead = res.writeHead.bind(res);
  const origWrite = res.write.bind(res);
  const origEnd = res.end.bind(res);
  const origAddTrailers = res.addTrailers?.bind(res);
  let trailers;
  res.writeHead = (status, ...args) => {
    let headers = args.find((a) => a && typeof a === 'object') ?? {};
    const lower = {};
    for (const [k, v] of Object.entries(headers)) lower[k.toLowerCase()] = Array.isArray(v) ? v.map(String) : String(v);
    const contentType = lower['content-type'] ?? res.getHeader?.('content-type');
    if (ctx.common.http === '1.1' && framingOf(contentType) === 'connect') {
      delete headers['content-type'];
      delete headers['Content-Type'];
      headers['content-type'] = 'text/event-stream';
      lower['content-type'] = 'text/event-stream';
    }
    log(ctx, 'response', { direction: 'sent', status, headers: lower, wire_content_type: contentType ?? null });
    tap = makeTap(ctx, 'sent', { contentType, headers: lower, schema, status });
    const statusMessage = typeof args[0] === 'string' ? args[0] : undefined;
    return statusMessage !== undefined ? origWriteHead(status, statusMessage, headers) : origWriteHead(status, headers);
  };
  const ensureHead = () => {
    if (!tap) {
      const headers = {};
      for (const [k, v] of Object.entries(res.getHeaders?.() ?? {})) headers[k.toLowerCase()] = Array.isArray(v) ? v.map(String) : String(v);
      log(ctx, 'response', { direction: 'sent', status: res.statusCode, headers });
      tap = makeTap(ctx, 'sent', { contentType: headers['content-type'], headers, schema, status: res.statusCode });
    }
  };
  let endLogged = false;
  const logEnd = () => {
    if (endLogged) return;
    endLogged = true;
    log(ctx, 'response_end', { direction: 'sent', ...tap.end(), ...(trailers ? { trailers } : {}) });
  };
  res.write = (chunk, ...rest) => {
    ensureHead();
    if (chunk !== undefined && chunk !== null && typeof chunk !== 'function') tap.push(Buffer.from(chunk));
    if (tap.final) logEnd();
    return origWrite(chunk, ...rest);
  };
  if (origAddTrailers) {
    res.addTrailers = (t) => {
      trailers = { ...(trailers ?? {}), ...t };
      return origAddTrailers(t);
    };
  }
  res.end = (chunk, ...rest) => {
    ensureHead();
    if (chunk !== undefined && chunk !== null && typeof chunk !== 'function') tap.push(Buffer.from(chunk));
    logEnd();
    return origEnd(chunk, ...rest);
  };
}

// ---------------------------------------------------------------------------------------------
// Behaviour of the services.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The answer to a prompt, split into several deltas.
function replyDeltas(prompt, turn, attached = []) {
  let text = `Stand-in reply ${turn}: you said "${prompt}".`;
  if (attached.length) text += ` Attached: ${attached.join(', ')}.`;
  const words = text.split(' ');
  const n = Math.min(4, words.length);
  const per = Math.ceil(words.length / n);
  const out = [];
  for (let i = 0; i < words.length; i += per) out.push(words.slice(i, i + per).join(' ') + (i + per < words.length ? ' ' : ''));
  if (/\bleak\b/i.test(prompt)) {
    const leak = ` Here is a key: ${opts['leak-text']}`;
    const pieces = Math.max(1, Number(opts['leak-pieces']));
    const size = Math.ceil(leak.length / pieces);
    for (let i = 0; i < leak.length; i += size) out.push(leak.slice(i, i + size));
  }
  return out;
}

// The shell command the agent tells the client to run.
const agentCommand = (prompt) => (prompt.includes('rm -rf /') ? 'rm -rf /' : 'ls -la');
// Chat asks for a command only when the prompt asks for one.
const chatCommand = (prompt) =>
  (prompt.includes('rm -rf /') ? 'rm -rf /' : /\b(run|execute)\b/i.test(prompt) ? 'ls -la' : null);

const TOOL_RUN_TERMINAL_COMMAND_V2 = 15;

async function* streamUnifiedChatWithTools(requests) {
  let n = 0;
  for await (const req of requests) {
    n++;
    if (n === 1) yield { response: { case: 'streamStart', value: {} } };
    const r = req.request;
    if (r.case === 'streamUnifiedChatRequest') {
      const conv = r.value.conversation;
      const prompt = conv.length ? conv[conv.length - 1].text : '';
      const chunks = conv.flatMap((m) => m.attachedCodeChunks.map((c) => c.relativeWorkspacePath));
      yield { response: { case: 'streamUnifiedChatResponse', value: { thinking: { text: `Thinking about message ${n}.` } } } };
      for (const text of replyDeltas(prompt, n, chunks)) {
        yield { response: { case: 'streamUnifiedChatResponse', value: { text } } };
        await sleep(DELAY_MS);
      }
      const command = chatCommand(prompt);
      if (command) {
        yield {
          response: {
            case: 'clientSideToolV2Call',
            value: {
              tool: TOOL_RUN_TERMINAL_COMMAND_V2,
              toolCallId: `toolu_standin_${n}`,
              name: 'run_terminal_cmd',
              rawArgs: JSON.stringify({ command, is_background: false }),
            },
          },
        };
      }
    } else if (r.case === 'clientSideToolV2Result') {
      const out = r.value.runTerminalCommandV2Result?.output ?? '';
      yield { response: { case: 'streamUnifiedChatResponse', value: { text: `Stand-in got the tool result (${out.length} bytes of output).` } } };
    } else {
      yield { response: { case: 'streamUnifiedChatResponse', value: { text: 'Stand-in got an empty request.' } } };
    }
  }
}

const textDelta = (text) => ({ message: { case: 'interactionUpdate', value: { message: { case: 'textDelta', value: { text } } } } });
const interaction = (kase, value) => ({ message: { case: 'interactionUpdate', value: { message: { case: kase, value } } } });

// The agent: for each run_request, a thinking update, text deltas, an exec_server_message with a
// shell command, then turn_ended. With waitForExec (RunSSE), it waits for the exec result after
// the command and ends the stream after turn_ended.
async function* agentConversation(messages, { waitForExec }) {
  const it = messages[Symbol.asyncIterator]();
  let turn = 0;
  let execId = 0;
  const execResultText = (e) => {
    const r = e.message.case === 'shellResult' ? e.message.value.result : undefined;
    const v = r?.value;
    return `Stand-in got exec ${e.id} result: ${r?.case ?? 'unknown'}, exit ${v?.exitCode ?? '?'}, ` +
      `${(v?.stdout ?? '').length} bytes of stdout.`;
  };
  for (;;) {
    const next = await it.next();
    if (next.done) return;
    const m = next.value.message;
    if (m.case === 'runRequest') {
      turn++;
      const action = m.value.action?.action;
      const um = action?.case === 'userMessageAction' ? action.value.userMessage : undefined;
      const prompt = um?.text ?? '';
      const files = (um?.selectedContext?.files ?? []).map((f) => f.path);
      yield interaction('thinking', { text: `Thinking about turn ${turn}.` });
      for (const text of replyDeltas(prompt, turn, files)) {
        yield textDelta(text);
        await sleep(DELAY_MS);
      }
      execId++;
      yield {
        message: {
          case: 'execServerMessage',
          value: {
            id: execId,
            execId: `exec-standin-${execId}`,
            message: {
              case: 'shellArgs',
              value: { command: agentCommand(prompt), workingDirectory: '/workspace', timeout: 30000, toolCallId: `toolu_standin_${execId}` },
            },
          },
        },
      };
      if (waitForExec) {
        for (;;) {
          const r = await it.next();
          if (r.done) return;
          const cm = r.value.message;
          if (cm.case === 'execClientMessage' && cm.value.id === execId) {
            yield textDelta(execResultText(cm.value));
            break;
          }
          if (cm.case === 'clientHeartbeat') yield interaction('heartbeat', {});
        }
      }
      yield interaction('turnEnded', { inputTokens: BigInt(prompt.length), outputTokens: 42n });
      if (waitForExec) return;
    } else if (m.case === 'execClientMessage') {
      yield textDelta(execResultText(m.value));
    } else if (m.case === 'clientHeartbeat') {
      yield interaction('heartbeat', {});
    }
    // kv_client_message and unknown messages: nothing to say.
  }
}

// RunSSE + BidiAppend: the client messages of one request id, delivered in append_seqno order.
class BidiSession {
  constructor(id) {
    this.id = id;
    this.nextSeqno = 0n;
    this.pending = new Map();
    this.queue = [];
    this.wake = null;
    this.created = Date.now();
  }

  append(seqno, msg) {
    if (seqno < this.nextSeqno || this.pending.has(seqno)) return false;
    this.pending.set(seqno, msg);
    while (this.pending.has(this.nextSeqno)) {
      this.queue.push(this.pending.get(this.nextSeqno));
      this.pending.delete(this.nextSeqno);
      this.nextSeqno++;
    }
    this.wake?.();
    return true;
  }

  async *messages(signal) {
    for (;;) {
      while (this.queue.length) yield this.queue.shift();
      if (signal.aborted) return;
      await new Promise((resolve) => {
        const onAbort = () => resolve();
        signal.addEventListener('abort', onAbort, { once: true });
        this.wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
      });
      this.wake = null;
    }
  }
}

const sessions = new Map();
function session(id) {
  let s = sessions.get(id);
  if (!s) {
    s = new BidiSession(id);
    sessions.set(id, s);
  }
  // Forget sessions nobody finished within ten minutes.
  for (const [k, v] of sessions) if (Date.now() - v.created > 600_000) sessions.delete(k);
  return s;
}

function implement(service, impl) {
  const out = {};
  for (const m of service.methods) {
    if (!impl[m.name]) throw new Error(`no implementation for ${service.typeName}/${m.name}`);
    out[m.localName] = impl[m.name];
  }
  return out;
}

function routes(router) {
  const { ConnectError, Code } = rpc.connect;
  const s = rpc.services;
  router.service(s.chat, implement(s.chat, { StreamUnifiedChatWithTools: streamUnifiedChatWithTools }));
  router.service(s.ai, implement(s.ai, {
    AvailableModels: () => ({
      modelNames: ['claude-4-sonnet', 'gpt-5', 'cursor-small'],
      models: [{ name: 'claude-4-sonnet', defaultOn: true }, { name: 'gpt-5', defaultOn: true }, { name: 'cursor-small' }],
    }),
    StreamCpp: async function* (req) {
      const path = req.currentFile?.relativeWorkspacePath ?? '';
      for (const text of [`// completion for ${path}`, '\n', 'return 42;']) {
        yield { text };
        await sleep(DELAY_MS);
      }
      yield { doneStream: true };
    },
    CppConfig: () => ({ isOn: true }),
  }));
  router.service(s.repository, implement(s.repository, { FastUpdateFileV2: () => ({ ok: true }) }));
  router.service(s.bidi, implement(s.bidi, {
    BidiAppend: (req) => {
      const id = req.requestId?.requestId ?? '';
      if (!id) throw new ConnectError('request_id is required', Code.InvalidArgument);
      let msg;
      try {
        msg = rpc.pb.fromBinary(rpc.AgentClientMessage, bidiAppendPayload(req).bytes);
      } catch (err) {
        throw new ConnectError(`data is not an AgentClientMessage: ${err.message}`, Code.InvalidArgument);
      }
      session(id).append(req.appendSeqno, msg);
      return {};
    },
  }));
  router.service(s.agent, implement(s.agent, {
    Run: (requests) => agentConversation(requests, { waitForExec: false }),
    RunSSE: async function* (req, ctx) {
      const id = req.requestId;
      if (!id) throw new ConnectError('request_id is required', Code.InvalidArgument);
      try {
        yield* agentConversation(session(id).messages(ctx.signal), { waitForExec: true });
      } finally {
        sessions.delete(id);
      }
    },
    GetUsableModels: () => ({ modelIds: ['claude-4-sonnet', 'gpt-5', 'cursor-small'] }),
  }));
}

// --require-auth: every RPC needs `authorization: Bearer ...` (any token), as Cursor's do.
const authInterceptor = (next) => async (req) => {
  if (opts['require-auth'] && !/^Bearer \S+/.test(req.header.get('authorization') ?? '')) {
    throw new rpc.connect.ConnectError('missing bearer token', rpc.connect.Code.Unauthenticated);
  }
  return next(req);
};

// ---------------------------------------------------------------------------------------------
// Plain HTTP routes: GET /, the API key exchange, the Cloud Agents REST API.

const sha256hex = (s) => crypto.createHash('sha256').update(s).digest('hex');
const b64url = (s) => Buffer.from(s).toString('base64url');
const JWT_SECRET = 'cordon-standin-not-a-secret';

function jwt(claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', JWT_SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function issueTokens(apiKey) {
  const now = Math.floor(Date.now() / 1000);
  const sub = `standin|user_${sha256hex(apiKey).slice(0, 16)}`;
  const common = { sub, iss: 'https://authentication.cursor.sh', aud: 'https://cursor.com', iat: now, jti: crypto.randomUUID() };
  return {
    accessToken: jwt({ ...common, exp: now + 3600, scope: 'openid profile email offline_access', type: 'session' }),
    refreshToken: jwt({ ...common, exp: now + 60 * 86400, type: 'refresh' }),
  };
}

// The Cloud Agents API key: `Authorization: Bearer <key>` or Basic with the key as user name and
// an empty password. Anything else: null.
function restApiKey(req) {
  const h = req.headers.authorization ?? '';
  let m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  if (m) return m[1];
  m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(h);
  if (!m) return null;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0 || decoded.slice(colon + 1) !== '') return null;
  return decoded.slice(0, colon);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj, extraHeaders = {}) {
  const body = Buffer.from(JSON.stringify(obj));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length, ...extraHeaders });
  res.end(body);
}

let agentCounter = 0;

async function plainRoute(req, res, ctx) {
  const body = await readBody(req);
  const tap = makeTap(ctx, 'received', { contentType: req.headers['content-type'], headers: req.headers });
  tap.push(body);
  log(ctx, 'request_end', tap.end());
  const path = req.url.split('?', 1)[0];
  const json = parseJsonOrNull(body);

  if (req.method === 'GET' && (path === '/' || path === '/healthz')) {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`hello from the api2.cursor.sh stand-in (HTTP/${req.httpVersion}, ` +
            `you are ${req.socket.remoteAddress}:${req.socket.remotePort})\n`);
    return;
  }
  if (path === '/auth/exchange_user_api_key') {
    if (req.method !== 'POST') return sendJson(res, 405, { error: { code: 'method_not_allowed', message: 'POST only' } });
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
    const apiKey = bearer ?? (typeof json?.apiKey === 'string' ? json.apiKey : undefined);
    if (!apiKey || !apiKey.startsWith('crsr_')) {
      return sendJson(res, 401, { error: { code: 'unauthenticated', message: 'a valid Cursor API key (crsr_...) is required' } });
    }
    return sendJson(res, 200, issueTokens(apiKey));
  }
  const rest = /^\/v[01]\/(agents|me|models)$/.exec(path);
  if (rest) {
    const apiKey = restApiKey(req);
    if (!apiKey) {
      return sendJson(res, 401, { error: 'Unauthorized', message: 'use Bearer <key> or Basic auth with the key as user name' },
        { 'www-authenticate': 'Basic realm="Cursor API"' });
    }
    const keyFingerprint = sha256hex(apiKey).slice(0, 16);
    if (rest[1] === 'me' && req.method === 'GET') {
      return sendJson(res, 200, { apiKeyName: 'stand-in key', createdAt: '2026-01-01T00:00:00.000Z', userEmail: 'ci@example.com', keyFingerprint });
    }
    if (rest[1] === 'models' && req.method === 'GET') return sendJson(res, 200, { models: ['claude-4-sonnet', 'gpt-5'] });
    if (rest[1] === 'agents' && req.method === 'POST') {
      if (!json || typeof json !== 'object') return sendJson(res, 400, { error: 'Bad Request', message: 'JSON body required' });
      const id = `bc_standin_${++agentCounter}`;
      return sendJson(res, 200, {
        id,
        name: String(json.prompt?.text ?? '').slice(0, 40),
        status: 'CREATING',
        source: json.source ?? null,
        target: { branchName: `cursor/standin-${agentCounter}`, url: `https://cursor.com/agents?id=${id}`, autoCreatePr: false },
        createdAt: new Date().toISOString(),
        keyFingerprint,
      });
    }
    return sendJson(res, 405, { error: 'Method Not Allowed' });
  }
  sendJson(res, 404, { error: { code: 'not_found', message: `no route for ${req.url}` } });
}

// ---------------------------------------------------------------------------------------------
// The server.

let requestCounter = 0;
const adapter = rpc
  ? rpc.connectNode.connectNodeAdapter({
    routes,
    interceptors: [authInterceptor],
    compressMinBytes: 0, // every message gzip-compressed when the client accepts gzip, as Cursor does
    fallback: (req, res) => sendJson(res, 404, { error: { code: 'not_found', message: `no route for ${req.url}` } }),
  })
  : null;

function handle(req, res) {
  const h2 = req.httpVersionMajor === 2;
  const sock = req.socket;
  let sni = null;
  try {
    sni = sock.servername || null;
  } catch { /* not a TLS socket */ }
  const path = req.url ?? '';
  const method = methodForPath(path);
  const ctx = {
    common: {
      id: ++requestCounter,
      http: req.httpVersion,
      authority: req.headers[':authority'] ?? req.headers.host ?? null,
      host: (req.headers[':authority'] ?? req.headers.host ?? '').replace(/:\d+$/, '') || null,
      method: req.method,
      path,
      peer: `${sock.remoteAddress}:${sock.remotePort}`,
    },
  };
  log(ctx, 'request', {
    direction: 'received',
    local: `${sock.localAddress}:${sock.localPort}`,
    sni,
    ...(h2 ? { stream: req.stream?.id } : {}),
    rpc: method ? `${method.parent.typeName}/${method.name}` : null,
    method_kind: method?.methodKind ?? null,
    headers: { ...req.headers },
  });
  const onClose = () => {
    if (!res.writableEnded) log(ctx, 'aborted', { direction: 'received' });
  };
  res.once('close', onClose);
  tapResponse(res, ctx, method?.output);
  if (method && adapter) {
    const tap = makeTap(ctx, 'received', { contentType: req.headers['content-type'], headers: req.headers, schema: method.input, rpc: true });
    tapRequestIterator(req, tap, ctx);
    adapter(req, res);
    return;
  }
  plainRoute(req, res, ctx).catch((err) => {
    console.error(`standin: ${req.method} ${path}: ${err.stack ?? err}`);
    if (!res.headersSent) sendJson(res, 500, { error: { code: 'internal', message: err.message } });
    else res.destroy();
  });
}

const tlsOptions = { cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key), allowHTTP1: true };
const servers = [];
for (const host of opts.host.split(',').map((h) => h.trim()).filter(Boolean)) {
  const server = http2.createSecureServer(tlsOptions, handle);
  server.on('secureConnection', (socket) => socket.setNoDelay(true));
  server.on('tlsClientError', (err) => console.error(`standin: TLS error: ${err.message}`));
  server.on('sessionError', (err) => console.error(`standin: HTTP/2 session error: ${err.message}`));
  server.listen(Number(opts.port), host, () => {
    console.log(`standin: listening on ${host}:${opts.port}` +
      (rpc ? ` (RPCs from ${rpc.descPath})` : ' (plain HTTP routes only)'));
  });
  servers.push(server);
}

function shutdown() {
  let open = servers.length;
  for (const s of servers) s.close(() => { if (--open === 0) process.exit(0); });
  // Clients holding HTTP/2 sessions open would keep close() waiting.
  setTimeout(() => process.exit(0), 2000).unref();
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, shutdown);
