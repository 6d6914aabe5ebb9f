// @ts-check
// Unit tests of the Node producer that need no broker: buffer, message encoding, drops, and behaviour while
// RabbitMQ is unreachable. Run with `npm test` in producers/node (the Python integration tests run them too).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BATCH_ROUTING_KEY, Emitter, encodeMessage, Outbox } from '../index.js';

const NOWHERE = 'amqp://guest:guest@127.0.0.1:1/';
const quiet = { warn: () => {} };

/** @param {number} index */
function signal(index) {
  return { kind: 'signal', strategy: 'momentum', symbol: 'BTCUSDT', side: 'buy', confidence: index / 1000 };
}

test('the outbox hands events out oldest first, across compactions', () => {
  const outbox = new Outbox();
  for (let index = 0; index < 10_000; index++) outbox.push({ kind: 'k', index });
  /** @type {import('../index.js').TickbusEvent[]} */
  const taken = [];
  while (outbox.size > 0) outbox.takeInto(taken, 777);
  assert.equal(taken.length, 10_000);
  assert.deepEqual(
    taken.map((event) => event.index),
    [...Array(10_000).keys()],
  );
});

test('one event is sent as an object under its kind, several as a batch array', () => {
  const single = encodeMessage([{ kind: 'order', ts: 1, source: 's' }]);
  assert.equal(single.routingKey, 'order');
  assert.deepEqual(JSON.parse(single.body.toString()), { kind: 'order', ts: 1, source: 's' });
  const batch = encodeMessage([{ kind: 'order' }, { kind: 'trade' }]);
  assert.equal(batch.routingKey, BATCH_ROUTING_KEY);
  assert.deepEqual(
    JSON.parse(batch.body.toString()).map((/** @type {{kind: string}} */ event) => event.kind),
    ['order', 'trade'],
  );
});

test('emit fills in ts and source, keeps what the caller set', async () => {
  const emitter = new Emitter({ source: 'unit', url: NOWHERE, heartbeatIntervalMs: 0, logger: quiet });
  /** @type {import('../index.js').TickbusEvent} */
  const event = signal(1);
  const before = Date.now() / 1000;
  assert.equal(emitter.emit(event), true);
  assert.equal(event.source, 'unit');
  assert.ok(typeof event.ts === 'number' && event.ts >= before - 1 && event.ts <= Date.now() / 1000 + 1);
  /** @type {import('../index.js').TickbusEvent} */
  const own = { ...signal(2), ts: 123, source: 'other' };
  emitter.emit(own);
  assert.equal(own.ts, 123);
  assert.equal(own.source, 'other');
  await emitter.close(10);
});

test('a full buffer drops and counts without blocking or throwing, and heartbeats carry the count', async () => {
  const emitter = new Emitter({ source: 'unit', url: NOWHERE, maxBuffer: 100, heartbeatIntervalMs: 0, logger: quiet });
  const started = performance.now();
  let accepted = 0;
  for (let index = 0; index < 1000; index++) if (emitter.emit(signal(index))) accepted++;
  const elapsed = performance.now() - started;
  assert.equal(accepted, 100);
  assert.equal(emitter.accepted, 100);
  assert.equal(emitter.dropped, 900);
  assert.ok(elapsed < 200, `1000 emits took ${elapsed} ms`);
  const heartbeat = emitter.heartbeat();
  assert.equal(heartbeat.kind, 'heartbeat');
  assert.equal(heartbeat.dropped, 900);
  assert.equal(heartbeat.instance, emitter.instance);
  assert.equal(await emitter.close(10), false);
});

test('while the broker is unreachable, flush and close time out and report the error instead of throwing', async () => {
  /** @type {string[]} */
  const warnings = [];
  const emitter = new Emitter({
    source: 'unit',
    url: NOWHERE,
    heartbeatIntervalMs: 0,
    retryMaxMs: 50,
    logger: { warn: (message) => warnings.push(String(message)) },
  });
  emitter.emit(signal(1));
  assert.equal(await emitter.flush(400), false);
  assert.match(emitter.lastError, /ECONNREFUSED/);
  assert.equal(warnings.length, 1, 'one warning per outage, not one per retry');
  assert.equal(emitter.confirmed, 0);
  const started = performance.now();
  assert.equal(await emitter.close(300), false);
  assert.ok(performance.now() - started < 2000);
  assert.equal(emitter.emit(signal(2)), false, 'a closed emitter refuses and counts');
  assert.equal(emitter.dropped, 1);
});

test('options are checked', () => {
  // @ts-expect-error: source is required
  assert.throws(() => new Emitter({}), TypeError);
  assert.throws(() => new Emitter({ source: 's', batchSize: 0, url: NOWHERE }), RangeError);
});
