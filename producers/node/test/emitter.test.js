// @ts-check
// Unit tests of the Node producer that need no broker: buffer, message encoding, drops, and behaviour while
// RabbitMQ is unreachable. Run with `npm test` in producers/node (the Python integration tests run them too).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  BATCH_ROUTING_KEY,
  Emitter,
  encodeMessage,
  Outbox,
  publishConfirmed,
  ReturnedError,
  SettingsError,
  tlsFailure,
} from '../index.js';

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

test('connection settings that cannot work are refused, naming the option and never the password', () => {
  const cases = [
    [{ url: 'amqp://u@h/', caFile: 'ca.pem' }, /need an amqps:\/\/ url/],
    [{ url: 'amqps://u@h/', certFile: 'c.pem' }, /certFile and keyFile go together/],
    [{ url: 'amqps://u:secret@h/', passwordFile: 'pw' }, /the password is given twice/],
    [{ url: 'amqps://h/', passwordFile: 'pw' }, /passwordFile needs a user/],
    [{ url: 'http://u:secret@h/' }, /must start with amqp/],
  ];
  for (const [options, message] of cases) {
    assert.throws(
      () => new Emitter({ source: 's', ...options }),
      (/** @type {Error} */ error) => message.test(error.message) && !error.message.includes('secret'),
    );
  }
});

test('every message carries the connection user as user_id, which the broker checks', async () => {
  const emitter = new Emitter({
    source: 's',
    url: 'amqps://alice@127.0.0.1:1/',
    passwordFile: '/nonexistent',
    heartbeatIntervalMs: 0,
    logger: quiet,
  });
  emitter._outbox.push(signal(1));
  assert.ok(emitter._takeBatch());
  assert.equal(emitter._pending[0].options.userId, 'alice');
  await emitter.close(10);
  const guest = new Emitter({ source: 's', url: NOWHERE, logger: quiet });
  assert.equal(guest.userId, 'guest');
  await guest.close(10);
});

