// A real Connect client for Cursor's API (connect-es, Node's http2 / https), for the tests, the
// benchmarks and the demo. It knows nothing about cordon: it trusts whatever the process trusts
// (NODE_EXTRA_CA_CERTS; there is no CA option on purpose), resolves names the usual way, and
// talks HTTP/2 or HTTP/1.1 as told.
//
//   node client.mjs [--base-url https://api2.cursor.sh] [--http 2|1.1] [--descriptors FILE]
//                   [--protocol connect|grpc|grpc-web] [--token JWT] [--header 'name: value']...
//                   [--no-gzip] [--timeout-ms 30000]
//                   SUBCOMMAND [options]
//
// Subcommands (RPC message types come from the descriptor set, default build/cursor.desc):
//   unary --method pkg.Service/Method [--body JSON] [--codec proto|json]
//   models [--codec proto|json]          unary aiserver.v1.AiService/AvailableModels
//   server-stream [--method pkg.Service/Method] [--body JSON]   (default aiserver.v1.AiService/StreamCpp)
//   chat --prompt TEXT [--prompt TEXT]... [--count N] [--pause-ms MS] [--file PATH=CONTENT]...
//        bidi aiserver.v1.ChatService/StreamUnifiedChatWithTools: N messages (prompts in turn),
//        MS apart; tool calls are answered at once; the request stream closes --pause-ms after the
//        last message
//   run --prompt TEXT [--prompt TEXT]... [--file PATH=CONTENT]... [--exec-stdout S] [--exit-code N]
//       [--heartbeat]
//        bidi agent.v1.AgentService/Run: one run_request per prompt, each after the previous
//        turn_ended; every exec_server_message is answered with a shell_result; the request stream
//        closes after the last turn_ended
//   run-sse --prompt TEXT [--file PATH=CONTENT]... [--exec-stdout S] [--exit-code N] [--binary]
//        agent.v1.AgentService/RunSSE (server streaming) paired with unary
//        aiserver.v1.BidiService/BidiAppend (hex `data`, or `data_binary` with --binary), as
//        Cursor's HTTP/1.1 fallback does; accepts the text/event-stream label Cursor gives it
//   append --request-id ID --seqno N --message JSON [--binary]   one BidiAppend of an AgentClientMessage
//   auth --key crsr_... [--in-body]       POST /auth/exchange_user_api_key (Bearer, or {"apiKey"} body)
//   rest --path /v0/me [--http-method GET] [--bearer KEY | --basic KEY | --basic-raw USER:PASS]
//        [--body JSON]                    any plain HTTP request (REST, GET /)
//
// Output: one JSON object per line on stdout, each with "event" and "t_ms" (performance.now(),
// monotonic, milliseconds since this process started):
//   {"event":"sent","index":i,"type":"...","json":{...},"raw_base64":"..."}  a message sent (raw =
//        its protobuf encoding, the exact bytes connect-es put in the envelope before compression)
//   {"event":"headers","headers":{...},"wire_content_type":"..."}   response headers
//   {"event":"recv","index":i,"type":"...","json":{...}}    a message received
//   {"event":"closed_send"}                                 the request stream was closed
//   {"event":"end","trailers":{...}}                        the response stream ended
//   {"event":"response","status":200,"headers":{...},"json":...,"body":"..."}   unary / plain HTTP
//   {"event":"append","seqno":n,...}                        a BidiAppend call and its answer
//   {"event":"error","code":"...","message":"..."}          an RPC or transport error (exit 1)
//   {"event":"done","ok":true,...}                          last line on success (exit 0)
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { create, createFileRegistry, fromBinary, fromJson, toBinary, toJson, toJsonString } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { ConnectError, createClient } from '@connectrpc/connect';
import { validateReadWriteMaxBytes } from '@connectrpc/connect/protocol';
import { createTransport as createConnectProtocolTransport } from '@connectrpc/connect/protocol-connect';
import { createTransport as createGrpcProtocolTransport } from '@connectrpc/connect/protocol-grpc';
import { createTransport as createGrpcWebProtocolTransport } from '@connectrpc/connect/protocol-grpc-web';
import { compressionGzip, createNodeHttpClient, Http2SessionManager } from '@connectrpc/connect-node';

