#!/usr/bin/env node
// A Node.js client for fnlb's front door (fnlb.v1.LoadBalancer), built from
// protos/ at run time with @grpc/proto-loader: no generated code.
//
//   cd examples/node && npm ci && node client.js 127.0.0.1:9090
//
// It runs four checks against a running LB whose runners are runner-stubs
// (their fake functions echo the body and obey config such as sleep_ms) and
// prints one JSON line per check, then a summary line; the exit status is 0
// only when every check passed.
//   invoke        CALLS unary Invoke calls (default 50), each echoed back
//   stream        InvokeStream with a large body (default 5 MiB) in chunks
//   deadline      a call that sleeps 3 s under a 500 ms deadline: DEADLINE_EXCEEDED
//   invalid       an Invoke without fn_id: INVALID_ARGUMENT "fn_id: required"
// Environment: CALLS, STREAM_BYTES, FNLB_PROTOS (default ../../protos).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const target = process.argv[2] || process.env.FNLB_ADDR || '127.0.0.1:9090';
const calls = Number(process.env.CALLS || 50);
const streamBytes = Number(process.env.STREAM_BYTES || 5 * 1024 * 1024);
const protos = process.env.FNLB_PROTOS || path.join(__dirname, '..', '..', 'protos');

const definition = protoLoader.loadSync('fnlb/v1/lb.proto', {
  includeDirs: [protos],
  keepCase: true, // field names as in the .proto: fn_id, status_code, ...
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true, // msg.msg names the oneof member set: 'response' or 'data'
});
const fnlb = grpc.loadPackageDefinition(definition).fnlb.v1;
// The LB streams response bodies in ~64 KiB messages, but a unary Invoke
// reply carries the whole body: allow big ones (grpc-js' default is 4 MiB).
const client = new fnlb.LoadBalancer(target, grpc.credentials.createInsecure(), {
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
});

function deadlineIn(ms) {
  return new Date(Date.now() + ms);
}

function invoke(request, ms = 10000) {
  return new Promise((resolve, reject) => {
    client.Invoke(request, { deadline: deadlineIn(ms) }, (err, reply) =>
      err ? reject(err) : resolve(reply));
  });
}

function codeName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
}

async function checkInvoke() {
  const results = await Promise.all(Array.from({ length: calls }, (_, i) =>
    invoke({ fn_id: 'node-hello', app_id: 'node', body: Buffer.from(`hi ${i}`) })));
  const ok = results.filter((r, i) => r.status_code === 200 && r.body.toString() === `hi ${i}`);
  const runners = new Set(results.map((r) => r.runner));
  return { ok: ok.length === calls, calls, succeeded: ok.length, runners: runners.size };
}

function checkStream() {
  const body = Buffer.alloc(streamBytes);
  for (let i = 0; i < body.length; i++) body[i] = i % 251;
  return new Promise((resolve) => {
    const call = client.InvokeStream({ deadline: deadlineIn(30000) });
    let meta = null;
    const chunks = [];
    call.on('data', (msg) => {
      if (msg.msg === 'response') meta = msg.response;
      else chunks.push(msg.data);
    });
    call.on('error', (err) => resolve({ ok: false, error: `${codeName(err.code)}: ${err.details}` }));
    call.on('end', () => {
      const got = Buffer.concat(chunks);
      resolve({
        ok: meta !== null && meta.status_code === 200 && got.equals(body),
        bytes: body.length, received: got.length, messages: chunks.length,
        runner: meta && meta.runner,
      });
    });
    call.write({ request: { fn_id: 'node-stream', app_id: 'node' } });
    const chunk = 256 * 1024;
    for (let off = 0; off < body.length; off += chunk) {
      call.write({ data: body.subarray(off, off + chunk) });
    }
    call.end();
  });
}

async function expectError(request, ms, wantCode, wantText) {
  const started = Date.now();
  try {
    await invoke(request, ms);
    return { ok: false, error: 'the call succeeded' };
  } catch (err) {
    const ok = err.code === wantCode && (!wantText || err.details.includes(wantText));
    return { ok, code: codeName(err.code), details: err.details, ms: Date.now() - started };
  }
}

async function main() {
  const checks = {
    invoke: checkInvoke,
    stream: checkStream,
    deadline: () => expectError(
      { fn_id: 'node-slow', config: { sleep_ms: '3000' } }, 500, grpc.status.DEADLINE_EXCEEDED),
    invalid: () => expectError(
      { fn_id: '', body: Buffer.from('x') }, 5000, grpc.status.INVALID_ARGUMENT, 'fn_id: required'),
  };
  let failed = 0;
  for (const [name, run] of Object.entries(checks)) {
    let result;
    try {
      result = await run();
    } catch (err) {
      result = { ok: false, error: `${codeName(err.code)}: ${err.details || err.message}` };
    }
    if (!result.ok) failed++;
    console.log(JSON.stringify({ check: name, ...result }));
  }
  client.close();
  const passed = Object.keys(checks).length - failed;
  console.log(JSON.stringify({ summary: { passed, failed } }));
  process.exitCode = failed ? 1 : 0;
}

main();
