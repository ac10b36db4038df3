// Halton Meter: send Node's built-in fetch and https module through HTTPS_PROXY / HTTP_PROXY.
// Written into the home by the daemon and loaded with NODE_OPTIONS=--require
// (see `halton-meter env`). Do not edit: the daemon rewrites it.
//
// Node before 24 (and 22.21) ignores the proxy variables: its fetch (undici)
// connects directly, so LLM SDKs that use fetch (openai, @anthropic-ai/sdk,
// @google/genai) bypass the meter. This preload installs a global dispatcher
// that honours https_proxy/HTTPS_PROXY, http_proxy/HTTP_PROXY and
// no_proxy/NO_PROXY:
//   - fetch: undici's own EnvHttpProxyAgent, when the program has undici
//     installed with the same major version as the fetch built into this Node;
//     otherwise the built-in fetch's own Agent with a connector that opens a
//     CONNECT tunnel through the proxy (TLS to the origin inside it);
//   - https.request on the default agent (axios, got, node-fetch…): a global
//     https.Agent whose sockets come through the same tunnel.
// Where Node itself honours NODE_USE_ENV_PROXY=1 it does nothing.
'use strict';
(function haltonMeterNodeProxy() {
  const env = process.env;
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (env.NODE_USE_ENV_PROXY === '1' && (major >= 24 || (major === 22 && minor >= 21))) return;
  const proxyFor = (protocol) =>
    protocol === 'http:' ? env.http_proxy || env.HTTP_PROXY : env.https_proxy || env.HTTPS_PROXY;
  if (!proxyFor('https:') && !proxyFor('http:')) return;
  const SYMBOL = Symbol.for('undici.globalDispatcher.1');

  const net = require('net');
  const tls = require('tls');

  const noProxy = String(env.no_proxy || env.NO_PROXY || '')
    .split(/[\s,]+/).map((e) => e.trim().toLowerCase()).filter(Boolean);

  function splitEntry(raw) {
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(raw);
    if (bracketed) return [bracketed[1], bracketed[2] || ''];
    const colons = (raw.match(/:/g) || []).length;
    if (colons === 1) { const i = raw.indexOf(':'); return [raw.slice(0, i), raw.slice(i + 1)]; }
    return [raw, ''];
  }

  function bypass(hostname, port) {
    const host = hostname.toLowerCase().replace(/^\[|\]$/g, '');
    for (const raw of noProxy) {
      if (raw === '*') return true;
      const [name, entryPort] = splitEntry(raw);
      if (entryPort && entryPort !== String(port)) continue;
      const entry = name.replace(/^\*?\./, '');
      if (entry && (host === entry || host.endsWith('.' + entry))) return true;
    }
    return false;
  }

  function connector(opts, callback, tlsOptions) {
    const protocol = opts.protocol || 'https:';
    const port = Number(opts.port) || (protocol === 'https:' ? 443 : 80);
    const hostname = opts.hostname;
    const servername = opts.servername || (net.isIP(hostname) ? undefined : hostname);
    const proxy = proxyFor(protocol);
    let done = false;
    const finish = (err, socket) => {
      if (done) return;
      done = true;
      if (err && socket) socket.destroy();
      callback(err, err ? null : socket);
    };
    const overTls = (raw) => {
      const socket = tls.connect({ ALPNProtocols: ['http/1.1'], ...tlsOptions, socket: raw, servername });
      socket.once('secureConnect', () => finish(null, socket));
      socket.once('error', (err) => finish(err, socket));
      return socket;
    };
    if (!proxy || bypass(hostname, port)) {
      const raw = net.connect({ host: hostname, port });
      if (protocol === 'https:') return overTls(raw);
      raw.once('connect', () => finish(null, raw));
      raw.once('error', (err) => finish(err, raw));
      return raw;
    }
    let url;
    try { url = new URL(proxy); } catch (err) { finish(new Error(`bad proxy URL in the environment: ${proxy}`)); return null; }
    const raw = net.connect({ host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port) || 80 });
    const target = `${net.isIPv6(hostname) ? `[${hostname}]` : hostname}:${port}`;
    let head = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n`;
    if (url.username) {
      const creds = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
      head += `Proxy-Authorization: Basic ${Buffer.from(creds).toString('base64')}\r\n`;
    }
    raw.once('error', (err) => finish(err, raw));
    raw.once('connect', () => raw.write(head + '\r\n'));
    let buffered = Buffer.alloc(0);
    const onData = (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buffered.length > 16384) finish(new Error('the proxy sent an oversized CONNECT answer'), raw);
        return;
      }
      raw.removeListener('data', onData);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(buffered.subarray(0, end).toString('latin1'));
      if (!status || status[1] !== '200') {
        finish(new Error(`the proxy ${url.host} refused CONNECT ${target} (${status ? status[1] : 'no status'})`), raw);
        return;
      }
      const rest = buffered.subarray(end + 4);
      if (rest.length) raw.unshift(rest);
      if (protocol === 'https:') overTls(raw);
      else finish(null, raw);
    };
    raw.on('data', onData);
    return raw;
  }

  // Node's https module (axios, got, node-fetch and other https.request users on the
  // default agent): a global agent whose sockets come through the same tunnel.
  const https = require('https');
  class MeterHttpsAgent extends https.Agent {
    createConnection(options, callback) {
      const { host, hostname, port, servername, ...tlsOptions } = options;
      for (const key of ['path', 'socketPath', 'agent', 'timeout', 'lookup', 'family', 'localAddress']) {
        delete tlsOptions[key];
      }
      connector({ protocol: 'https:', hostname: hostname || host, port, servername }, callback, tlsOptions);
    }
  }
  https.globalAgent = new MeterHttpsAgent({ keepAlive: true });

  // fetch (undici): 1. undici's own EnvHttpProxyAgent when installed next to the program
  try {
    const where = { paths: [process.cwd()] };
    const undici = require(require.resolve('undici', where));
    const ours = require(require.resolve('undici/package.json', where));
    const builtin = String(process.versions.undici || '').split('.')[0];
    if (typeof undici.EnvHttpProxyAgent === 'function' && builtin && String(ours.version).split('.')[0] === builtin) {
      undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
      return;  // fetch is routed
    }
  } catch (_) {
    // no usable undici next to the program: use the built-in one below
  }

  // 2. the built-in fetch's own Agent with the tunnelling connector
  if (typeof globalThis.fetch !== 'function') return;
  // The built-in fetch creates its Agent on first use; a data: URL makes it do so now.
  if (globalThis[SYMBOL] === undefined) {
    try { globalThis.fetch('data:,').catch(() => {}); } catch (_) { return; }
  }
  const builtinAgent = globalThis[SYMBOL];
  if (!builtinAgent || typeof builtinAgent.constructor !== 'function') return;
  const Agent = builtinAgent.constructor;

  globalThis[SYMBOL] = new Agent({ connect: (opts, cb) => connector(opts, cb, {}) });
})();