const { values: o, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'base-url': { type: 'string', default: 'https://api2.cursor.sh' },
    http: { type: 'string', default: '2' },
    protocol: { type: 'string', default: 'connect' },
    descriptors: { type: 'string' },
    token: { type: 'string' },
    header: { type: 'string', multiple: true, default: [] },
    'no-gzip': { type: 'boolean', default: false },
    'timeout-ms': { type: 'string', default: '30000' },
    // subcommand options
    method: { type: 'string' },
    body: { type: 'string' },
    codec: { type: 'string', default: 'proto' },
    prompt: { type: 'string', multiple: true, default: [] },
    count: { type: 'string' },
    'pause-ms': { type: 'string', default: '200' },
    file: { type: 'string', multiple: true, default: [] },
    'exec-stdout': { type: 'string', default: 'total 0\n' },
    'exit-code': { type: 'string', default: '0' },
    heartbeat: { type: 'boolean', default: false },
    binary: { type: 'boolean', default: false },
    'request-id': { type: 'string' },
    seqno: { type: 'string', default: '0' },
    message: { type: 'string' },
    key: { type: 'string' },
    'in-body': { type: 'boolean', default: false },
    path: { type: 'string', default: '/' },
    'http-method': { type: 'string' },
    bearer: { type: 'string' },
    basic: { type: 'string' },
    'basic-raw': { type: 'string' },
  },
});

const now = () => Math.round(performance.now() * 1000) / 1000;
const emit = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, t_ms: now(), ...fields }) + '\n');
function usage(msg) {
  console.error(`client: ${msg}`);
  process.exit(2);
}
if (o.http !== '2' && o.http !== '1.1') usage('--http is 2 or 1.1');
const createTransport = { connect: createConnectProtocolTransport, grpc: createGrpcProtocolTransport,
  'grpc-web': createGrpcWebProtocolTransport }[o.protocol] ?? usage('--protocol is connect, grpc or grpc-web');
const sub = positionals[0];
if (!sub) usage('a subcommand is required (unary, models, server-stream, chat, run, run-sse, append, auth, rest)');

const watchdog = setTimeout(() => {
  emit('error', { code: 'deadline_exceeded', message: `client gave up after ${o['timeout-ms']} ms` });
  process.exit(3);
}, Number(o['timeout-ms']));
watchdog.unref();

// ---------------------------------------------------------------------------------------------
// Types, transports, clients.

let registry;
function types() {
  if (!registry) {
    const file = o.descriptors ?? new URL('../../build/cursor.desc', import.meta.url).pathname;
    registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, fs.readFileSync(file)));
  }
  return registry;
}
const messageType = (name) => types().getMessage(name) ?? usage(`no message type ${name} in the descriptor set`);
function methodOf(path) {
  const [svc, name] = path.split('/');
  const service = types().getService(svc) ?? usage(`no service ${svc} in the descriptor set`);
  const method = service.methods.find((m) => m.name === name) ?? usage(`no method ${path}`);
  return { service, method };
}
const jsonOf = (schema, msg) => toJson(schema, msg, { registry: types() });
const rawOf = (schema, msg) => Buffer.from(toBinary(schema, msg)).toString('base64');
// The JSON codec's bytes, as connect-es writes them.
const rawJsonOf = (schema, msg) => Buffer.from(toJsonString(schema, msg, { registry: types() })).toString('base64');

