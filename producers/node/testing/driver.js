#!/usr/bin/env node
// @ts-check
/**
 * A scripted Node producer for the cross-language tests (tests/support/driver.py speaks to it): one JSON
 * command per line on standard input, one JSON reply per line on standard output.
 *
 *   argv[2]: the Emitter options as JSON
 *   {"op": "emit", "events": [...]}         emit them all in one tick; reply with how many it took and how long that took
 *   {"op": "flush", "timeout_ms": 10000}    wait for confirms
 *   {"op": "stats"}                         counters (in_flight, peak_in_flight too) and the last publishing error
 *   {"op": "close", "timeout_ms": 10000}    drain, last heartbeat, disconnect, exit
 */

import { createInterface } from 'node:readline';
import { Emitter } from '../index.js';

const options = JSON.parse(process.argv[2] ?? '{}');
const emitter = new Emitter({ ...options, logger: { warn: (/** @type {unknown[]} */ ...args) => console.error(...args) } });

function stats() {
  const { accepted, dropped, confirmed, messages, lastError, pending, inFlight, peakInFlight } = emitter;
  return {
    accepted, dropped, confirmed, messages, last_error: lastError, pending, in_flight: inFlight,
    peak_in_flight: peakInFlight,
  };
}

/** @param {Record<string, unknown>} reply */
function answer(reply) {
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  if (command.op === 'emit') {
    let accepted = 0;
    const started = process.hrtime.bigint();
    for (const event of command.events) if (emitter.emit(event)) accepted++;
    const elapsed = Number(process.hrtime.bigint() - started) / 1e6;
    answer({ op: 'emit', ...stats(), took: accepted, emit_ms: elapsed });
  } else if (command.op === 'flush') {
    const ok = await emitter.flush(command.timeout_ms ?? 10_000);
    answer({ op: 'flush', ok, ...stats() });
  } else if (command.op === 'stats') {
    answer({ op: 'stats', ...stats() });
  } else if (command.op === 'close') {
    const ok = await emitter.close(command.timeout_ms ?? 10_000);
    answer({ op: 'close', ok, ...stats() });
    process.exit(0);
  } else {
    answer({ op: 'error', error: `unknown op ${command.op}` });
  }
}
await emitter.close(1000);
