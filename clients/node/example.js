#!/usr/bin/env node
// A Node.js client of the orchestrator over gRPC: submits a workflow, watches its events to the end (resuming
// after a dropped connection or a server restart) and reads its final status, then prints one JSON document.
//
//   npm ci && node example.js --target 127.0.0.1:50051 [--type design] [--requirements "..."] [--config '{...}']
//                             [--retry-timeout 300]
//
// Every call retries UNAVAILABLE (the server restarting, its database out of reach) with jittered exponential
// backoff for up to --retry-timeout seconds (ORCHESTRATOR_RETRY_TIMEOUT, default 300: a graceful restart takes
// about 15 s, a database failover a minute or two), one line on stderr per retry. The watch resumes after the
// last sequence it received, and its timeout restarts with every event.
//
// The protos are loaded at run time from this repository (protos/ and third_party/googleapis), so nothing is
// generated. Exit code: 0 when the workflow completed, 1 when it failed or was cancelled, 2 on an error.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROOT = path.resolve(__dirname, '..', '..');
const TERMINAL = new Set([
  'EVENT_TYPE_WORKFLOW_COMPLETED',
  'EVENT_TYPE_WORKFLOW_FAILED',
  'EVENT_TYPE_WORKFLOW_CANCELLED',
]);
const FIRST_DELAY_MS = 100;
const MAX_DELAY_MS = 5000;
// gRPC's own retry policy (a service config) stops after 5 attempts, about 3 s: far too little to wait out a
// restart. The calls below retry by a deadline instead.
const CHANNEL_OPTIONS = {
  // gRPC waits up to 120 s between reconnection attempts by default: a server that came back would go unnoticed.
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2000,
};

// The retries of one call (or of one interruption of the watch): exponential backoff with jitter (0.5x to 1.5x,
// so that the clients of a restarted server do not all come back at once) until `timeoutMs` after the first
// failure. `delay` returns the wait before the next attempt, or null when the time is up.
class Retry {
  constructor(name, timeoutMs) {
    this.name = name;
    this.timeoutMs = timeoutMs;
    this.reset();
  }

  reset() {
    this.attempt = 0;
    this.deadline = null;
  }

  delay(why) {
    const now = Date.now();
    if (this.deadline === null) this.deadline = now + this.timeoutMs;
    const remaining = this.deadline - now;
    if (remaining <= 0) return null;
    const backoff = Math.min(FIRST_DELAY_MS * 2 ** Math.min(this.attempt, 32), MAX_DELAY_MS);
    const wait = Math.min(backoff * (0.5 + Math.random()), remaining);
    this.attempt += 1;
    process.stderr.write(
      `${this.name}: ${why}; retry ${this.attempt} in ${(wait / 1000).toFixed(2)}s ` +
        `(giving up in ${Math.round(remaining / 1000)}s)\n`,
    );
    return wait;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function loadService() {
  const definition = protoLoader.loadSync('orchestrator/v1/orchestrator_service.proto', {
    includeDirs: [path.join(ROOT, 'protos'), path.join(ROOT, 'third_party', 'googleapis')],
    keepCase: true, // the proto field names, as the REST API uses them too
    longs: String, // int64 as strings: a JavaScript number loses precision past 2^53
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).orchestrator.v1.OrchestratorService;
}

// google.protobuf.Struct and Value, to and from plain JSON. protobufjs defines these well-known types itself,
// with camelCase field names whatever keepCase says.
function toValue(value) {
  if (value === null) return { nullValue: 'NULL_VALUE' };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  switch (typeof value) {
    case 'number':
      return { numberValue: value };
    case 'string':
      return { stringValue: value };
    case 'boolean':
      return { boolValue: value };
    default:
      return { structValue: toStruct(value) };
  }
}

function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([key, value]) => [key, toValue(value)])) };
}

function fromValue(value) {
  switch (value.kind) {
    case 'nullValue':
      return null;
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    case 'structValue':
      return fromStruct(value.structValue);
    default:
      return value[value.kind];
  }
}

function fromStruct(struct) {
  if (!struct) return null;
  return Object.fromEntries(Object.entries(struct.fields || {}).map(([key, value]) => [key, fromValue(value)]));
}