// Headers a Cursor client sends, plus --token and --header.
const sessionId = crypto.randomUUID();
function extraHeaders() {
  const h = {
    'x-cursor-client-version': 'cordon-test-client/1.0',
    'x-cursor-client-type': 'cli',
    'x-session-id': sessionId,
    'x-request-id': crypto.randomUUID(),
  };
  if (o.token) h.authorization = `Bearer ${o.token}`;
  for (const line of o.header) {
    const i = line.indexOf(':');
    if (i <= 0) usage(`--header wants 'name: value', got ${line}`);
    h[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return h;
}
const headerInterceptor = (next) => (req) => {
  for (const [k, v] of Object.entries(extraHeaders())) req.header.set(k, v);
  return next(req);
};

// The content type each response arrived with, before the text/event-stream relabelling below.
const wireContentTypes = [];

function transport({ json = false } = {}) {
  const gzip = !o['no-gzip'];
  const common = {
    baseUrl: o['base-url'],
    interceptors: [headerInterceptor],
    useBinaryFormat: !json,
    // Like Cursor's clients: gzip every message, accept gzip.
    sendCompression: gzip ? compressionGzip : null,
    acceptCompression: gzip ? [compressionGzip] : [],
  };
  if (o.http === '2') {
    const httpClient = createNodeHttpClient({ httpVersion: '2', sessionProvider: () => h2session() });
    return createTransport({ ...common, ...validateReadWriteMaxBytes(undefined, undefined, 0), httpClient: recording(httpClient) });
  }
  // HTTP/1.1: Cursor's servers label streaming responses `text/event-stream` although they hold
  // Connect envelopes; its clients accept that, and so does this one.
  return createTransport({
    ...common,
    ...validateReadWriteMaxBytes(undefined, undefined, 0),
    httpClient: recording(createNodeHttpClient({ httpVersion: '1.1' })),
  });
}

function recording(inner) {
  return async (req) => {
    const res = await inner(req);
    const ct = res.header.get('content-type');
    wireContentTypes.push(ct);
    if (ct && ct.toLowerCase().startsWith('text/event-stream')) res.header.set('content-type', req.header.get('content-type'));
    return res;
  };
}

// One HTTP/2 connection for the whole run.
let sessionManager;
function h2session() {
  sessionManager ??= new Http2SessionManager(o['base-url']);
  return sessionManager;
}

const headersObject = (h) => Object.fromEntries([...h.entries()]);

function clientFor(path, opts) {
  const { service, method } = methodOf(path);
  const client = createClient(service, transport(opts));
  return { call: client[method.localName].bind(client), method };
}

async function withErrors(fn) {
  try {
    await fn();
  } catch (err) {
    const ce = ConnectError.from(err);
    const code = ce.code !== undefined ? codeName(ce.code) : 'unknown';
    const cause = ce.cause?.code ?? err?.code; // e.g. CERT_HAS_EXPIRED, ERR_TLS_CERT_ALTNAME_INVALID
    emit('error', { code, message: ce.rawMessage ?? String(err), metadata: headersObject(ce.metadata),
      ...(typeof cause === 'string' ? { cause } : {}) });
    process.exit(1);
  }
}

const CODES = ['ok', 'canceled', 'unknown', 'invalid_argument', 'deadline_exceeded', 'not_found', 'already_exists',
  'permission_denied', 'resource_exhausted', 'failed_precondition', 'aborted', 'out_of_range', 'unimplemented',
  'internal', 'unavailable', 'data_loss', 'unauthenticated'];
const codeName = (c) => CODES[c] ?? String(c);

function callOptions() {
  return {
    onHeader: (h) => emit('headers', { headers: headersObject(h), wire_content_type: wireContentTypes.at(-1) ?? null }),
    onTrailer: (t) => { trailers = headersObject(t); },
  };
}
let trailers = {};

function files() {
  return o.file.map((f) => {
    const i = f.indexOf('=');
    if (i <= 0) usage(`--file wants PATH=CONTENT, got ${f}`);
    return { path: f.slice(0, i), content: f.slice(i + 1) };
  });
}

// A push queue: the request side of a bidi stream.
function queue() {
  const items = [];
  let wake = null;
  let closed = false;
  return {
    push(x) { items.push(x); wake?.(); },
    close() { closed = true; wake?.(); },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (items.length) yield items.shift();
        if (closed) return;
        await new Promise((r) => { wake = r; });
        wake = null;
      }
    },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Subcommands.

async function unary(path, bodyJson, codec) {
  const { call, method } = clientFor(path, { json: codec === 'json' });
  const req = fromJson(method.input, bodyJson ?? {}, { registry: types() });
  const raw = codec === 'json' ? rawJsonOf : rawOf;
  emit('sent', { index: 0, type: method.input.typeName, json: jsonOf(method.input, req), raw_base64: raw(method.input, req) });
  let headers;
  const res = await call(req, { onHeader: (h) => { headers = headersObject(h); } });
  emit('response', {
    status: 200, headers, wire_content_type: wireContentTypes.at(-1) ?? null,
    type: method.output.typeName, json: jsonOf(method.output, res),
  });
  return res;
}

async function serverStream(path, bodyJson) {
  const { call, method } = clientFor(path);
  const req = fromJson(method.input, bodyJson ?? {}, { registry: types() });
  emit('sent', { index: 0, type: method.input.typeName, json: jsonOf(method.input, req), raw_base64: rawOf(method.input, req) });
  let n = 0;
  for await (const m of call(req, callOptions())) {
    emit('recv', { index: n++, type: method.output.typeName, json: jsonOf(method.output, m) });
  }
  emit('end', { trailers });
  emit('done', { ok: true, received: n });
}

async function chat() {
  const prompts = o.prompt.length ? o.prompt : ['hello'];
  const count = Number(o.count ?? prompts.length);
  const pause = Number(o['pause-ms']);
  const { call, method } = clientFor('aiserver.v1.ChatService/StreamUnifiedChatWithTools');
  const Req = method.input;
  const conversationId = crypto.randomUUID();
  const fs_ = files();
  const q = queue();
  let sent = 0;
  const send = (init) => {
    const msg = create(Req, init);
    emit('sent', { index: sent++, type: Req.typeName, json: jsonOf(Req, msg), raw_base64: rawOf(Req, msg) });
    q.push(msg);
  };
  let sendingDone = false;
  const sender = (async () => {
    for (let i = 0; i < count; i++) {
      if (i > 0) await sleep(pause);
      send({
        request: {
          case: 'streamUnifiedChatRequest',
          value: {
            conversation: [{
              text: prompts[i % prompts.length],
              type: 1, // MESSAGE_TYPE_HUMAN
              bubbleId: crypto.randomUUID(),
              attachedCodeChunks: fs_.map((f) => ({ relativeWorkspacePath: f.path, startLineNumber: 1, lines: f.content.split('\n') })),
            }],
            modelDetails: { modelName: 'claude-4-sonnet' },
            ...(fs_.length ? { currentFile: { relativeWorkspacePath: fs_[0].path, contents: fs_[0].content } } : {}),
            conversationId,
          },
        },
      });
    }
    await sleep(pause);
    sendingDone = true;
    q.close();
    emit('closed_send');
  })();
  let n = 0;
  for await (const m of call(q, callOptions())) {
    emit('recv', { index: n++, type: method.output.typeName, json: jsonOf(method.output, m) });
    const r = m.response;
    if (r.case === 'clientSideToolV2Call' && !sendingDone) {
      send({
        request: {
          case: 'clientSideToolV2Result',
          value: { tool: r.value.tool, runTerminalCommandV2Result: { output: o['exec-stdout'], exitCode: Number(o['exit-code']) } },
        },
      });
    }
  }
  await sender;
  emit('end', { trailers });
  emit('done', { ok: true, sent, received: n });
}

function runRequest(prompt, fs_, conversationId) {
  return {
    message: {
      case: 'runRequest',
      value: {
        conversationId,
        action: {
          action: {
            case: 'userMessageAction',
            value: { userMessage: { text: prompt, messageId: crypto.randomUUID(), selectedContext: { files: fs_ } } },
          },
        },
      },
    },
  };
}

function shellResult(exec) {
  const exitCode = Number(o['exit-code']);
  return {
    message: {
      case: 'execClientMessage',
      value: {
        id: exec.id,
        execId: exec.execId,
        message: {
          case: 'shellResult',
          value: { result: { case: exitCode === 0 ? 'success' : 'failure', value: { exitCode, stdout: o['exec-stdout'], stderr: '' } } },
        },
      },
    },
  };
}

async function run() {
  const prompts = o.prompt.length ? o.prompt : ['hello'];
  const { call, method } = clientFor('agent.v1.AgentService/Run');
  const Msg = method.input;
  const conversationId = crypto.randomUUID();
  const fs_ = files();
  const q = queue();
  let sent = 0;
  const send = (init) => {
    const msg = create(Msg, init);
    emit('sent', { index: sent++, type: Msg.typeName, json: jsonOf(Msg, msg), raw_base64: rawOf(Msg, msg) });
    q.push(msg);
  };
  if (o.heartbeat) send({ message: { case: 'clientHeartbeat', value: {} } });
  let turn = 0;
  send(runRequest(prompts[turn], fs_, conversationId));
  let n = 0;
  let closed = false;
  for await (const m of call(q, callOptions())) {
    emit('recv', { index: n++, type: method.output.typeName, json: jsonOf(method.output, m) });
    if (closed) continue;
    if (m.message.case === 'execServerMessage') send(shellResult(m.message.value));
    const u = m.message.case === 'interactionUpdate' ? m.message.value.message : undefined;
    if (u?.case === 'turnEnded') {
      turn++;
      if (turn < prompts.length) {
        send(runRequest(prompts[turn], fs_, conversationId));
      } else {
        closed = true;
        q.close();
        emit('closed_send');
      }
    }
  }
  emit('end', { trailers });
  emit('done', { ok: true, sent, received: n, turns: turn });
}

async function runSse() {
  const prompt = o.prompt[0] ?? 'hello';
  const requestId = o['request-id'] ?? crypto.randomUUID();
  const { call: runSSE, method } = clientFor('agent.v1.AgentService/RunSSE');
  const { call: append } = clientFor('aiserver.v1.BidiService/BidiAppend');
  const Msg = messageType('agent.v1.AgentClientMessage');
  const Append = messageType('aiserver.v1.BidiAppendRequest');
  let seqno = 0n;
  const appends = [];
  const doAppend = (init) => {
    const msg = create(Msg, init);
    const bytes = toBinary(Msg, msg);
    const req = create(Append, {
      requestId: { requestId },
      appendSeqno: seqno++,
      ...(o.binary ? { dataBinary: bytes } : { data: Buffer.from(bytes).toString('hex') }),
    });
    const fields = {
      seqno: Number(req.appendSeqno), type: Msg.typeName, json: jsonOf(Msg, msg),
      raw_base64: Buffer.from(bytes).toString('base64'), append_raw_base64: rawOf(Append, req),
    };
    emit('sent', { index: fields.seqno, ...fields });
    appends.push(append(req).then(
      () => emit('append', { seqno: fields.seqno, ok: true }),
      (err) => {
        emit('error', { code: codeName(ConnectError.from(err).code), message: ConnectError.from(err).rawMessage, seqno: fields.seqno });
        process.exit(1);
      }));
  };
  const stream = runSSE(create(method.input, { requestId }), callOptions());
  const it = stream[Symbol.asyncIterator]();
  const first = it.next(); // opens the stream before the first append, as Cursor's client does
  doAppend(runRequest(prompt, files(), crypto.randomUUID()));
  let n = 0;
  for (let r = await first; !r.done; r = await it.next()) {
    const m = r.value;
    emit('recv', { index: n++, type: method.output.typeName, json: jsonOf(method.output, m) });
    if (m.message.case === 'execServerMessage') doAppend(shellResult(m.message.value));
  }
  await Promise.all(appends);
  emit('end', { trailers });
  emit('done', { ok: true, request_id: requestId, appends: Number(seqno), received: n });
}

async function appendOne() {
  if (o['request-id'] === undefined || o.message === undefined) usage('append needs --request-id and --message');
  const Msg = messageType('agent.v1.AgentClientMessage');
  const msg = fromJson(Msg, JSON.parse(o.message), { registry: types() });
  const bytes = toBinary(Msg, msg);
  const body = {
    requestId: { requestId: o['request-id'] },
    appendSeqno: o.seqno,
    ...(o.binary ? { dataBinary: Buffer.from(bytes).toString('base64') } : { data: Buffer.from(bytes).toString('hex') }),
  };
  await unary('aiserver.v1.BidiService/BidiAppend', body, o.codec);
  emit('done', { ok: true, raw_base64: Buffer.from(bytes).toString('base64') });
}

// Plain HTTP (REST, the key exchange, GET /) over HTTP/2 or HTTP/1.1.
function httpRequest(method, path, headers, body) {
  const url = new URL(path, o['base-url']);
  const payload = body === undefined ? undefined : Buffer.from(body);
  const h = { ...headers, ...(payload ? { 'content-length': String(payload.length) } : {}) };
  return new Promise((resolve, reject) => {
    const done = (status, resHeaders, chunks) => resolve({ status, headers: resHeaders, body: Buffer.concat(chunks) });
    if (o.http === '2') {
      const session = http2.connect(url.origin);
      session.on('error', reject);
      const req = session.request({ ':method': method, ':path': url.pathname + url.search, ...h });
      const chunks = [];
      let status;
      let resHeaders;
      req.on('response', (hh) => {
        status = hh[':status'];
        resHeaders = Object.fromEntries(Object.entries(hh).filter(([k]) => !k.startsWith(':')));
      });
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => { session.close(); done(status, resHeaders, chunks); });
      req.on('error', reject);
      req.end(payload);
    } else {
      const req = https.request(url, { method, headers: h, agent: false }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => done(res.statusCode, res.headers, chunks));
      });
      req.on('error', reject);
      req.end(payload);
    }
  });
}

