// SPDX-License-Identifier: MIT
// An OpenTelemetry JS client for mica's tracing test: starts a CLIENT span,
// injects it with the W3C Trace Context propagator into a plain HTTP GET of
// the URL given, ends the span, and prints one JSON line:
//   {"status": 200, "body": "...", "trace_id": "...", "span_id": "...",
//    "traceparent": "<what went out>", "exported": <spans the SDK recorded>}
//
//   node client.js http://127.0.0.1:PORT/relay [tracestate]
'use strict';

const http = require('http');
const api = require('@opentelemetry/api');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const {
  NodeTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} = require('@opentelemetry/sdk-trace-node');

const url = process.argv[2];
const state = process.argv[3];
if (!url) {
  console.error('usage: node client.js <url> [tracestate]');
  process.exit(2);
}

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
provider.register({ propagator: new W3CTraceContextPropagator() });
const tracer = api.trace.getTracer('mica-trace-test');

function get(headers) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, timeout: 10000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

async function main() {
  const span = tracer.startSpan('GET /relay', { kind: api.SpanKind.CLIENT });
  let ctx = api.trace.setSpan(api.context.active(), span);
  if (state) {
    const sc = span.spanContext();
    sc.traceState = api.createTraceState(state);
    ctx = api.trace.setSpanContext(ctx, sc);
  }
  const headers = {};
  api.propagation.inject(ctx, headers);
  let res;
  try {
    res = await get(headers);
  } finally {
    span.end();
  }
  const sc = span.spanContext();
  console.log(JSON.stringify({
    status: res.status,
    body: res.body,
    trace_id: sc.traceId,
    span_id: sc.spanId,
    traceparent: headers.traceparent,
    tracestate: headers.tracestate || null,
    exported: exporter.getFinishedSpans().length,
  }));
  await provider.shutdown();
}

main().catch((err) => {
  console.error(`client.js: ${err.message}`);
  process.exit(1);
});
