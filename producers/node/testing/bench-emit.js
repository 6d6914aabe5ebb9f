#!/usr/bin/env node
// @ts-check
/**
 * What emit() costs the caller, per event: N signal events emitted in a tight loop (best of 5 rounds), with
 * the publisher pointed at a broker (default: the local one) or at nothing (--url amqp://127.0.0.1:1/); then how
 * long close() took to get the rest confirmed.
 *
 *   node testing/bench-emit.js [--events 1000000] [--url amqp://guest:guest@127.0.0.1:5672/] [--exchange bench] [--close-timeout-ms 60000]
 */

import { parseArgs } from 'node:util';
import { DEFAULT_URL, Emitter } from '../index.js';

const { values } = parseArgs({
  options: {
    events: { type: 'string', default: '1000000' },
    url: { type: 'string', default: DEFAULT_URL },
    exchange: { type: 'string', default: 'tickbus.bench' },
    'close-timeout-ms': { type: 'string', default: '60000' },
  },
});
const count = Number(values.events);
const emitter = new Emitter({
  source: 'bench',
  url: values.url,
  exchange: values.exchange,
  maxBuffer: count * 5 + 1,
  heartbeatIntervalMs: 0,
  logger: { warn: () => {} },
});
let best = Infinity;
for (let round = 0; round < 5; round++) {
  const started = process.hrtime.bigint();
  for (let index = 0; index < count; index++) {
    emitter.emit({ kind: 'signal', strategy: 'momentum', symbol: 'BTCUSDT', side: 'buy', outcome: 'accepted', confidence: 0.8 });
  }
  best = Math.min(best, Number(process.hrtime.bigint() - started) / count);
  await new Promise((resolve) => setTimeout(resolve, 50));
}
const closing = performance.now();
const drained = await emitter.close(Number(values['close-timeout-ms']));
const seconds = (performance.now() - closing) / 1000;
const { accepted, dropped, confirmed, messages } = emitter;
const summary = { ns_per_emit: Math.round(best), accepted, dropped, confirmed, messages, drained };
console.log(JSON.stringify({ ...summary, drain_seconds: Number(seconds.toFixed(2)) }));
