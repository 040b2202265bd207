// SPDX-License-Identifier: MIT
// The interop client on @grpc/grpc-js: drives every case of the interop
// matrix against any server of tests/interop/proto/echo.proto (mica, grpc-go
// or server.js here), with the semantics of that file's comments.
//
//   node client.js -addr 127.0.0.1:PORT [-cases unary,bidi,...] [-ca ca.pem (TLS)]
//
// Prints one line per case, "PASS <case> (<ms> ms)" or "FAIL <case>: <reason>",
// and exits 0 only if every selected case passed (2 on a usage error).
//
// All cases share one channel, run one after another, as grpc's own interop
// client does: a server that mishandles a connection after an error (a reset
// stream, an oversized message) shows up in the cases that follow. Each case
// has its own deadline, and the whole run a budget, so nothing hangs.
'use strict';

const fs = require('fs');
const { grpc, load, parseArgs } = require('./protos');

const { status: Status, Metadata } = grpc;

const MiB = 1024 * 1024;
const CASE_TIMEOUT_MS = 5000; // deadline of every call a case makes
const RUN_BUDGET_MS = 25000; // cases that would start after this fail at once

// --- helpers -----------------------------------------------------------------

class CaseError extends Error {}

function check(cond, reason) {
  if (!cond) throw new CaseError(reason);
}

function statusName(code) {
  const name = Object.keys(Status).find((k) => Status[k] === code);
  return name === undefined ? `code ${code}` : name;
}

// Throws if a call that should have succeeded failed; `when` says where.
function expectOk(err, when = '') {
  if (err) throw new CaseError(`unexpected ${statusName(err.code)}${when}: ${err.details}`);
}

// Throws unless `err` is a gRPC error with `code` (and `details`, if given).
function expectStatus(err, code, details) {
  check(err, `expected ${statusName(code)}, got OK`);
  check(err.code === code,
    `expected ${statusName(code)}, got ${statusName(err.code)}: ${err.details}`);
  if (details !== undefined)
    check(err.details === details,
      `expected details ${JSON.stringify(details)}, got ${JSON.stringify(err.details)}`);
}

// Calls a unary method and resolves once the call has fully ended, with
// {err, res, headers, trailers}; it never rejects. `start` sees the call
// object, for cases that cancel it.
function unaryCall(client, method, req, opts = {}) {
  return new Promise((resolve) => {
    const out = { err: null, res: null, headers: null, trailers: null };
    let pending = 2; // the callback and the 'status' event, in either order
    const finish = () => { if (--pending === 0) resolve(out); };
    const call = client[method](req, opts.metadata || new Metadata(),
      { deadline: opts.deadline }, (err, res) => {
        out.err = err;
        out.res = res;
        finish();
      });
    call.on('metadata', (md) => { out.headers = md; });
    call.on('status', (st) => {
      out.trailers = st.metadata;
      finish();
    });
    if (opts.start) opts.start(call);
  });
}

// Reads a server stream to its end: resolves {messages, err}, never rejects.
// grpc-js emits 'status' last, after every message and after 'error'.
function readStream(call) {
  return new Promise((resolve) => {
    const messages = [];
    let err = null;
    call.on('data', (msg) => messages.push(msg));
    call.on('error', (e) => { err = e; });
    call.on('status', () => resolve({ messages, err }));
  });
}

// A queue over a streaming call's incoming side, for one-at-a-time
// exchanges: next() resolves with the next message; once the call has ended
// it resolves null (status OK) or rejects with the call's error. The 'status'
// event marks the end: grpc-js emits it only after every message has been
// delivered, and after 'error' when the call failed.
function reader(call) {
  const queue = [];
  const waiting = [];
  let ended = false;
  let failure = null;
  let lastError = null;
  const settle = () => {
    while (waiting.length > 0 && (queue.length > 0 || ended || failure)) {
      const w = waiting.shift();
      if (queue.length > 0) w.resolve(queue.shift());
      else if (failure) w.reject(failure);
      else w.resolve(null);
    }
  };
  call.on('data', (msg) => { queue.push(msg); settle(); });
  call.on('error', (err) => { lastError = err; });
  call.on('status', (st) => {
    if (st.code === Status.OK) ended = true;
    else failure = lastError || Object.assign(new Error(st.details), st);
    settle();
  });
  return {
    next: () => new Promise((resolve, reject) => {
      waiting.push({ resolve, reject });
      settle();
    }),
  };
}

