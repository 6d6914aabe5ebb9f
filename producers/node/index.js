// @ts-check
/**
 * tickbus producer for Node.js: emit() queues an event and returns at once; a background loop batches events
 * (by count and by a linger time), publishes them to the topic exchange with publisher confirms and persistent
 * delivery, retries with the same message id while the broker is away, and counts what it had to drop when
 * its bounded buffer was full. Heartbeats carry that drop count to the aggregator.
 *
 * The wire contract is docs/wire-format.md; this module follows the Python emitter (producers/emitter.py).
 *
 * @example
 *   import { Emitter } from '@tickbus/producer';
 *   const emitter = new Emitter({ source: 'momentum-1', version: '1.4.0' });
 *   emitter.emit({ kind: 'signal', strategy: 'momentum', symbol: 'BTCUSDT', side: 'buy', confidence: 0.8 });
 *   await emitter.close();
 */

import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';

export const DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/';
export const DEFAULT_EXCHANGE = 'metrics';
export const BATCH_ROUTING_KEY = 'batch';
export const CONTENT_TYPE_JSON = 'application/json';
export const MAX_BATCH_EVENTS = 10_000;

/**
 * One event: `kind` names its type (see schemas/events.schema.json); `ts` (seconds since the epoch) and
 * `source` are filled in by emit() when absent.
 * @typedef {{ kind: string, ts?: number, source?: string, [field: string]: unknown }} TickbusEvent
 */

/**
 * @typedef {object} EmitterOptions
 * @property {string} source Name of the emitting component (letters, digits, _ . : -).
 * @property {string} [url] RabbitMQ URL.
 * @property {string} [exchange] Topic exchange the aggregator consumes from.
 * @property {string} [version] Version reported in heartbeats.
 * @property {number} [maxBuffer] Events held while the broker is slow or away; past it emit() drops and counts.
 * @property {number} [batchSize] Most events per message (at most 10000).
 * @property {number} [lingerMs] How long an event may wait for others to share its message.
 * @property {number} [heartbeatIntervalMs] Heartbeat period; 0 sends none.
 * @property {number} [retryMaxMs] Longest wait between two attempts while the broker is away.
 * @property {number} [publishTimeoutMs] How long to wait for a confirm before reconnecting and retrying.
 * @property {{ warn: (...args: unknown[]) => void }} [logger] Where the one warning per outage goes.
 */

/** A FIFO with O(1) push and batched takes, compacted as it drains. */
export class Outbox {
  constructor() {
    /** @type {TickbusEvent[]} */
    this._items = [];
    this._head = 0;
  }

  get size() {
    return this._items.length - this._head;
  }

  /** @param {TickbusEvent} event */
  push(event) {
    this._items.push(event);
  }

  /**
   * Move up to `limit` events, oldest first, onto the end of `into`.
   * @param {TickbusEvent[]} into
   * @param {number} limit
   */
  takeInto(into, limit) {
    const end = Math.min(this._head + limit, this._items.length);
    for (let index = this._head; index < end; index++) into.push(this._items[index]);
    this._head = end;
    if (this._head === this._items.length) {
      this._items = [];
      this._head = 0;
    } else if (this._head > 4096 && this._head * 2 > this._items.length) {
      this._items = this._items.slice(this._head);
      this._head = 0;
    }
  }
}

/**
 * The routing key and body of one message: a single event as an object under its kind, several as a batch.
 * @param {TickbusEvent[]} events
 * @returns {{ routingKey: string, body: Buffer }}
 */
export function encodeMessage(events) {
  if (events.length === 1) {
    return { routingKey: events[0].kind, body: Buffer.from(JSON.stringify(events[0])) };
  }
  return { routingKey: BATCH_ROUTING_KEY, body: Buffer.from(JSON.stringify(events)) };
}

/**
 * Publish on a confirm channel and resolve once the broker confirms; reject on nack, close or timeout.
 * @param {import('amqplib').ConfirmChannel} channel
 * @param {string} exchange
 * @param {string} routingKey
 * @param {Buffer} body
 * @param {import('amqplib').Options.Publish} options
 * @param {number} timeoutMs
 * @returns {Promise<void>}
 */