async function plain(method, path, headers, body) {
  const res = await httpRequest(method, path, headers, body);
  const text = res.body.toString('utf8');
  let json = null;
  try {
    json = JSON.parse(text);
  } catch { /* not JSON */ }
  emit('response', { status: res.status, headers: res.headers, json, body: json === null ? text : undefined });
  emit('done', { ok: res.status >= 200 && res.status < 300, status: res.status });
}

async function auth() {
  if (!o.key) usage('auth needs --key');
  const headers = { 'content-type': 'application/json', ...extraHeaders() };
  delete headers.authorization;
  if (!o['in-body']) headers.authorization = `Bearer ${o.key}`;
  await plain('POST', '/auth/exchange_user_api_key', headers, JSON.stringify(o['in-body'] ? { apiKey: o.key } : {}));
}

async function rest() {
  const headers = {};
  if (o.bearer) headers.authorization = `Bearer ${o.bearer}`;
  if (o.basic) headers.authorization = `Basic ${Buffer.from(`${o.basic}:`).toString('base64')}`;
  if (o['basic-raw']) headers.authorization = `Basic ${Buffer.from(o['basic-raw']).toString('base64')}`;
  for (const line of o.header) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  if (o.body !== undefined) headers['content-type'] = 'application/json';
  await plain(o['http-method'] ?? (o.body !== undefined ? 'POST' : 'GET'), o.path, headers, o.body);
}

const parseBody = () => (o.body === undefined ? undefined : JSON.parse(o.body));

await withErrors(async () => {
  switch (sub) {
    case 'unary':
      if (!o.method) usage('unary needs --method pkg.Service/Method');
      await unary(o.method, parseBody(), o.codec);
      emit('done', { ok: true });
      break;
    case 'models':
      await unary('aiserver.v1.AiService/AvailableModels', parseBody(), o.codec);
      emit('done', { ok: true });
      break;
    case 'server-stream':
      await serverStream(o.method ?? 'aiserver.v1.AiService/StreamCpp',
        parseBody() ?? { currentFile: { relativeWorkspacePath: 'src/main.c', contents: 'int main(void) {\n' } });
      break;
    case 'chat': await chat(); break;
    case 'run': await run(); break;
    case 'run-sse': await runSse(); break;
    case 'append': await appendOne(); break;
    case 'auth': await auth(); break;
    case 'rest': await rest(); break;
    default: usage(`unknown subcommand ${sub}`);
  }
});
process.exit(0);
