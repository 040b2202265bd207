// SPDX-License-Identifier: MIT
// The interop Echo server on @grpc/grpc-js: the reference peer that mica's
// gRPC client is tested against. It implements tests/interop/proto/echo.proto
// exactly as its comments say (as do the mica and grpc-go servers), plus
// grpc.health.v1.Health, which reports SERVING for "" and for the Echo service.
//
//   node server.js -addr 127.0.0.1:PORT [-cert cert.pem -key key.pem (TLS)]
//
// Prints "listening on <addr>" once bound (port 0 picks a free port and the
// line shows the real one), and exits 0 on SIGTERM or SIGINT.
'use strict';

const fs = require('fs');
const { grpc, load, parseArgs } = require('./protos');

const { status: Status, Metadata } = grpc;

// --- helpers ---------------------------------------------------------------

// The value of request header "x-echo-in" comes back as response header
// "x-echo-header" (sent now) and as trailer "x-echo-trailer" (returned here,
// to be sent with the status, whatever it is).
function echoMetadata(call) {
  const trailer = new Metadata();
  const values = call.metadata.get('x-echo-in');
  if (values.length > 0) {
    const value = String(values[0]);
    const header = new Metadata();
    header.set('x-echo-header', value);
    call.sendMetadata(header);
    trailer.set('x-echo-trailer', value);
  }
  return trailer;
}

// The error a request with a non-zero `status` asks for. grpc-js sends
// `metadata` as the trailers of a failed call.
function requestedError(req, trailer) {
  return { code: req.status, details: req.status_message, metadata: trailer };
}

// Resolves true after `ms`, or false as soon as the call is cancelled by the
// client or ends at its deadline (grpc-js then has already sent the status).
function sleep(call, ms) {
  return new Promise((resolve) => {
    if (call.cancelled) return resolve(false);
    if (ms <= 0) return resolve(true);
    const onCancel = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      call.removeListener('cancelled', onCancel);
      resolve(true);
    }, ms);
    call.once('cancelled', onCancel);
  });
}

// Writes one message, waiting for the stream to drain if its buffer is full.
// Resolves false if the call was cancelled meanwhile.
function write(call, message) {
  if (call.write(message)) return Promise.resolve(!call.cancelled);
  return new Promise((resolve) => {
    const done = (ok) => () => {
      call.removeListener('drain', onDrain);
      call.removeListener('cancelled', onCancel);
      resolve(ok);
    };
    const onDrain = done(true);
    const onCancel = done(false);
    call.once('drain', onDrain);
    call.once('cancelled', onCancel);
  });
}

// --- Echo --------------------------------------------------------------------

// Echoes message and payload, or answers with `response_size` bytes of 'x',
// after `delay_ms`; fails with `status` if set.
async function unary(call, callback) {
  const req = call.request;
  const trailer = echoMetadata(call);
  if (!(await sleep(call, req.delay_ms))) return;
  if (req.status) return callback(requestedError(req, trailer));
  const payload = req.response_size > 0 ? Buffer.alloc(req.response_size, 'x') : req.payload;
  callback(null, { message: req.message, payload }, trailer);
}

// Sends `count` responses {message, index}, each after `delay_ms`; then fails
// with `status` if set.
async function serverStream(call) {
  const req = call.request;
  const trailer = echoMetadata(call);
  for (let i = 0; i < req.count; i++) {
    if (!(await sleep(call, req.delay_ms))) return;
    if (!(await write(call, { message: req.message, index: i }))) return;
  }
  // grpc-js turns an 'error' event on a server stream into the call's status.
  if (req.status) call.emit('error', requestedError(req, trailer));
  else call.end(trailer);
}

