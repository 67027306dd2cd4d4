// A misbehaving "Cursor" for the fault suite (tests/integration/test_faults.py): one process, one
// listener per fault, each on its own loopback address, speaking just enough Connect over HTTP/2 and
// HTTP/1.1 (Node's own http2 server) to fail at a chosen point of a server-streaming response.
//
//   node fault_upstream.mjs --cert C --key K --log FILE --listen IP:PORT=MODE [--listen ...]
//
// Modes:
//   stream       a well-behaved stream: 3 messages, then the Connect end-of-stream
//   reset        headers and 2 messages, then a TCP RST (mid-stream)
//   stall-mid    headers and 1 message, then silence (the connection stays open)
//   oversize     headers, then an envelope that claims 4 GiB - 16 bytes
//   endless      a message every 50 ms until the client goes away
//   stall-accept TCP: accepts, never says anything (no TLS handshake)
//   garbage      TCP: answers the ClientHello with bytes that are not TLS
//   tls-garbage  TLS (ALPN h2 or http/1.1 as offered), then bytes that are neither HTTP/2 nor HTTP/1.1
//
// Every connection and stream event is one JSON line in the log ({"event", "mode", "t_ms", ...}),
// so a test can tell that the upstream saw the client leave.
import fs from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    log: { type: 'string' },
    listen: { type: 'string', multiple: true, default: [] },
  },
});
const cert = fs.readFileSync(o.cert);
const key = fs.readFileSync(o.key);
const logFd = fs.openSync(o.log, 'a');
const t0 = performance.now();
function log(obj) {
  fs.writeSync(logFd, JSON.stringify({ ...obj, t_ms: Math.round(performance.now() - t0) }) + '\n');
}

// StreamCppResponse { text = 1 }: a valid message for the RPC the client calls, so cordond's
// masking and the client's decoder both accept the good part of each stream.
function envelope(text) {
  const bytes = Buffer.from(text);
  const msg = Buffer.concat([Buffer.from([0x0a, bytes.length]), bytes]);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}
const END = (() => {
  const body = Buffer.from('{}');
  const head = Buffer.alloc(5);
  head[0] = 0x02;
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
})();

function handle(mode, req, res) {
  const conn = req.socket;
  log({ event: 'request', mode, path: req.url, http: req.httpVersion, peer: `${conn.remoteAddress}:${conn.remotePort}` });
  req.on('data', () => {});
  // ended: whether this server ended the response itself (false: the other side went first).
  res.on('close', () => log({ event: 'stream_closed', mode, ended: res.writableEnded }));
  res.writeHead(200, { 'content-type': req.httpVersion === '2.0' ? 'application/connect+proto' : 'text/event-stream' });
  if (res.flushHeaders) res.flushHeaders();
  const send = (i) => res.write(envelope(`message ${i}`));
  switch (mode) {
    case 'stream':
      for (let i = 0; i < 3; i++) send(i);
      res.end(END);
      return;
    case 'reset':
      send(0);
      send(1);
      // Let both messages leave, then an abortive close of the whole connection.
      setTimeout(() => {
        log({ event: 'reset', mode });
        rawSockets.get(`${conn.remoteAddress}:${conn.remotePort}`)?.resetAndDestroy();
      }, 100);
      return;
    case 'stall-mid':
      send(0);
      return; // and nothing more, ever
    case 'oversize': {
      const head = Buffer.from([0, 0xff, 0xff, 0xff, 0xf0]);
      res.write(Buffer.concat([head, Buffer.alloc(1000, 0x41)]));
      return;
    }
    case 'endless': {
      let i = 0;
      const timer = setInterval(() => send(i++), 50);
      res.on('close', () => clearInterval(timer));
      return;
    }
    default:
      res.writeHead(500);
      res.end();
  }
}

// The TCP sockets under the TLS ones, by peer: only those can be closed with an RST.
const rawSockets = new Map();

function trackSockets(server, mode) {
  server.on('connection', (s) => {
    const peer = `${s.remoteAddress}:${s.remotePort}`;
    rawSockets.set(peer, s);
    log({ event: 'connection', mode, peer });
    s.on('close', () => {
      rawSockets.delete(peer);
      log({ event: 'connection_closed', mode, peer });
    });
    s.on('error', () => {});
  });
}

for (const spec of o.listen) {
  const [addr, mode] = spec.split('=');
  const i = addr.lastIndexOf(':');
  const host = addr.slice(0, i);
  const port = Number(addr.slice(i + 1));
  let server;
  if (mode === 'stall-accept') {
    server = net.createServer((s) => {
      s.on('error', () => {});
      s.resume();
    });
  } else if (mode === 'garbage') {
    server = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.write('SSH-2.0-not-tls\r\n' + 'garbage '.repeat(64)));
    });
  } else if (mode === 'tls-garbage') {
    server = tls.createServer({ cert, key, ALPNProtocols: ['h2', 'http/1.1'] }, (s) => {
      s.on('error', () => {});
      log({ event: 'tls', mode, alpn: s.alpnProtocol });
      // Once the job's request (or HTTP/2 preface) is here, the answer is not a SETTINGS frame, not
      // an HTTP status line: a frame header claiming type 0xee on a stream that never existed, with
      // a length far beyond any SETTINGS_MAX_FRAME_SIZE. What comes is read (and dropped), so a
      // close is seen.
      s.once('data', () => s.write(Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xee, 0xff, 0x7f, 0xff, 0xff, 0xff]),
                             Buffer.alloc(4096, 0xa5)])));
    });
  } else {
    server = http2.createSecureServer({ cert, key, allowHTTP1: true }, (req, res) => handle(mode, req, res));
    server.on('sessionError', () => {});
  }
  trackSockets(server, mode);
  server.on('error', (e) => {
    console.error(`${spec}: ${e.message}`);
    process.exit(1);
  });
  server.listen(port, host, () => console.log(`listening ${spec}`));
}
process.on('SIGTERM', () => process.exit(0));
