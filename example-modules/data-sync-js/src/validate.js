// The batch rules of `data-sync` (example-modules/data-sync/src/logic.rs), in JavaScript.

/** Longest record id accepted, in characters. */
export const MAX_ID_CHARS = 128;

/** The first problem of a batch, as `records[i].field: what is wrong`, or null. */
export function validateBatch(records) {
  const firstIndexOfId = new Map();
  for (const [index, record] of records.entries()) {
    const problem = (field, what) => `records[${index}].${field}: ${what}`;
    if (typeof record !== 'object' || record === null) {
      return `records[${index}]: must be an object`;
    }
    if (typeof record.id !== 'string' || record.id === '') {
      return problem('id', 'must be a non-empty string');
    }
    if ([...record.id].length > MAX_ID_CHARS) {
      return problem('id', `must be at most ${MAX_ID_CHARS} characters`);
    }
    if (firstIndexOfId.has(record.id)) {
      return problem('id', `duplicates records[${firstIndexOfId.get(record.id)}].id (${JSON.stringify(record.id)})`);
    }
    firstIndexOfId.set(record.id, index);
    if (typeof record.name !== 'string' || record.name.trim() === '') {
      return problem('name', 'must not be empty');
    }
    if (typeof record.value !== 'number' || !Number.isFinite(record.value)) {
      return problem('value', 'must be a finite number');
    }
  }
  return null;
}
