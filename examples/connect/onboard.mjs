#!/usr/bin/env node
// wa-onboard from the official Connect client (@connectrpc/connect + @connectrpc/connect-node)
// with stubs from @bufbuild/protoc-gen-es: lists providers, checks an error's code and details,
// creates a Gupshup onboarding on the sandbox account and watches it until LIVE, over the
// Connect protocol (JSON or binary) or gRPC-Web, all on the gRPC port.
//
//   npm install
//   npx buf generate ../../proto --template buf.gen.yaml     # writes ./gen
//   node onboard.mjs --base-url http://localhost:50051 --api-key "$(cat ../../data/dev-api-key)" \
//     --protocol connect-json        # or connect-proto, grpc-web
//
// Exit status: 0 once LIVE; 1 on a terminal state or an error; 2 when --timeout passes first.

import { randomBytes } from 'node:crypto';
import { Code, ConnectError, createClient } from '@connectrpc/connect';
import { createConnectTransport, createGrpcWebTransport } from '@connectrpc/connect-node';
import { OnboardingState } from './gen/wa/onboard/v1/common_pb.js';
import { OnboardingService } from './gen/wa/onboard/v1/onboarding_pb.js';
import { ProviderService } from './gen/wa/onboard/v1/provider_pb.js';

function parseArgs(argv) {
  const opts = {
    baseUrl: process.env.WA_ONBOARD_BASE_URL || 'http://localhost:50051',
    apiKey: process.env.WA_ONBOARD_API_KEY || '',
    protocol: 'connect-json',
    timeout: 120,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--base-url') opts.baseUrl = value;
    else if (flag === '--api-key') opts.apiKey = value;
    else if (flag === '--protocol') opts.protocol = value;
    else if (flag === '--timeout') opts.timeout = Number(value);
    else {
      console.error(`unknown argument ${flag}`);
      process.exit(1);
    }
  }
  if (!['connect-json', 'connect-proto', 'grpc-web'].includes(opts.protocol)) {
    console.error(`--protocol must be connect-json, connect-proto or grpc-web, not ${opts.protocol}`);
    process.exit(1);
  }
  return opts;
}

function transport(opts) {
  // Every call carries the API key, as gRPC metadata would.
  const auth = (next) => (req) => {
    req.header.set('authorization', `Bearer ${opts.apiKey}`);
    return next(req);
  };
  const common = { baseUrl: opts.baseUrl, httpVersion: '1.1', interceptors: [auth] };
  if (opts.protocol === 'grpc-web') return createGrpcWebTransport(common);
  return createConnectTransport({ ...common, useBinaryFormat: opts.protocol === 'connect-proto' });
}

const TERMINAL = new Set([OnboardingState.FAILED, OnboardingState.EXPIRED, OnboardingState.CANCELLED]);

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const t = transport(opts);
  const providers = createClient(ProviderService, t);
  const onboardings = createClient(OnboardingService, t);

  const list = await providers.listProviders({});
  console.log(`[${opts.protocol}] ${list.providers.length} providers`);
  if (list.providers.length === 0) throw new Error('no providers');

  // A bad name: INVALID_ARGUMENT with its google.rpc.BadRequest detail.
  try {
    await onboardings.getOnboarding({ name: 'nope' });
    throw new Error('GetOnboarding("nope") succeeded');
  } catch (e) {
    const err = ConnectError.from(e);
    const types = err.details.map((d) => d.desc?.typeName ?? d.type);
    if (err.code !== Code.InvalidArgument || !types.includes('google.rpc.BadRequest')) {
      throw new Error(`expected invalid_argument with BadRequest, got ${Code[err.code]} ${types}: ${err.message}`);
    }
    console.log(`[${opts.protocol}] invalid name: ${Code[err.code]} with ${types.join(', ')}`);
  }

  const suffix = randomBytes(4).toString('hex');
  const created = await onboardings.createOnboarding({
    account: 'accounts/sandbox-gupshup',
    reference: `connect-example-${suffix}`,
    requestId: `connect-example-${suffix}`,
    request: {
      case: 'gupshup',
      value: {
        appName: `ConnectExample${suffix}`,
        wabaId: '104996122399160',
        // A phone per run: a phone's app belongs to one onboarding.
        phone: `+9197${String(parseInt(suffix, 16) % 1e8).padStart(8, '0')}`,
      },
    },
  });
  console.log(`[${opts.protocol}] created ${created.name} (${OnboardingState[created.state]})`);

  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), opts.timeout * 1000);
  try {
    let heartbeats = 0;
    const stream = onboardings.watchOnboarding({ name: created.name, afterSequence: 0n }, { signal: abort.signal });
    for await (const res of stream) {
      if (res.message.case === 'heartbeat') heartbeats += 1;
      if (res.message.case !== 'event') continue;
      const state = res.message.value.state;
      console.log(`[${opts.protocol}]   #${res.message.value.sequence} ${res.message.value.type} ${OnboardingState[state]}`);
      if (state === OnboardingState.LIVE) {
        const got = await onboardings.getOnboarding({ name: created.name });
        console.log(`[${opts.protocol}] ${got.name} is LIVE (${heartbeats} heartbeats seen)`);
        return 0;
      }
      if (TERMINAL.has(state)) {
        console.error(`[${opts.protocol}] ${created.name} ended ${OnboardingState[state]}`);
        return 1;
      }
    }
    console.error(`[${opts.protocol}] the stream ended before LIVE`);
    return 1;
  } catch (e) {
    if (abort.signal.aborted) {
      console.error(`[${opts.protocol}] not LIVE within ${opts.timeout}s`);
      return 2;
    }
    throw e;
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e instanceof Error ? e.stack : e);
    process.exit(1);
  },
);
