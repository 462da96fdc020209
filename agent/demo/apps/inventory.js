// inventory: the demo's Node.js variant (stdlib only, no npm packages, no tracing code).
//
// GET /stock/<nonce> resolves the redis name through DNS (dns.resolve4, a real query
// each time), opens a new TCP connection to redis, sends GET stock:<nonce> then
// SET stock:<nonce> <n+1> in RESP, and answers JSON.  One event loop interleaves
// requests: the case where "same thread" says nothing about causality.
'use strict';
const http = require('http');
const net = require('net');
const dns = require('dns');

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const [host, port] = (args.listen || '127.0.0.1:8080').split(':');
const redisName = args.redis || 'redis.demo.zt';
const redisPort = Number(args['redis-port'] || 6379);

function resp(argv) {
  let s = `*${argv.length}\r\n`;
  for (const a of argv) s += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
  return s;
}

// Parse one RESP reply from buf; returns [value, rest] or null when incomplete.
function parseReply(buf) {
  const i = buf.indexOf('\r\n');
  if (i < 0) return null;
  const line = buf.slice(0, i).toString();
  const rest = buf.slice(i + 2);
  const t = line[0];
  if (t === '+' || t === ':') return [line.slice(1), rest];
  if (t === '-') return [new Error(line.slice(1)), rest];
  if (t === '$') {
    const n = Number(line.slice(1));
    if (n < 0) return ['', rest];
    if (rest.length < n + 2) return null;
    return [rest.slice(0, n).toString(), rest.slice(n + 2)];
  }
  return [new Error('unexpected reply ' + line), rest];
}

function redisSession(addr, cmds, done) {
  const sock = net.connect(redisPort, addr);
  let buf = Buffer.alloc(0);
  let i = 0;
  const results = [];
  let finished = false;
  const finish = (err) => { if (!finished) { finished = true; sock.destroy(); done(err, results); } };
  sock.setTimeout(5000, () => finish(new Error('redis timeout')));
  sock.on('error', finish);
  sock.on('connect', () => sock.write(resp(cmds[0](results))));
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    const r = parseReply(buf);
    if (!r) return;
    buf = r[1];
    if (r[0] instanceof Error) return finish(r[0]);
    results.push(r[0]);
    i += 1;
    if (i === cmds.length) return finish(null);
    sock.write(resp(cmds[i](results)));
  });
}

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') { res.end('ok\n'); return; }
  if (!req.url.startsWith('/stock/')) { res.statusCode = 404; res.end(); return; }
  const nonce = req.url.slice('/stock/'.length);
  const key = 'stock:' + nonce;
  const fail = (msg) => { res.statusCode = 502; res.end(msg + '\n'); };
  dns.resolve4(redisName, (err, addrs) => {
    if (err || !addrs.length) return fail('resolve ' + redisName + ': ' + err);
    redisSession(addrs[0], [
      () => ['GET', key],
      (r) => ['SET', key, String((Number(r[0]) || 0) + 1)],
    ], (err2, results) => {
      if (err2) return fail('redis: ' + err2.message);
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ nonce, stock: (Number(results[0]) || 0) + 1 }) + '\n');
    });
  });
});
server.keepAliveTimeout = 5000;
server.listen(Number(port), host, () => console.log(`inventory (node) listening on ${host}:${port}`));