// A deterministic, non-repeating-looking payload, so that a shifted or
// truncated echo cannot compare equal by accident.
function pattern(size) {
  const buf = Buffer.alloc(size);
  let x = 0x2545f491;
  for (let i = 0; i < size; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5; // xorshift32
    buf[i] = x & 0xff;
  }
  return buf;
}

// --- cases ---------------------------------------------------------------------
//
// Each case is async (t) => {...}; t.echo / t.health are the stubs, t.deadline
// the Date every call must pass, t.client the raw grpc-js Client, t.newEcho(options)
// an Echo stub on a channel of its own. A case
// passes by returning and fails by throwing.

const cases = {
  async unary(t) {
    const payload = pattern(1024);
    const { err, res } = await unaryCall(t.echo, 'Unary',
      { message: 'hello', payload }, { deadline: t.deadline });
    expectOk(err);
    check(res.message === 'hello', `message ${JSON.stringify(res.message)}, want "hello"`);
    check(payload.equals(res.payload), `payload of ${res.payload.length} bytes differs`);
  },

  // A channel that gzips every request (grpc-encoding: gzip); the payload
  // inflates to 1 MiB and must come back as it was.
  async unary_gzip(t) {
    const gz = t.newEcho({ 'grpc.default_compression_algorithm': 2 /* gzip */ });
    try {
      const payload = Buffer.from('compressible '.repeat(80660));
      const { err, res } = await unaryCall(gz, 'Unary',
        { message: 'gzip', payload }, { deadline: t.deadline });
      expectOk(err);
      check(res.message === 'gzip', `message ${JSON.stringify(res.message)}, want "gzip"`);
      check(payload.equals(res.payload), `payload of ${res.payload.length} bytes differs`);
    } finally {
      gz.close();
    }
  },

  async unary_metadata(t) {
    const md = new Metadata();
    md.set('x-echo-in', 'v1');
    const { err, headers, trailers } = await unaryCall(t.echo, 'Unary',
      { message: 'md' }, { metadata: md, deadline: t.deadline });
    expectOk(err);
    const header = headers ? headers.get('x-echo-header') : [];
    const trailer = trailers ? trailers.get('x-echo-trailer') : [];
    check(header.length === 1 && header[0] === 'v1',
      `header x-echo-header = ${JSON.stringify(header)}, want ["v1"]`);
    check(trailer.length === 1 && trailer[0] === 'v1',
      `trailer x-echo-trailer = ${JSON.stringify(trailer)}, want ["v1"]`);
  },

  async unary_error(t) {
    const { err } = await unaryCall(t.echo, 'Unary',
      { status: Status.NOT_FOUND, status_message: 'no such thing' }, { deadline: t.deadline });
    expectStatus(err, Status.NOT_FOUND, 'no such thing');
  },

  async unary_deadline(t) {
    const started = Date.now();
    const { err } = await unaryCall(t.echo, 'Unary',
      { message: 'slow', delay_ms: 5000 }, { deadline: started + 300 });
    const ms = Date.now() - started;
    expectStatus(err, Status.DEADLINE_EXCEEDED);
    check(ms < 2000, `DEADLINE_EXCEEDED after ${ms} ms, want < 2000`);
  },

  async unary_cancel(t) {
    const started = Date.now();
    const { err } = await unaryCall(t.echo, 'Unary',
      { message: 'slow', delay_ms: 5000 },
      { deadline: t.deadline, start: (call) => setTimeout(() => call.cancel(), 200) });
    const ms = Date.now() - started;
    expectStatus(err, Status.CANCELLED);
    check(ms < 2000, `CANCELLED after ${ms} ms, want < 2000`);
  },

  async unary_large(t) {
    const payload = pattern(3 * MiB);
    const { err, res } = await unaryCall(t.echo, 'Unary',
      { message: 'large', payload }, { deadline: t.deadline });
    expectOk(err);
    check(res.payload.length === payload.length,
      `payload of ${res.payload.length} bytes, want ${payload.length}`);
    check(payload.equals(res.payload), 'payload differs');
  },

  // The server's default 4 MiB receive limit refuses the request.
  async unary_too_large(t) {
    const { err } = await unaryCall(t.echo, 'Unary',
      { message: 'too large', payload: pattern(5 * MiB) }, { deadline: t.deadline });
    expectStatus(err, Status.RESOURCE_EXHAUSTED);
  },

  // This client's default 4 MiB receive limit refuses the response.
  async response_too_large(t) {
    const { err } = await unaryCall(t.echo, 'Unary',
      { message: 'big answer', response_size: 5 * MiB }, { deadline: t.deadline });
    expectStatus(err, Status.RESOURCE_EXHAUSTED);
  },

  async server_stream(t) {
    const call = t.echo.ServerStream({ message: 'stream', count: 5 }, { deadline: t.deadline });
    const { messages, err } = await readStream(call);
    expectOk(err, ` after ${messages.length} messages`);
    check(messages.length === 5, `${messages.length} messages, want 5`);
    messages.forEach((m, i) => {
      check(m.index === i && m.message === 'stream',
        `message ${i} is {${JSON.stringify(m.message)}, index ${m.index}}`);
    });
  },

  async server_stream_error(t) {
    const call = t.echo.ServerStream(
      { message: 'stream', count: 3, status: Status.FAILED_PRECONDITION, status_message: 'stop' },
      { deadline: t.deadline });
    const { messages, err } = await readStream(call);
    check(messages.length === 3, `${messages.length} messages before the status, want 3`);
    messages.forEach((m, i) => check(m.index === i, `message ${i} has index ${m.index}`));
    expectStatus(err, Status.FAILED_PRECONDITION, 'stop');
  },

  async client_stream(t) {
    const result = new Promise((resolve) => {
      const call = t.echo.ClientStream({ deadline: t.deadline }, (err, res) => resolve({ err, res }));
      for (const message of ['a', 'b', 'c'])
        call.write({ message, payload: pattern(1024) });
      call.end();
    });
    const { err, res } = await result;
    expectOk(err);
    check(res.message === 'a,b,c', `message ${JSON.stringify(res.message)}, want "a,b,c"`);
    check(res.index === 3, `index ${res.index}, want 3`);
    check(res.payload.toString() === '3072',
      `payload ${JSON.stringify(res.payload.toString())}, want "3072"`);
  },

  // Strict ping-pong: each answer is read before the next request is sent.
  async bidi(t) {
    const call = t.echo.Bidi({ deadline: t.deadline });
    const incoming = reader(call);
    for (let i = 0; i < 10; i++) {
      call.write({ message: `ping ${i}` });
      const m = await incoming.next();
      check(m !== null, `stream ended after ${i} answers`);
      check(m.message === `ping ${i}` && m.index === i,
        `answer ${i} is {${JSON.stringify(m.message)}, index ${m.index}}`);
    }
    call.end();
    // null: the call ended with OK; a failed call rejects instead.
    check((await incoming.next()) === null, 'an answer after the half-close');
  },

  async bidi_error(t) {
    const call = t.echo.Bidi({ deadline: t.deadline });
    const incoming = reader(call);
    call.write({ message: 'first' });
    const m = await incoming.next();
    check(m !== null && m.message === 'first' && m.index === 0,
      `first answer is ${JSON.stringify(m)}`);
    call.write({ message: 'second', status: Status.RESOURCE_EXHAUSTED, status_message: 'enough' });
    let err = null;
    let extra = null;
    try {
      extra = await incoming.next(); // should reject with the call's status
    } catch (e) {
      err = e;
    }
    check(extra === null, `an answer to the failing request: ${JSON.stringify(extra)}`);
    expectStatus(err, Status.RESOURCE_EXHAUSTED, 'enough');
  },

  // A method the Echo service does not have.
  async unimplemented(t) {
    const err = await rawUnary(t, '/mica.interop.Echo/Nope');
    expectStatus(err, Status.UNIMPLEMENTED);
  },

  // A service the server does not have.
  async unknown_service(t) {
    const err = await rawUnary(t, '/mica.interop.Nope/Unary');
    expectStatus(err, Status.UNIMPLEMENTED);
  },

  async health_check(t) {
    const { err, res } = await unaryCall(t.health, 'Check', { service: '' }, { deadline: t.deadline });
    expectOk(err);
    check(res.status === 'SERVING', `status ${res.status}, want SERVING`);
  },

  async health_watch(t) {
    const call = t.health.Watch({ service: '' }, { deadline: t.deadline });
    const incoming = reader(call);
    try {
      const m = await incoming.next();
      check(m !== null, 'Watch ended without a message');
      check(m.status === 'SERVING', `first status ${m.status}, want SERVING`);
    } finally {
      call.cancel(); // Watch never ends by itself; CANCELLED is expected
    }
  },

  // 100 unary calls at once, all on the one channel (so, with HTTP/2, on one
  // connection unless the server limits concurrent streams below that).
  async many_streams(t) {
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) =>
      unaryCall(t.echo, 'Unary', { message: `call ${i}` }, { deadline: t.deadline })));
    const failed = results.filter((r, i) => r.err || r.res.message !== `call ${i}`);
    if (failed.length > 0) {
      const first = failed[0].err
        ? `${statusName(failed[0].err.code)}: ${failed[0].err.details}`
        : `answer ${JSON.stringify(failed[0].res.message)}`;
      throw new CaseError(`${failed.length} of 100 calls failed, first: ${first}`);
    }
  },
};