function publishConfirmed(channel, exchange, routingKey, body, options, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no confirm within ${timeoutMs} ms`)), timeoutMs);
    try {
      channel.publish(exchange, routingKey, body, options, (error) => {
        clearTimeout(timer);
        if (error) reject(error instanceof Error ? error : new Error(String(error)));
        else resolve();
      });
    } catch (error) {
      clearTimeout(timer);
      reject(error);
    }
  });
}

/**
 * Close a connection, giving up after a second on a broker that does not answer (the socket is then destroyed).
 * @param {import('amqplib').ChannelModel} connection
 */
async function closeQuietly(connection) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const closed = connection.close().then(
    () => true,
    () => true,
  );
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), 1000);
  });
  if (!(await Promise.race([closed, late]))) {
    // @ts-ignore: the socket of a connection that does not answer its close handshake
    connection.connection?.stream?.destroy();
  }
  clearTimeout(timer);
}

/** @param {unknown} error */
function describe(error) {
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}

export class Emitter {
  /** @param {EmitterOptions} options */
  constructor(options) {
    if (!options || typeof options.source !== 'string' || options.source === '') {
      throw new TypeError('Emitter needs a non-empty `source`');
    }
    this.source = options.source;
    this.url = options.url ?? DEFAULT_URL;
    this.exchange = options.exchange ?? DEFAULT_EXCHANGE;
    this.version = options.version ?? '';
    this.maxBuffer = options.maxBuffer ?? 100_000;
    this.batchSize = Math.min(options.batchSize ?? 1000, MAX_BATCH_EVENTS);
    this.lingerMs = options.lingerMs ?? 5;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 5000;
    this.retryMaxMs = options.retryMaxMs ?? 5000;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 10_000;
    this.logger = options.logger ?? console;
    if (!(this.batchSize >= 1) || !(this.maxBuffer >= 1)) throw new RangeError('batchSize and maxBuffer must be >= 1');

    /** A random id of this emitter's lifetime: message ids are `<instance>-<sequence>`. */
    this.instance = randomBytes(6).toString('hex');
    this.startedAt = Date.now() / 1000;
    /** Events emit() took into the buffer. */
    this.accepted = 0;
    /** Events emit() refused because the buffer was full (or the emitter was closed). */
    this.dropped = 0;
    /** Events the broker confirmed (heartbeats not counted). */
    this.confirmed = 0;
    /** Messages published and confirmed, heartbeats included. */
    this.messages = 0;
    /** The last publishing error while the broker is away; empty once publishing works. */
    this.lastError = '';

    this._outbox = new Outbox();
    this._sequence = 0;
    this._lastHeartbeat = -Infinity;
    this._closing = false;
    this._closed = false;
    this._aborted = false;
    /** @type {import('amqplib').ChannelModel | null} */
    this._connection = null;
    /** @type {import('amqplib').ConfirmChannel | null} */
    this._channel = null;
    /** @type {(() => void) | null} */
    this._wake = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._lingerTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._idleTimer = null;
    /** @type {(() => void) | null} */
    this._cancelSleep = null;
    /** @type {{ target: number, resolve: (ok: boolean) => void }[]} */
    this._flushWaiters = [];
    this._wakeNow = () => {
      const wake = this._wake;
      if (wake === null) return;
      this._wake = null;
      if (this._lingerTimer !== null) clearTimeout(this._lingerTimer);
      if (this._idleTimer !== null) clearTimeout(this._idleTimer);
      this._lingerTimer = null;
      this._idleTimer = null;
      wake();
    };
    this._loop = this._run().catch((error) => {
      this.lastError = describe(error);
      this.logger.warn(`tickbus: publisher stopped: ${this.lastError}`);
    });
  }

  /** Events waiting in the buffer. */
  get pending() {
    return this._outbox.size;
  }

  /**
   * Queue an event; false (and counted as dropped) if the buffer is full. Never blocks, never throws for the
   * broker. Fills in `ts` and `source` on the object when absent; do not change the object after emitting it.
   * @param {TickbusEvent} event
   * @returns {boolean}
   */
  emit(event) {
    const outbox = this._outbox;
    if (outbox.size >= this.maxBuffer || this._closing) {
      this.dropped++;
      return false;
    }
    if (event.ts === undefined) event.ts = Date.now() / 1000;
    if (event.source === undefined) event.source = this.source;
    outbox.push(event);
    this.accepted++;
    if (this._wake !== null) {
      if (outbox.size >= this.batchSize) this._wakeNow();
      else if (this._lingerTimer === null) this._lingerTimer = setTimeout(this._wakeNow, this.lingerMs);
    }
    return true;
  }

  /** The heartbeat this emitter sends: liveness, version, instance, the cumulative drop count and the process's memory and CPU. */
  heartbeat() {
    /** @type {TickbusEvent} */
    const event = { kind: 'heartbeat', ts: Date.now() / 1000, source: this.source };
    if (this.version) event.version = this.version;
    event.instance = this.instance;
    event.started_at = this.startedAt;
    event.dropped = this.dropped;
    event.resident_memory_bytes = process.memoryUsage.rss();
    const cpu = process.cpuUsage();
    event.cpu_seconds = (cpu.user + cpu.system) / 1e6;
    return event;
  }

  /**
   * Wait until every event emitted so far is confirmed by the broker.
   * @param {number} [timeoutMs]
   * @returns {Promise<boolean>} false on timeout
   */
  flush(timeoutMs = 30_000) {
    const target = this.accepted;
    if (this.confirmed >= target) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = { target, resolve: (/** @type {boolean} */ ok) => resolve(ok) };
      const timer = setTimeout(() => {
        this._flushWaiters = this._flushWaiters.filter((other) => other !== waiter);
        resolve(false);
      }, timeoutMs);
      waiter.resolve = (ok) => {
        clearTimeout(timer);
        resolve(ok);
      };
      this._flushWaiters.push(waiter);
    });
  }

  /**
   * Drain the buffer, send a last heartbeat (with the final drop count) and disconnect.
   * @param {number} [timeoutMs]
   * @returns {Promise<boolean>} false if it could not drain in time (what was left is lost)
   */
  async close(timeoutMs = 30_000) {
    if (this._closed) return this._outbox.size === 0;
    this._closing = true;
    this._lastHeartbeat = -Infinity;
    this._wakeNow();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const drained = await Promise.race([this._loop.then(() => !this._aborted), timedOut]);
    clearTimeout(timer);
    if (!drained) {
      this._aborted = true;
      this._cancelSleep?.();
      this._wakeNow();
    }
    this._closed = true;
    await this._disconnect();
    for (const waiter of this._flushWaiters.splice(0)) waiter.resolve(this.confirmed >= waiter.target);
    return Boolean(drained) && this._outbox.size === 0;
  }

  async _run() {
    while (!this._aborted) {
      /** @type {TickbusEvent[]} */
      const batch = [];
      const now = performance.now();
      if (this.heartbeatIntervalMs > 0 && now - this._lastHeartbeat >= this.heartbeatIntervalMs) {
        this._lastHeartbeat = now;
        batch.push(this.heartbeat());
      }
      const ownHeartbeats = batch.length;
      this._outbox.takeInto(batch, this.batchSize - ownHeartbeats);
      if (batch.length > 0) {
        if (!(await this._publish(batch))) return;
        this.messages++;
        this.confirmed += batch.length - ownHeartbeats;
        this._settleFlushes();
      } else if (this._closing) {
        return;
      } else {
        await this._idle();
      }
    }
    await this._disconnect();
  }

  /** Wait for work: an emit() (after the linger time, or at once when a batch is full), a heartbeat, close(). */
  _idle() {
    return new Promise((resolve) => {
      this._wake = () => resolve(undefined);
      if (this.heartbeatIntervalMs > 0) {
        const due = this._lastHeartbeat + this.heartbeatIntervalMs - performance.now();
        this._idleTimer = setTimeout(this._wakeNow, Math.max(0, due));
        this._idleTimer.unref();
      }
    });
  }

  _settleFlushes() {
    if (this._flushWaiters.length === 0) return;
    const still = [];
    for (const waiter of this._flushWaiters) {
      if (this.confirmed >= waiter.target) waiter.resolve(true);
      else still.push(waiter);
    }
    this._flushWaiters = still;
  }

  /**
   * Publish one message and wait for its confirm; retry the same message (same id) until confirmed.
   * @param {TickbusEvent[]} batch
   * @returns {Promise<boolean>} false only when close() gave up
   */
  async _publish(batch) {
    this._sequence++;
    const { routingKey, body } = encodeMessage(batch);
    /** @type {import('amqplib').Options.Publish} */
    const options = {
      persistent: true,
      contentType: CONTENT_TYPE_JSON,
      messageId: `${this.instance}-${this._sequence}`,
      timestamp: Math.floor(Date.now() / 1000),
      appId: this.source,
    };
    let delay = 100;
    while (!this._aborted) {
      try {
        const channel = await this._ensureChannel();
        await publishConfirmed(channel, this.exchange, routingKey, body, options, this.publishTimeoutMs);
        this.lastError = '';
        return true;
      } catch (error) {
        if (!this.lastError) this.logger.warn(`tickbus: cannot publish to RabbitMQ (${describe(error)}); retrying`);
        this.lastError = describe(error);
        await this._disconnect();
        await this._sleep(delay);
        delay = Math.min(delay * 2, this.retryMaxMs);
      }
    }
    return false;
  }

  /** @returns {Promise<import('amqplib').ConfirmChannel>} */
  async _ensureChannel() {
    if (this._channel !== null) return this._channel;
    if (this._connection === null) {
      const connection = await amqp.connect(this.url, {
        timeout: 5000,
        noDelay: true,
        clientProperties: { connection_name: `tickbus-producer ${this.source}` },
      });
      if (this._aborted) {
        await closeQuietly(connection);
        throw new Error('emitter closed');
      }
      connection.on('error', () => {}); // 'close' follows and is handled there
      connection.on('close', () => {
        if (this._connection === connection) {
          this._connection = null;
          this._channel = null;
        }
      });
      this._connection = connection;
    }
    const channel = await this._connection.createConfirmChannel();
    channel.on('error', () => {});
    channel.on('close', () => {
      if (this._channel === channel) this._channel = null;
    });
    await channel.assertExchange(this.exchange, 'topic', { durable: true });
    this._channel = channel;
    return channel;
  }

  async _disconnect() {
    const connection = this._connection;
    this._connection = null;
    this._channel = null;
    if (connection !== null) await closeQuietly(connection);
  }

  /** @param {number} ms */
  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        resolve(undefined);
      }
      this._cancelSleep = () => {
        clearTimeout(timer);
        resolve(undefined);
      };
    });
  }
}
