// The interop suite's Node.js `tls` client: a chain of sequential connections to one address,
// each offering the session the previous one left, each closed as --mode says. It prints one
// line per connection: "N client=yes|no server=yes|no|?", where client is what Node reports
// (isSessionReused) and server what the built-in responder's body says ("?" without one).
//
// Usage: node client.js --connect HOST:PORT [--servername localhost] [--ca FILE] [--tls 1.2|1.3]
//                       [--mode notify|fin|rst|server] [--count 6]
'use strict';

const fs = require('fs');
const net = require('net');
const tls = require('tls');

function fail(message) {
  process.stderr.write(`client.js: ${message}\n`);
  process.exit(1);
}

const opts = { servername: 'localhost', tls: '1.3', mode: 'notify', count: '6', ca: '' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const name = argv[i].replace(/^--/, '');
  if (!(name in opts) && name !== 'connect') fail(`unknown option ${argv[i]}`);
  if (i + 1 >= argv.length) fail(`${argv[i]} needs a value`);
  opts[name] = argv[i + 1];
}
if (!opts.connect) fail('--connect HOST:PORT is required');
const colon = opts.connect.lastIndexOf(':');
const host = opts.connect.slice(0, colon);
const port = Number(opts.connect.slice(colon + 1));
const version = { '1.2': 'TLSv1.2', '1.3': 'TLSv1.3' }[opts.tls];
if (!version) fail(`unknown --tls ${opts.tls}`);
if (!['notify', 'fin', 'rst', 'server'].includes(opts.mode)) fail(`unknown --mode ${opts.mode}`);
const count = Number(opts.count);

// One connection: resolves with what the client saw and the session to offer next.
function one(session) {
  return new Promise((resolve) => {
    const raw = net.connect({ host, port });
    const timer = setTimeout(() => fail('connection timed out'), 10000);
    const sock = tls.connect({
      socket: raw,
      servername: opts.servername,
      minVersion: version,
      maxVersion: version,
      session,
      ca: opts.ca ? fs.readFileSync(opts.ca) : undefined,
      rejectUnauthorized: Boolean(opts.ca),
    });
    let latest = session;
    let resumed = false;
    let data = '';
    let answered = false;
    sock.on('session', (s) => { latest = s; });
    sock.on('error', (e) => fail(`${opts.mode}: ${e.message}`));
    sock.on('secureConnect', () => {
      resumed = sock.isSessionReused();
      const close = opts.mode === 'server' ? 'Connection: close\r\n' : '';
      sock.write(`GET / HTTP/1.1\r\nHost: ${opts.servername}\r\n${close}\r\n`);
    });
    sock.on('data', (chunk) => {
      data += chunk.toString('latin1');
      const end = data.indexOf('\r\n\r\n');
      if (answered || end < 0) return;
      const length = /content-length:\s*(\d+)/i.exec(data.slice(0, end));
      if (!length || data.length < end + 4 + Number(length[1])) return;
      answered = true;
      if (!data.startsWith('HTTP/1.1 200')) fail(`unexpected response: ${data.split('\r\n')[0]}`);
      if (opts.mode === 'notify') sock.end(); // close_notify, then FIN
      else if (opts.mode === 'fin') sock.destroy(); // FIN alone
      else if (opts.mode === 'rst') raw.resetAndDestroy(); // SO_LINGER 0: RST
      // server: the server closes; Node answers its close_notify and closes.
    });
    raw.on('close', () => {
      clearTimeout(timer);
      if (!answered) fail('connection closed before the response');
      let server = '?';
      if (data.includes('resumed: yes')) server = 'yes';
      else if (data.includes('resumed: no')) server = 'no';
      resolve({ resumed, server, session: latest || sock.getSession() });
    });
  });
}

(async () => {
  let session;
  for (let i = 1; i <= count; i++) {
    const r = await one(session);
    session = r.session;
    process.stdout.write(`${i} client=${r.resumed ? 'yes' : 'no'} server=${r.server}\n`);
  }
})();
