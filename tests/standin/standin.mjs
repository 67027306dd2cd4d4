// A local stand-in for Cursor's back end (api2.cursor.sh and friends), for the demo, the tests
// and the benchmarks. HTTPS with HTTP/2 and HTTP/1.1 on one port; logs every request as one
// JSON line, including the peer address it was talking to.
//
//   node standin.mjs --host 127.0.0.77 --port 443 --cert c.pem --key k.pem [--log requests.jsonl]
import fs from 'node:fs';
import http2 from 'node:http2';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '443' },
    cert: { type: 'string' },
    key: { type: 'string' },
    log: { type: 'string' },
  },
});
if (!opts.cert || !opts.key) {
  console.error('standin: --cert and --key are required');
  process.exit(2);
}

const logStream = opts.log ? fs.createWriteStream(opts.log, { flags: 'a' }) : process.stdout;

function record(req, status) {
  logStream.write(JSON.stringify({
    time: new Date().toISOString(),
    method: req.method,
    path: req.url,
    http: req.httpVersion,
    authority: req.headers[':authority'] ?? req.headers.host,
    peer: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
    status,
  }) + '\n');
}

const server = http2.createSecureServer(
  { cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key), allowHTTP1: true },
  (req, res) => {
    if (req.url === '/' || req.url === '/healthz') {
      record(req, 200);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`hello from the api2.cursor.sh stand-in (HTTP/${req.httpVersion}, ` +
              `you are ${req.socket.remoteAddress}:${req.socket.remotePort})\n`);
      return;
    }
    record(req, 404);
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'not_found', message: `no route for ${req.url}` } }));
  });

server.on('tlsClientError', (err) => console.error(`standin: TLS error: ${err.message}`));
server.listen(Number(opts.port), opts.host, () => {
  console.log(`standin: listening on ${opts.host}:${opts.port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
