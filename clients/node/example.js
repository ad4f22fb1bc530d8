#!/usr/bin/env node
// A Node.js client of the orchestrator over gRPC: submits a workflow, watches its events to the end (resuming
// after a dropped connection) and reads its final status, then prints one JSON document.
//
//   npm ci && node example.js --target 127.0.0.1:50051 [--type design] [--requirements "..."] [--config '{...}']
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
const WATCH_RETRIES = 5;

// gRPC retries the unary calls on UNAVAILABLE by itself with this service config. A stream is only retried
// until its first message, so the watch below resumes by hand.
const SERVICE_CONFIG = {
  methodConfig: [
    {
      name: [{ service: 'orchestrator.v1.OrchestratorService' }],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '0.1s',
        maxBackoff: '2s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
};

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

function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client[method](request, metadata, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// Every stored event up to the terminal one, in order and once each: after a dropped connection
// it asks again for the events after the last sequence it received.
async function watch(client, sessionId, metadata, onEvent) {
  let last = '0';
  let attempt = 0;
  for (;;) {
    const outcome = await new Promise((resolve) => {
      const call = client.WatchWorkflow({ session_id: sessionId, after_sequence: last }, metadata);
      let finished = false;
      call.on('data', (event) => {
        attempt = 0;
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
    const retryable = outcome.error === null || outcome.error.code === grpc.status.UNAVAILABLE;
    if (!retryable || attempt >= WATCH_RETRIES) {
      throw outcome.error || new Error(`the watch of ${sessionId} kept ending early`);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** attempt, 2000)));
    attempt += 1;
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
    },
  });
  const OrchestratorService = loadService();
  const client = new OrchestratorService(values.target, grpc.credentials.createInsecure(), {
    'grpc.service_config': JSON.stringify(SERVICE_CONFIG),
  });
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
        request_id: crypto.randomUUID(), // makes the automatic retries of this submit safe
      },
      metadata,
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
    });
    const status = await unary(client, 'GetWorkflowStatus', { session_id: submitted.session_id }, metadata);
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