// An empty request to a method no stub knows, by path: resolves the error
// (null on success).
function rawUnary(t, path) {
  return new Promise((resolve) => {
    t.client.makeUnaryRequest(path, (buf) => buf, (buf) => buf, Buffer.alloc(0),
      new Metadata(), { deadline: t.deadline }, (err) => resolve(err));
  });
}

// --- main ----------------------------------------------------------------------

function oneLine(text) {
  return String(text).replace(/\s*\n\s*/g, ' ');
}

// Runs one case against its deadline; resolves null on success or the reason.
async function runCase(fn, ctx, timeoutMs) {
  let timer;
  // The calls' own deadlines normally end a stuck case; this guard is for a
  // case stuck outside any call, and comes a little later so it never wins a
  // race against them.
  const guard = new Promise((resolve) => {
    timer = setTimeout(() => resolve(`no result within ${timeoutMs + 1000} ms`), timeoutMs + 1000);
  });
  try {
    return await Promise.race([fn(ctx).then(() => null), guard]);
  } catch (err) {
    // A reason is one line: a check that failed, a call that failed where
    // the case expected none, or (a bug here) an exception, whose stack goes
    // to stderr.
    if (err instanceof CaseError) return oneLine(err.message);
    if (typeof err.code === 'number' && 'details' in err)
      return oneLine(`unexpected ${statusName(err.code)}: ${err.details}`);
    console.error(err.stack || err);
    return oneLine(`exception: ${err.message || err}`);
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2), { addr: '127.0.0.1:50052', cases: '', ca: '' });
    if (args.cases) {
      const unknown = args.cases.split(',').filter((c) => !(c in cases));
      if (unknown.length > 0) throw new Error(`unknown case(s): ${unknown.join(', ')}`);
    }
  } catch (err) {
    console.error(`client: ${err.message}\n` +
      'usage: node client.js -addr HOST:PORT [-cases a,b,c] [-ca ca.pem]\n' +
      `cases: ${Object.keys(cases).join(',')}`);
    process.exit(2);
  }
  const selected = args.cases ? args.cases.split(',') : Object.keys(cases);

  // One channel for everything: the Health stub and the raw calls ride the
  // Echo client's channel. Default limits (4 MiB to receive, none to send)
  // are part of what the cases test.
  const { Echo, Health } = load();
  // -ca: TLS, trusting that CA's certificates; else cleartext h2c.
  const creds = args.ca ? grpc.credentials.createSsl(fs.readFileSync(args.ca))
    : grpc.credentials.createInsecure();
  const echo = new Echo(args.addr, creds);
  const health = new Health(args.addr, creds, { channelOverride: echo.getChannel() });

  const runStarted = Date.now();
  let failures = 0;
  for (const name of selected) {
    const left = RUN_BUDGET_MS - (Date.now() - runStarted);
    if (left <= 0) {
      console.log(`FAIL ${name}: not run, the run's ${RUN_BUDGET_MS} ms budget is spent`);
      failures++;
      continue;
    }
    const timeoutMs = Math.min(CASE_TIMEOUT_MS, left);
    const started = Date.now();
    const ctx = {
      echo, health, client: echo, deadline: new Date(started + timeoutMs),
      newEcho: (options) => new Echo(args.addr, creds, options), // a channel of its own
    };
    const reason = await runCase(cases[name], ctx, timeoutMs);
    if (reason === null) {
      console.log(`PASS ${name} (${Date.now() - started} ms)`);
    } else {
      console.log(`FAIL ${name}: ${reason}`);
      failures++;
    }
  }
  echo.close();
  // Exit now rather than when the event loop drains: a stuck call (the
  // reason for a failure) must not keep the process alive.
  process.exit(failures === 0 ? 0 : 1);
}

main();