// Collects requests until the client half-closes, then answers once with the
// joined messages, their number and the total payload size (as decimal text).
// A request with a non-zero status fails the call at once.
function clientStream(call, callback) {
  const trailer = echoMetadata(call);
  const messages = [];
  let payloadBytes = 0;
  let done = false; // the call has its status; ignore whatever still arrives
  call.on('data', (req) => {
    if (done) return;
    if (req.status) {
      done = true;
      callback(requestedError(req, trailer));
      return;
    }
    messages.push(req.message);
    payloadBytes += req.payload.length;
  });
  call.on('end', () => {
    if (done) return;
    done = true;
    callback(null, {
      message: messages.join(','),
      index: messages.length,
      payload: Buffer.from(String(payloadBytes)),
    }, trailer);
  });
  call.on('cancelled', () => { done = true; });
  call.on('error', () => { done = true; }); // grpc-js has already sent a status
}

// Answers each request at once with {message, index = its position}; a request
// with a non-zero status ends the call with it. A half-close ends it with OK.
function bidi(call) {
  const trailer = echoMetadata(call);
  let index = 0;
  let done = false;
  call.on('data', (req) => {
    if (done) return;
    if (req.status) {
      done = true;
      call.emit('error', requestedError(req, trailer));
      return;
    }
    call.write({ message: req.message, index: index++ });
  });
  call.on('end', () => {
    if (done) return;
    done = true;
    call.end(trailer);
  });
  call.on('cancelled', () => { done = true; });
}

// --- grpc.health.v1.Health ---------------------------------------------------

// Statuses never change here, so Watch sends one message and then stays open
// until the client cancels or the server shuts down.
const health = new Map([
  ['', 'SERVING'],
  ['mica.interop.Echo', 'SERVING'],
]);
const watchers = new Set();

function healthCheck(call, callback) {
  const status = health.get(call.request.service);
  if (status === undefined)
    return callback({ code: Status.NOT_FOUND, details: 'unknown service' });
  callback(null, { status });
}

function healthWatch(call) {
  watchers.add(call);
  call.on('cancelled', () => watchers.delete(call));
  call.write({ status: health.get(call.request.service) || 'SERVICE_UNKNOWN' });
}

// --- main --------------------------------------------------------------------

// A handler that throws (or rejects) fails its call with INTERNAL rather than
// taking the whole server down.
function guarded(handler) {
  return (call, callback) => {
    Promise.resolve()
      .then(() => handler(call, callback))
      .catch((err) => {
        console.error(`server: ${call.getPath()}: ${err.stack || err}`);
        const status = { code: Status.INTERNAL, details: String(err.message || err) };
        if (callback) callback(status);
        else call.emit('error', status);
      });
  };
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2), { addr: '127.0.0.1:50052', cert: '', key: '' });
  } catch (err) {
    console.error(`server: ${err.message}\nusage: node server.js -addr HOST:PORT [-cert cert.pem -key key.pem]`);
    process.exit(2);
  }

  const { Echo, Health } = load();
  // Default limits on purpose: 4 MiB to receive (so a 5 MiB request fails
  // with RESOURCE_EXHAUSTED), no limit to send (so response_size can exceed
  // the client's 4 MiB).
  const server = new grpc.Server();
  server.addService(Echo.service, {
    Unary: guarded(unary),
    ServerStream: guarded(serverStream),
    ClientStream: guarded(clientStream),
    Bidi: guarded(bidi),
  });
  server.addService(Health.service, {
    Check: guarded(healthCheck),
    Watch: guarded(healthWatch),
  });

  // -cert/-key: TLS (ALPN h2); else cleartext h2c.
  const creds = args.cert
    ? grpc.ServerCredentials.createSsl(null, [{
      cert_chain: fs.readFileSync(args.cert), private_key: fs.readFileSync(args.key),
    }])
    : grpc.ServerCredentials.createInsecure();
  server.bindAsync(args.addr, creds, (err, port) => {
    if (err) {
      console.error(`server: listen on ${args.addr}: ${err.message}`);
      process.exit(1);
    }
    console.log(`listening on ${args.addr.replace(/:\d+$/, `:${port}`)}`);
  });

  // Graceful stop: end the open Watch streams, let calls in flight finish,
  // and give up waiting after a second.
  const stop = () => {
    for (const call of watchers) call.end();
    watchers.clear();
    setTimeout(() => {
      server.forceShutdown();
      process.exit(0);
    }, 1000).unref();
    server.tryShutdown(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main();