test('TLS refusals and unreadable settings say what to do', async () => {
  const settings = { url: 'amqps://u@10.0.0.1:5671/', caFile: '/x/ca.pem', certFile: '' };
  const untrusted = tlsFailure({ code: 'SELF_SIGNED_CERT_IN_CHAIN' }, settings);
  assert.equal(untrusted?.kind, 'tls-untrusted');
  assert.match(untrusted?.reason ?? '', /not signed by a CA in caFile \(\/x\/ca\.pem\).*set caFile/);
  const altnames = { subjectaltname: 'DNS:broker, IP Address:10.0.0.2' };
  const host = tlsFailure({ code: 'ERR_TLS_CERT_ALTNAME_INVALID', host: '10.0.0.1', cert: altnames }, settings);
  assert.match(host?.reason ?? '', /is for 'broker', '10\.0\.0\.2', not for '10\.0\.0\.1'/);
  const required = tlsFailure({ code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' }, settings);
  assert.match(required?.reason ?? '', /set certFile and keyFile/);
  assert.equal(tlsFailure(new Error('ECONNREFUSED'), settings), null);
  const emitter = new Emitter({ source: 's', url: NOWHERE, logger: quiet });
  const failure = emitter._failureOf(new SettingsError('passwordFile: cannot read /x'), null, 'signal');
  assert.deepEqual(failure, {
    kind: 'settings',
    reason: 'cannot connect with these settings: passwordFile: cannot read /x',
  });
  await emitter.close(10);
});

/**
 * A message as the emitter keeps it on its way.
 * @param {number} sequence
 * @returns {import('../index.js').Outgoing}
 */
function outgoing(sequence) {
  return {
    routingKey: 'signal',
    body: Buffer.from('{}'),
    options: { messageId: `abc-${sequence}` },
    events: 1,
    settled: false,
  };
}

/**
 * A confirm channel that answers every publish as the broker would with no queue bound: basic.return, then ack.
 * @param {import('amqplib').Options.Publish[]} published
 */
function unroutableChannel(published) {
  /** @type {import('../index.js').ChannelState} */
  const state = {
    returned: new Map(),
    closeError: null,
    // @ts-expect-error: only publish is used
    channel: {
      /**
       * @param {string} _exchange
       * @param {string} _routingKey
       * @param {Buffer} _body
       * @param {import('amqplib').Options.Publish} options
       * @param {(error: unknown) => void} callback
       */
      publish(_exchange, _routingKey, _body, options, callback) {
        published.push(options);
        state.returned.set(/** @type {string} */ (options.messageId), 'NO_ROUTE');
        setImmediate(() => callback(null));
        return true;
      },
    },
  };
  return state;
}

test('a publish is mandatory, and a message the broker returns then acks is not confirmed', async () => {
  /** @type {import('amqplib').Options.Publish[]} */
  const published = [];
  const state = unroutableChannel(published);
  await assert.rejects(publishConfirmed(state, 'desk', outgoing(1), 1000), ReturnedError);
  assert.equal(published[0].mandatory, true);
  assert.equal(state.returned.size, 0, 'the return is forgotten once its confirm arrived');
});

test('events count as confirmed only over a prefix of what was taken: flush skips no earlier message', async () => {
  const emitter = new Emitter({ source: 'unit', url: NOWHERE, heartbeatIntervalMs: 0, logger: quiet });
  const [first, second, third] = [outgoing(1), outgoing(2), outgoing(3)];
  emitter._window.push(first, second, third);
  emitter.inFlight = 3;
  emitter._finished(third, false, null);
  emitter._finished(second, false, null);
  assert.equal(emitter.confirmed, 0);
  emitter._finished(first, false, null);
  assert.equal(emitter.confirmed, 3);
  assert.equal(emitter.messages, 3);
  await emitter.close(10);
});

test('a returned message is held and retried with a capped backoff; failing, recovering: one line each', async () => {
  /** @type {string[]} */
  const lines = [];
  const emitter = new Emitter({
    source: 'unit', url: NOWHERE, exchange: 'desk', heartbeatIntervalMs: 0, retryMaxMs: 400,
    logger: { warn: (line) => lines.push(String(line)) },
  });
  const [first, second] = [outgoing(1), outgoing(2)];
  emitter._window.push(first, second);
  emitter.inFlight = 2;
  const returned = emitter._failureOf(new ReturnedError('NO_ROUTE', 'signal'), null, 'signal');
  emitter._finished(first, false, returned);
  emitter._finished(second, false, returned);
  assert.equal(emitter.confirmed, 0);
  assert.deepEqual(emitter._pending, [second, first]);
  const unroutable = "no queue is bound for routing key 'signal' on exchange 'desk' (returned as unroutable)";
  assert.equal(emitter.lastError, unroutable);
  const delays = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    emitter.inFlight++;
    emitter._finished(/** @type {import('../index.js').Outgoing} */ (emitter._pending.shift()), true, returned);
    delays.push(emitter._retryDelay);
  }
  assert.deepEqual(delays, [200, 400, 400, 400, 400]);
  assert.deepEqual(lines, [
    `tickbus: cannot publish to RabbitMQ: ${unroutable}; holding events and retrying`,
  ]);
  const closed = {
    channel: /** @type {any} */ (null),
    returned: new Map(),
    closeError: Object.assign(new Error('NOT_FOUND'), { code: 404 }),
  };
  const missing = emitter._failureOf(new Error('channel closed'), closed, 'signal');
  assert.equal(missing.reason, "exchange 'desk' does not exist (has the aggregator never run?)");

  emitter.inFlight++;
  emitter._finished(/** @type {import('../index.js').Outgoing} */ (emitter._pending.shift()), true, null);
  assert.equal(emitter.lastError, '');
  assert.equal(emitter.confirmed, 0, 'the other message is still held, and it came first');
  assert.match(lines[1], /^tickbus: publishing to RabbitMQ works again after /);
  emitter.inFlight++;
  emitter._finished(/** @type {import('../index.js').Outgoing} */ (emitter._pending.shift()), false, null);
  assert.equal(emitter.confirmed, 2);
  assert.equal(lines.length, 2);
  emitter._pending.length = 0;
  emitter._window.length = 0;
  await emitter.close(10);
});
