// Test handler for end-to-end runs through aws-lambda-ric: what it does is chosen by the keys
// (dynamodb.Keys.pk.S) of the records it receives. Every invocation first appends one JSON line
// {"request_id", "pid", "keys", "event_ids"} to the file named by RECORD_LOG (when set; pid is this
// process's, so a restarted runtime shows), then, record by record in batch order:
//   slow*    awaits SLOW_MS milliseconds (default 5000)
//   crash*   exits the process with code 3, mid-batch, without answering the Runtime API
//   poison*  throws Error("poison record <key>") (the whole invocation fails)
//   partial* is reported in batchItemFailures (the first such record only, by SequenceNumber)
// and otherwise returns {batchItemFailures: []}. With INIT_FAIL set, loading this module throws.
'use strict';

const fs = require('node:fs');

if (process.env.INIT_FAIL) {
  throw new Error('init failed on purpose');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const keyOf = (record) => record?.dynamodb?.Keys?.pk?.S ?? null;

exports.handler = async (event, context) => {
  const records = event.Records ?? [];
  const keys = records.map(keyOf);
  if (process.env.RECORD_LOG) {
    const line = {
      request_id: context.awsRequestId,
      pid: process.pid,
      keys,
      event_ids: records.map((r) => r.eventID),
    };
    fs.appendFileSync(process.env.RECORD_LOG, JSON.stringify(line) + '\n');
  }
  const failures = [];
  for (const record of records) {
    const key = keyOf(record) ?? '';
    if (key.startsWith('slow')) {
      await sleep(Number(process.env.SLOW_MS ?? 5000));
    }
    if (key.startsWith('crash')) {
      process.exit(3);
    }
    if (key.startsWith('poison')) {
      throw new Error(`poison record ${key}`);
    }
    if (key.startsWith('partial') && failures.length === 0) {
      failures.push({ itemIdentifier: record.dynamodb.SequenceNumber });
    }
  }
  return { batchItemFailures: failures };
};
