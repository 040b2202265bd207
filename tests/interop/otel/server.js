// SPDX-License-Identifier: MIT
// A grpc-js peer for mica's tracing test: serves mica.interop.Echo/Unary
// (tests/interop/proto/echo.proto) and answers with the traceparent (and
// tracestate) metadata the call arrived with, as "message", so the test sees
// what mica's traced client sent; it also prints one JSON line per call.
//
//   node server.js -addr 127.0.0.1:0
//
// Prints "listening on <addr>" once bound; exits 0 on SIGTERM or SIGINT.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ECHO_PROTO = path.join(__dirname, '..', 'proto', 'echo.proto');

let addr = '127.0.0.1:0';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const m = /^--?addr(?:=(.*))?$/.exec(argv[i]);
  if (!m) {
    console.error(`unknown argument "${argv[i]}"`);
    process.exit(2);
  }
  addr = m[1] !== undefined ? m[1] : argv[++i];
}

const def = protoLoader.loadSync(ECHO_PROTO, { keepCase: true, defaults: true });
const { Echo } = grpc.loadPackageDefinition(def).mica.interop;

function first(md, key) {
  const v = md.get(key);
  return v.length ? String(v[0]) : '';
}

const server = new grpc.Server();
server.addService(Echo.service, {
  Unary(call, callback) {
    const tp = first(call.metadata, 'traceparent');
    const ts = first(call.metadata, 'tracestate');
    console.log(JSON.stringify({ method: 'Unary', traceparent: tp, tracestate: ts }));
    callback(null, { message: ts ? `${tp};${ts}` : tp });
  },
});
server.bindAsync(addr, grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error(`server.js: ${err.message}`);
    process.exit(1);
  }
  console.log(`listening on ${addr.replace(/:\d+$/, ':' + port)}`);
});
function stop() {
  server.tryShutdown(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