function unaryOnce(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// One call, retried on UNAVAILABLE until the retry timeout (the submit carries a request_id: its retries are safe).
async function unary(client, method, request, metadata, retryTimeoutMs) {
  const retry = new Retry(method, retryTimeoutMs);
  for (;;) {
    try {
      return await unaryOnce(client, method, request, metadata);
    } catch (error) {
      const wait = error.code === grpc.status.UNAVAILABLE ? retry.delay(`UNAVAILABLE (${error.details})`) : null;
      if (wait === null) throw error;
      await sleep(wait);
    }
  }
}

// Every stored event up to the terminal one, in order and once each: after a dropped connection, or a server
// that ends the stream with UNAVAILABLE because it shuts down (ErrorInfo reason SERVER_SHUTTING_DOWN), it asks
// again (here or on the restarted server) for the events after the last sequence it received.
async function watch(client, sessionId, metadata, onEvent, retryTimeoutMs) {
  let last = '0';
  const retry = new Retry('WatchWorkflow', retryTimeoutMs);
  for (;;) {
    const outcome = await new Promise((resolve) => {
      const call = client.WatchWorkflow({ session_id: sessionId, after_sequence: last }, metadata);
      let finished = false;
      call.on('data', (event) => {
        retry.reset();
        if (event.type === 'EVENT_TYPE_HEARTBEAT') return;
        last = event.sequence;
        onEvent(event);
        if (TERMINAL.has(event.type)) {
          finished = true;
          call.cancel();
          resolve({ done: true });
        }
      });
      call.on('error', (error) => {
        if (!finished) resolve({ error });
      });
      call.on('end', () => {
        if (!finished) resolve({ error: null }); // ended before the terminal event: resume
      });
    });
    if (outcome.done) return;
    const { error } = outcome;
    let wait = null;
    if (error === null) {
      wait = retry.delay(`the stream ended after sequence ${last} without a terminal event`);
    } else if (error.code === grpc.status.UNAVAILABLE) {
      wait = retry.delay(`UNAVAILABLE (${error.details})`);
    }
    if (wait === null) {
      throw error || new Error(`the watch of ${sessionId} kept ending early`);
    }
    await sleep(wait);
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: '127.0.0.1:50051' },
      type: { type: 'string', default: 'full' },
      requirements: { type: 'string', default: 'A CLI that converts temperatures between Celsius and Fahrenheit' },
      config: { type: 'string', default: '{}' },
      priority: { type: 'string', default: 'PRIORITY_NORMAL' },
      token: { type: 'string', default: process.env.ORCHESTRATOR_TOKEN || '' },
      'retry-timeout': { type: 'string', default: process.env.ORCHESTRATOR_RETRY_TIMEOUT || '300' },
    },
  });
  const retrySeconds = Number(values['retry-timeout']);
  if (!(retrySeconds >= 0)) {
    throw new Error(`--retry-timeout must be 0 or more seconds, not ${values['retry-timeout']}`);
  }
  const retryTimeoutMs = retrySeconds * 1000;
  const OrchestratorService = loadService();
  const client = new OrchestratorService(values.target, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  const metadata = new grpc.Metadata();
  if (values.token) metadata.set('authorization', `Bearer ${values.token}`);
  try {
    const submitted = await unary(
      client,
      'ExecuteWorkflow',
      {
        requirements: values.requirements,
        workflow_type: values.type,
        configuration: toStruct(JSON.parse(values.config)),
        priority: values.priority,
        request_id: crypto.randomUUID(), // makes the retries of this submit safe
      },
      metadata,
      retryTimeoutMs,
    );
    const events = [];
    await watch(client, submitted.session_id, metadata, (event) => {
      events.push({
        sequence: event.sequence,
        type: event.type,
        phase: event.phase,
        state: event.state,
        progress: event.progress,
      });
    }, retryTimeoutMs);
    const status = await unary(
      client,
      'GetWorkflowStatus',
      { session_id: submitted.session_id },
      metadata,
      retryTimeoutMs,
    );
    const result = status.result;
    const output = {
      session_id: submitted.session_id,
      events,
      status: {
        state: status.state,
        progress: status.progress,
        phases_completed: status.phases_completed,
        errors: status.errors,
        last_sequence: status.last_sequence,
        model: status.model,
        partial_results: fromStruct(status.partial_results),
        result: result && {
          files: result.generated_code.map((file) => file.path),
          test_report: result.test_report,
          review: result.review && { approved: result.review.approved, summary: result.review.summary },
          usage: result.usage,
        },
      },
    };
    process.stdout.write(`${JSON.stringify(output, null, 2)}\n`);
    return status.state === 'WORKFLOW_STATE_COMPLETED' ? 0 : 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    const code = error.code !== undefined ? ` (${Object.keys(grpc.status).find((k) => grpc.status[k] === error.code)})` : '';
    process.stderr.write(`error${code}: ${error.details || error.message}\n`);
    process.exitCode = 2;
  },
);
