#!/usr/bin/env node
// wa-onboard from Node.js: creates a Gupshup onboarding against the sandbox account and prints
// WatchOnboarding until the onboarding is LIVE.
//
// The service definitions are generated from ../../proto at start by @grpc/proto-loader (the
// standard dynamic codegen for @grpc/grpc-js), so they always match the contract:
//
//   npm install
//   node onboard.js --target localhost:50051 --api-key "$(cat ../../data/dev-api-key)"
//
// Exit status: 0 once LIVE; 1 on a terminal state (FAILED, EXPIRED, CANCELLED) or an error;
// 2 when --timeout passes first.
'use strict';

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

function parseArgs(argv) {
  const opts = {
    target: process.env.WA_ONBOARD_TARGET || 'localhost:50051',
    apiKey: process.env.WA_ONBOARD_API_KEY || '',
    account: 'accounts/sandbox-gupshup',
    timeout: 120,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--target') opts.target = value;
    else if (flag === '--api-key') opts.apiKey = value;
    else if (flag === '--account') opts.account = value;
    else if (flag === '--timeout') opts.timeout = Number(value);
    else if (flag === '--help' || flag === '-h') {
      console.log('usage: node onboard.js [--target HOST:PORT] [--api-key KEY] [--account NAME] [--timeout SECONDS]');
      process.exit(0);
    } else {
      console.error(`unknown argument ${flag}`);
      process.exit(1);
    }
    i += 1;
  }
  if (!opts.apiKey && fs.existsSync('data/dev-api-key')) {
    opts.apiKey = fs.readFileSync('data/dev-api-key', 'utf8').trim();
  }
  return opts;
}

function loadServices() {
  const dir = path.join(PROTO_ROOT, 'wa', 'onboard', 'v1');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.proto')).sort()
    .map((f) => path.join('wa', 'onboard', 'v1', f));
  const definition = protoLoader.loadSync(files, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto (and grpcurl)
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).wa.onboard.v1;
}

const TERMINAL = new Set(['ONBOARDING_STATE_FAILED', 'ONBOARDING_STATE_EXPIRED', 'ONBOARDING_STATE_CANCELLED']);

function createOnboarding(client, metadata, account) {
  const suffix = crypto.randomBytes(4).toString('hex');
  const request = {
    account,
    reference: `node-example-${suffix}`,
    request_id: `node-example-${suffix}`,
    gupshup: {
      app_name: `NodeExample${suffix}`,
      waba_id: '104996122399160',
      // A phone per run: a phone's app belongs to one onboarding, and a second onboarding of
      // the same phone is refused.
      phone: `+9198${String(parseInt(suffix, 16) % 1e8).padStart(8, '0')}`,
    },
  };
  return new Promise((resolve, reject) => {
    client.CreateOnboarding(request, metadata, { deadline: Date.now() + 30000 }, (err, res) => {
      if (err) reject(err);
      else resolve(res);
    });
  });
}

// Resolves with 'LIVE', a terminal state name, or 'RESUME' (stream ended or cut).
function watchOnce(client, metadata, name, after, deadline, progress) {
  return new Promise((resolve, reject) => {
    const call = client.WatchOnboarding({ name, after_sequence: String(after) }, metadata, { deadline });
    let done = false;
    const finish = (fn, value) => {
      if (!done) {
        done = true;
        call.cancel();
        fn(value);
      }
    };
    call.on('data', (msg) => {
      let state;
      if (msg.message === 'snapshot') {
        state = msg.snapshot.state;
        progress.after = Math.max(progress.after, Number(msg.snapshot.sequence));
        console.log(`snapshot  seq=${msg.snapshot.sequence} state=${state}`);
      } else if (msg.message === 'event') {
        const e = msg.event;
        state = e.state;
        progress.after = Math.max(progress.after, Number(e.sequence));
        console.log(`event     seq=${e.sequence} ${e.type} state=${state}${e.reason ? ` (${e.reason})` : ''}`);
      } else {
        console.log(`heartbeat last_sequence=${msg.heartbeat.last_sequence}`);
        return;
      }
      if (state === 'ONBOARDING_STATE_LIVE') finish(resolve, 'LIVE');
      else if (TERMINAL.has(state)) finish(resolve, state);
    });
    call.on('error', (err) => {
      if (done) return;
      if (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED) {
        finish(resolve, 'RESUME');
      } else {
        finish(reject, err);
      }
    });
    call.on('end', () => finish(resolve, 'RESUME'));
  });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!opts.apiKey) {
    console.error('no API key: pass --api-key or set WA_ONBOARD_API_KEY');
    return 1;
  }
  const v1 = loadServices();
  const client = new v1.OnboardingService(opts.target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${opts.apiKey}`);
  const deadline = Date.now() + opts.timeout * 1000;
  try {
    let created;
    try {
      created = await createOnboarding(client, metadata, opts.account);
    } catch (err) {
      console.error(`CreateOnboarding failed: ${grpc.status[err.code]}: ${err.details}`);
      return 1;
    }
    console.log(`created ${created.name} state=${created.state}`);
    const progress = { after: 0 };
    for (;;) {
      if (Date.now() >= deadline) {
        console.error(`timeout: ${created.name} not LIVE after ${opts.timeout}s`);
        return 2;
      }
      let outcome;
      try {
        outcome = await watchOnce(client, metadata, created.name, progress.after, deadline, progress);
      } catch (err) {
        console.error(`WatchOnboarding failed: ${grpc.status[err.code]}: ${err.details}`);
        return 1;
      }
      if (outcome === 'LIVE') {
        console.log(`${created.name} is LIVE`);
        return 0;
      }
      if (outcome !== 'RESUME') {
        console.error(`${created.name} ended ${outcome}`);
        return 1;
      }
      if (Date.now() < deadline) {
        console.log(`stream ended; resuming after sequence ${progress.after}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  } finally {
    client.close();
  }
}

main().then((code) => process.exit(code), (err) => {
  console.error(err);
  process.exit(1);
});
