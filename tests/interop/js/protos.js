// SPDX-License-Identifier: MIT
// Shared by client.js and server.js: loads the interop protos at run time
// and parses the Go-style command line both programs take.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The Echo service is shared by every peer in tests/interop; the health
// service's messages live next to this file.
const ECHO_PROTO = path.join(__dirname, '..', 'proto', 'echo.proto');
const HEALTH_PROTO = path.join(__dirname, 'health.proto');

// keepCase: fields keep their .proto names (delay_ms, status_message), so the
// code reads like the .proto. defaults: unset fields read as 0, '' or an
// empty Buffer rather than undefined. enums: String gives 'SERVING'.
const LOAD_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

function load() {
  const def = protoLoader.loadSync([ECHO_PROTO, HEALTH_PROTO], LOAD_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def);
  return {
    Echo: pkg.mica.interop.Echo,
    Health: pkg.grpc.health.v1.Health,
  };
}

// parseArgs(argv, {addr: '127.0.0.1:50052', cases: ''}) accepts "-name
// value", "--name value" and "-name=value" for every key of the defaults,
// like Go's flag package, so the JS and Go peers take the same command line.
// Returns the merged values, or throws an Error with a usage message.
function parseArgs(argv, defaults) {
  const out = Object.assign({}, defaults);
  for (let i = 0; i < argv.length; i++) {
    const m = /^--?([a-z_]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !(m[1] in defaults))
      throw new Error(`unknown argument "${argv[i]}"`);
    let value = m[2];
    if (value === undefined) {
      if (i + 1 >= argv.length)
        throw new Error(`-${m[1]} needs a value`);
      value = argv[++i];
    }
    out[m[1]] = value;
  }
  return out;
}

module.exports = { grpc, load, parseArgs };
