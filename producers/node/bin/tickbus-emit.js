#!/usr/bin/env node
// @ts-check
/**
 * Emit tickbus events read from standard input (a JSON array, or one JSON object per line) with the Node
 * producer, wait for the broker's confirms, and print what happened as one JSON line:
 *   {"accepted":17,"dropped":0,"confirmed":17,"messages":1,"drained":true}
 * Exits 1 if not everything emitted was confirmed within --timeout-ms.
 *
 *   node bin/tickbus-emit.js --source desk-7 < events.jsonl
 *   echo '{"kind":"error","component":"feed","error_type":"gap"}' | node bin/tickbus-emit.js --source feed-1
 *
 * Over TLS: --url amqps://USER@broker:5671/ --ca-file ca.pem [--cert-file c.pem --key-file c.key]
 * --password-file secret (or TICKBUS_AMQP_URL, TICKBUS_AMQP_CA_FILE, TICKBUS_AMQP_CERT_FILE, TICKBUS_AMQP_KEY_FILE,
 * TICKBUS_AMQP_PASSWORD_FILE).
 */

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_EXCHANGE, DEFAULT_URL, Emitter } from '../index.js';

const { values } = parseArgs({
  options: {
    source: { type: 'string' },
    url: { type: 'string', default: process.env.TICKBUS_AMQP_URL ?? DEFAULT_URL },
    'ca-file': { type: 'string', default: process.env.TICKBUS_AMQP_CA_FILE ?? '' },
    'cert-file': { type: 'string', default: process.env.TICKBUS_AMQP_CERT_FILE ?? '' },
    'key-file': { type: 'string', default: process.env.TICKBUS_AMQP_KEY_FILE ?? '' },
    'password-file': { type: 'string', default: process.env.TICKBUS_AMQP_PASSWORD_FILE ?? '' },
    exchange: { type: 'string', default: process.env.TICKBUS_EXCHANGE ?? DEFAULT_EXCHANGE },
    version: { type: 'string', default: '' },
    'batch-size': { type: 'string', default: '1000' },
    'linger-ms': { type: 'string', default: '5' },
    'max-buffer': { type: 'string', default: '100000' },
    'heartbeat-ms': { type: 'string', default: '5000' },
    'retry-max-ms': { type: 'string', default: '5000' },
    'max-in-flight': { type: 'string', default: '64' },
    'timeout-ms': { type: 'string', default: '30000' },
  },
});

const source = values.source ?? process.env.TICKBUS_SOURCE;
if (!source) {
  process.stderr.write('error: --source (or TICKBUS_SOURCE) is required\n');
  process.exit(2);
}

const text = readFileSync(0, 'utf8').trim();
/** @type {import('../index.js').TickbusEvent[]} */
let events;
try {
  events = text.startsWith('[') ? JSON.parse(text) : text.split('\n').filter((line) => line.trim()).map((line) => JSON.parse(line));
} catch (error) {
  process.stderr.write(`error: standard input is not JSON: ${error instanceof Error ? error.message : error}\n`);
  process.exit(2);
}

/** @type {Emitter} */
let emitter;
try {
  emitter = new Emitter({
    source,
    url: values.url,
    caFile: values['ca-file'],
    certFile: values['cert-file'],
    keyFile: values['key-file'],
    passwordFile: values['password-file'],
    exchange: values.exchange,
    version: values.version,
    batchSize: Number(values['batch-size']),
    lingerMs: Number(values['linger-ms']),
    maxBuffer: Number(values['max-buffer']),
    heartbeatIntervalMs: Number(values['heartbeat-ms']),
    retryMaxMs: Number(values['retry-max-ms']),
    maxInFlight: Number(values['max-in-flight']),
  });
} catch (error) {
  process.stderr.write(`error: ${error instanceof Error ? error.message : error}\n`);
  process.exit(2);
}
// All in one tick, as a busy process would: the publisher cannot drain in between.
for (const event of events) emitter.emit(event);
const drained = await emitter.close(Number(values['timeout-ms']));
const { accepted, dropped, confirmed, messages } = emitter;
process.stdout.write(`${JSON.stringify({ accepted, dropped, confirmed, messages, drained })}\n`);
process.exit(drained ? 0 : 1);
