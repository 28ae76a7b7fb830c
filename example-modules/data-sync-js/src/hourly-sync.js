// The Node.js platform's "Hourly Data Sync" handler, ported. It keeps that platform's
// shape: an async function given a context (settings, a key-value store, a logger) that
// returns its result or throws. `index.js` builds the context from Runcell's imports.
//
// Unlike the Rust `data-sync`, which is handed its batch as input, this one fetches the
// batch from the upstream API, as the original did.

import { validateBatch } from './validate.js';

/** Key of the sync cursor. */
export const CURSOR_KEY = 'sync/cursor';
/** Where the records come from when the job's `source-url` setting is not set. */
export const DEFAULT_SOURCE = 'https://api.example.com/v1/records';

/** A failure a later attempt may not see: upstream down or overloaded. */
export class TransientError extends Error {}

export default async function hourlySync(context) {
  const { logger, store, settings } = context;
  const source = settings.get('source-url') ?? DEFAULT_SOURCE;
  logger.info('sync started', { source, attempt: context.attempt, trigger: context.trigger });

  const records = await fetchRecords(source);
  const problem = validateBatch(records);
  if (problem) {
    throw new Error(`upstream sent an invalid batch: ${problem}`);
  }

  // The run's scheduled time, not the clock: a retried attempt of a tick writes the same.
  const syncedAt = new Date(context.scheduledAt).toISOString();
  for (const record of records) {
    store.set(`record/${record.id}`, {
      id: record.id,
      name: record.name,
      value: record.value,
      updatedAt: record.updatedAt ?? null,
      syncedAt,
    });
  }
  const previous = store.get(CURSOR_KEY);
  const cursor = {
    lastSyncedAt: syncedAt,
    totalSyncs: (previous?.totalSyncs ?? 0) + 1,
    lastBatchSize: records.length,
  };
  store.set(CURSOR_KEY, cursor);

  logger.info('sync completed', { recordsProcessed: records.length, totalSyncs: cursor.totalSyncs });
  return { recordsProcessed: records.length, syncedAt };
}

/** The upstream's records: `{"records": [...]}` or a bare array. */
async function fetchRecords(source) {
  let response;
  try {
    response = await fetch(source, { headers: { accept: 'application/json' } });
  } catch (err) {
    throw new TransientError(`cannot reach ${source}: ${err.message ?? err}`);
  }
  if (response.status >= 500 || response.status === 429) {
    throw new TransientError(`${source} answered ${response.status}`);
  }
  if (!response.ok) {
    throw new Error(`${source} answered ${response.status}`);
  }
  let body;
  try {
    body = await response.json();
  } catch (err) {
    throw new Error(`${source} answered with something that is not JSON: ${err.message}`);
  }
  const records = Array.isArray(body) ? body : body?.records;
  if (!Array.isArray(records)) {
    throw new Error(`${source} answered without a list of records`);
  }
  return records;
}
