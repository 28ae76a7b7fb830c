// data-sync-js: the contract side. Runcell calls the exports of the
// `job-module-with-settings` world (wit/module.wit); this file answers `describe` and
// `settings`, and `run` hands each job a context as the Node.js platform did (settings, a
// JSON key-value store, a logger), then turns what the handler returns or throws into the
// run's output or error.

import { get as getSetting } from 'runcell:module/config@0.1.1';
import * as kv from 'runcell:module/kv@0.1.1';
import { write } from 'runcell:module/log@0.1.1';

import hourlySync, { DEFAULT_SOURCE, TransientError } from './hourly-sync.js';

const handlers = { 'hourly-sync': hourlySync };

export function describe() {
  return {
    name: 'data-sync-js',
    version: '0.1.0',
    description: "The Node.js platform's Hourly Data Sync, ported: fetches records from an upstream API, validates them and keeps a copy with a cursor.",
    jobs: [
      {
        name: 'hourly-sync',
        description: 'Fetches the records from source-url, validates them and stores each under record/{id}, with a sync cursor.',
        defaultSchedule: '0 * * * *',
        inputSchema: undefined,
        timeoutMs: 10000,
        fuel: undefined,
      },
    ],
    // The upstream of the original. An admin who points `source-url` elsewhere grants that
    // host too when approving (an extension of the grant).
    capabilities: { outboundHosts: ['api.example.com'], publishes: [], keyValue: true, routes: 'none' },
  };
}

export function settings() {
  return [
    {
      name: 'source-url',
      description: `The upstream API's records URL (default: ${DEFAULT_SOURCE}); its host must be granted.`,
      required: false,
      secret: false,
      jobs: ['hourly-sync'],
    },
  ];
}

export async function run(job, runContext, input) {
  const handler = handlers[job];
  if (!handler) {
    throw { tag: 'permanent', val: `no job named ${job}` };
  }
  const context = {
    executionId: runContext.executionId,
    attempt: runContext.attempt,
    trigger: runContext.trigger,
    scheduledAt: Number(runContext.scheduledAtMs),
    input: input ? JSON.parse(input) : null,
    settings: { get: getSetting },
    store,
    logger,
  };
  try {
    return JSON.stringify((await handler(context)) ?? null);
  } catch (err) {
    if (err?.tag) {
      throw err;
    }
    // The platform retried whatever a handler threw; here only what a retry may fix is.
    const tag = err instanceof TransientError ? 'transient' : 'permanent';
    throw { tag, val: err?.message ?? String(err) };
  }
}

/** The module's key-value store holding JSON values, as the handlers' `store`. */
const store = {
  get(key) {
    const bytes = storage(() => kv.get(key));
    return bytes ? JSON.parse(new TextDecoder().decode(bytes)) : undefined;
  },
  set(key, value) {
    storage(() => kv.set(key, new TextEncoder().encode(JSON.stringify(value))));
  },
};

/** A failed key-value call ends the run as transient: storage may come back. */
function storage(call) {
  try {
    return call();
  } catch (err) {
    const cause = err?.payload ?? err;
    throw { tag: 'transient', val: `key-value store: ${cause?.tag ?? cause}${cause?.val ? ` (${cause.val})` : ''}` };
  }
}

/** `logger.info(message, { field: value })`, each field a JSON value in the execution log. */
const logger = Object.fromEntries(
  ['trace', 'debug', 'info', 'warn', 'error'].map((level) => [
    level,
    (message, fields = {}) =>
      write(
        level,
        message,
        Object.entries(fields).map(([key, value]) => ({ key, value: JSON.stringify(value) ?? 'null' })),
      ),
  ]),
);
