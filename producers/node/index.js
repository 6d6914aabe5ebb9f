// @ts-check
/**
 * tickbus producer for Node.js: emit() queues an event and returns at once; a background loop batches events
 * (by count and by a linger time) and publishes them to the topic exchange, persistent and mandatory, with up to
 * `maxInFlight` messages awaiting their publisher confirms at once. A message is settled only once the broker
 * confirmed it and routed it to a queue: one it returns (no queue bound yet), nacks or never confirms, or one
 * lost with its channel or connection, is held and published again with the same message id, with a capped
 * backoff, while new events wait in the bounded buffer; when that is full, emit() drops and counts, and
 * heartbeats carry the count to the aggregator. Each change of state is logged once.
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
import { readFileSync } from 'node:fs';
import amqp from 'amqplib';

export const DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/';
export const DEFAULT_EXCHANGE = 'metrics';
export const BATCH_ROUTING_KEY = 'batch';
export const CONTENT_TYPE_JSON = 'application/json';
export const MAX_BATCH_EVENTS = 10_000;
const FIRST_RETRY_MS = 100;
const EMPTY = Buffer.alloc(0);

/**
 * One event: `kind` names its type (see schemas/events.schema.json); `ts` (seconds since the epoch) and
 * `source` are filled in by emit() when absent.
 * @typedef {{ kind: string, ts?: number, source?: string, [field: string]: unknown }} TickbusEvent
 */

/**
 * @typedef {object} EmitterOptions
 * @property {string} source Name of the emitting component (letters, digits, _ . : -).
 * @property {string} [url] RabbitMQ URL: amqp:// or amqps:// (TLS; the host must be a name in the broker's
 *   certificate, which is always verified).
 * @property {string} [caFile] amqps://: the CA certificate (PEM) that signed the broker's (default: Node's CAs).
 * @property {string} [certFile] amqps://: a client certificate (PEM) for a broker that asks for one; with keyFile.
 * @property {string} [keyFile] The client certificate's private key (PEM, unencrypted).
 * @property {string} [passwordFile] A file holding the password of the URL's user (a Docker or Kubernetes
 *   secret), read at each connection; the URL then carries none.
 * @property {string} [exchange] Topic exchange the aggregator consumes from.
 * @property {string} [version] Version reported in heartbeats.
 * @property {number} [maxBuffer] Events held while the broker is slow or away; past it emit() drops and counts.
 * @property {number} [batchSize] Most events per message (at most 10000).
 * @property {number} [lingerMs] How long an event may wait for others to share its message.
 * @property {number} [heartbeatIntervalMs] Heartbeat period; 0 sends none.
 * @property {number} [retryMaxMs] Longest wait between two attempts while the broker is away.
 * @property {number} [publishTimeoutMs] How long to wait for a confirm before reconnecting and retrying.
 * @property {number} [maxInFlight] Most messages awaiting their confirms at once (64).
 * @property {{ warn: (...args: unknown[]) => void }} [logger] Where the one line per change of state goes (failing,
 *   failing for another reason, working again).
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
 * A confirm channel with what the emitter learns about it: the messages the broker returned on it (by message
 * id) and the error it was closed with, if any.
 * @typedef {object} ChannelState
 * @property {import('amqplib').ConfirmChannel} channel
 * @property {Map<string, string>} returned reply text by message id, until the message's confirm arrives
 * @property {(Error & { code?: number }) | null} closeError
 */

/**
 * Why publishing does not work: `kind` tells one state from another, `reason` says it to a person.
 * @typedef {{ kind: string, reason: string }} Failure
 */

/**
 * One message on its way: settled once the broker confirmed it and routed it to a queue.
 * @typedef {object} Outgoing
 * @property {string} routingKey
 * @property {Buffer} body
 * @property {import('amqplib').Options.Publish} options
 * @property {number} events emitted events it holds (its heartbeat not counted)
 * @property {boolean} settled
 */

/** The broker returned a mandatory message: no queue is bound for its routing key. */
export class ReturnedError extends Error {
  /**
   * @param {string} replyText
   * @param {string} routingKey
   */
  constructor(replyText, routingKey) {
    super(`message returned as unroutable (${replyText}) for routing key ${routingKey}`);
    this.name = 'ReturnedError';
    this.routingKey = routingKey;
  }
}

/**
 * Publish mandatory on a confirm channel; resolve once the broker confirms and routed it, reject when it
 * returns or nacks it, when the channel closes, or on timeout.
 * @param {ChannelState} state
 * @param {string} exchange
 * @param {Outgoing} outgoing
 * @param {number} timeoutMs
 * @returns {Promise<void>}
 */
export function publishConfirmed(state, exchange, outgoing, timeoutMs) {
  const { routingKey, body, options } = outgoing;
  const messageId = /** @type {string} */ (options.messageId);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no confirm within ${timeoutMs} ms`)), timeoutMs);
    try {
      state.channel.publish(exchange, routingKey, body, { ...options, mandatory: true }, (error) => {
        clearTimeout(timer);
        // The broker sends basic.return before the ack of the same message, so the return is known by now.
        const returned = state.returned.get(messageId);
        state.returned.delete(messageId);
        if (error) reject(error instanceof Error ? error : new Error(String(error)));
        else if (returned !== undefined) reject(new ReturnedError(returned, routingKey));
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

/** A connection setting (the password file, a TLS file) cannot be used; the message names it. */
export class SettingsError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'SettingsError';
  }
}

/**
 * @param {string} path
 * @param {string} option
 */
function readSetting(path, option) {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new SettingsError(`${option}: cannot read ${path} (${describe(error)})`);
  }
}

// OpenSSL's words for a broker certificate signed by no CA the client trusts.
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

/**
 * What a TLS failure means and what to do, or null if `error` is not one.
 * @param {unknown} error
 * @param {{ url: string, caFile: string, certFile: string }} settings
 * @returns {Failure | null}
 */
export function tlsFailure(error, settings) {
  /** @typedef {{ code?: string, host?: string, cert?: { subjectaltname?: string }, message?: string }} TlsError */
  const { code, host, cert, message } = /** @type {TlsError} */ (error ?? {});
  if (code === undefined) return null;
  if (UNTRUSTED.has(code)) {
    const where = settings.caFile ? `a CA in caFile (${settings.caFile})` : 'a CA Node trusts (caFile is unset)';
    return {
      kind: 'tls-untrusted',
      reason:
        `TLS: the broker's certificate is not signed by ${where} (${code}): ` +
        'set caFile to the CA certificate that issued it',
    };
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const held = (cert?.subjectaltname ?? '')
      .split(', ')
      .filter((name) => name)
      .map((name) => `'${name.replace(/^(DNS|IP Address):/, '')}'`)
      .join(', ');
    const wanted = host ?? new URL(settings.url).hostname;
    return {
      kind: 'tls-host',
      reason:
        `TLS: the broker's certificate is for ${held || 'names not given'}, not for '${wanted}' ` +
        '(the host in the url): connect by a name the certificate holds, ' +
        `or give the broker a certificate that names '${wanted}'`,
    };
  }
  if (code.includes('CERTIFICATE_REQUIRED')) {
    return {
      kind: 'tls-client',
      reason: `TLS: the broker asks for a client certificate (${code}): set certFile and keyFile`,
    };
  }
  if (code.includes('ALERT_UNKNOWN_CA') || code.includes('ALERT_BAD_CERTIFICATE')) {
    return {
      kind: 'tls-client',
      reason:
        `TLS: the broker refused the client certificate in certFile (${settings.certFile}) (${code}): ` +
        'it must be signed by a CA the broker trusts',
    };
  }
  if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || code.startsWith('CERT_')) {
    return { kind: 'tls', reason: `TLS: ${message ?? code}` };
  }
  return null;
}

export class Emitter {
  /** @param {EmitterOptions} options */
  constructor(options) {
    if (!options || typeof options.source !== 'string' || options.source === '') {
      throw new TypeError('Emitter needs a non-empty `source`');
    }
    this.source = options.source;
    this.url = options.url ?? DEFAULT_URL;
    this.caFile = options.caFile ?? '';
    this.certFile = options.certFile ?? '';
    this.keyFile = options.keyFile ?? '';
    this.passwordFile = options.passwordFile ?? '';
    const parsed = new URL(this.url);
    if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
      throw new TypeError('url must start with amqp:// or amqps://');
    }
    if ((this.caFile || this.certFile || this.keyFile) && parsed.protocol !== 'amqps:') {
      throw new TypeError("caFile, certFile and keyFile need an amqps:// url (the broker's TLS port, 5671 by default)");
    }
    if (Boolean(this.certFile) !== Boolean(this.keyFile)) {
      throw new TypeError('certFile and keyFile go together (the client certificate and its private key)');
    }
    if (this.passwordFile && parsed.password !== '') {
      throw new TypeError('the password is given twice: in the url and in passwordFile; keep one');
    }
    if (this.passwordFile && parsed.username === '') {
      throw new TypeError('passwordFile needs a user in the url (amqps://USER@host:5671/)');
    }
    /** The RabbitMQ user it connects as: every message's user_id, which the broker checks (authenticated sources). */
    this.userId = parsed.username ? decodeURIComponent(parsed.username) : 'guest';
    this.exchange = options.exchange ?? DEFAULT_EXCHANGE;
    this.version = options.version ?? '';
    this.maxBuffer = options.maxBuffer ?? 100_000;
    this.batchSize = Math.min(options.batchSize ?? 1000, MAX_BATCH_EVENTS);
    this.lingerMs = options.lingerMs ?? 5;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 5000;
    this.retryMaxMs = options.retryMaxMs ?? 5000;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 10_000;
    this.maxInFlight = options.maxInFlight ?? 64;
    this.logger = options.logger ?? console;
    if (!(this.batchSize >= 1) || !(this.maxBuffer >= 1) || !(this.maxInFlight >= 1)) {
      throw new RangeError('batchSize, maxBuffer and maxInFlight must be >= 1');
    }

    /** A random id of this emitter's lifetime: message ids are `<instance>-<sequence>`. */
    this.instance = randomBytes(6).toString('hex');
    this.startedAt = Date.now() / 1000;
    /** Events emit() took into the buffer. */
    this.accepted = 0;
    /** Events emit() refused because the buffer was full (or the emitter was closed). */
    this.dropped = 0;
    /** Events settled, oldest first: the broker confirmed them and routed them to a queue (heartbeats not counted). */
    this.confirmed = 0;
    /** Messages confirmed and routed, heartbeats included. */
    this.messages = 0;
    /** Publishes awaiting their confirms now, and the most there ever were at once (at most maxInFlight). */
    this.inFlight = 0;
    this.peakInFlight = 0;
    /** Why publishing fails; empty while it works. */
    this.lastError = '';

    this._outbox = new Outbox();
    this._sequence = 0;
    this._lastHeartbeat = -Infinity;
    this._closing = false;
    this._closed = false;
    this._aborted = false;
    /** Every message taken and not yet settled, in the order taken; and those waiting to be (re)published. */
    /** @type {Outgoing[]} */
    this._window = [];
    /** @type {Outgoing[]} */
    this._pending = [];
    /** @type {Failure | null} */
    this._failure = null;
    this._failingSince = 0;
    this._retryDelay = FIRST_RETRY_MS;
    this._retryAt = 0;
    /** @type {import('amqplib').ChannelModel | null} */
    this._connection = null;
    /** @type {Promise<import('amqplib').ChannelModel> | null} */
    this._connecting = null;
    /** @type {ChannelState | null} */
    this._channel = null;
    /** @type {Promise<ChannelState> | null} */
    this._opening = null;
    /** @type {(() => void) | null} wakes the publisher loop when an emit() gives it work */
    this._wake = null;
    /** @type {(() => void) | null} wakes it for anything: a confirm, close() */
    this._wakeLoop = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._lingerTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._idleTimer = null;
    /** @type {{ target: number, resolve: (ok: boolean) => void }[]} */
    this._flushWaiters = [];
    this._wakeNow = () => {
      const wake = this._wakeLoop;
      if (wake === null) return;
      this._wake = null;
      this._wakeLoop = null;
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
   * Wait until every event emitted so far is confirmed by the broker and routed to a queue.
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
    if (this._closed) return this._outbox.size === 0 && this._window.length === 0;
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
      this._wakeNow();
      const lost = this.accepted - this.confirmed;
      if (lost > 0) {
        this.logger.warn(`tickbus: closed with ${lost} emitted events undelivered (${this.lastError || 'timeout'})`);
      }
    }
    this._closed = true;
    await this._disconnect();
    for (const waiter of this._flushWaiters.splice(0)) waiter.resolve(this.confirmed >= waiter.target);
    return Boolean(drained) && this._outbox.size === 0;
  }

  _heartbeatDue() {
    return this.heartbeatIntervalMs > 0 && performance.now() - this._lastHeartbeat >= this.heartbeatIntervalMs;
  }

  async _run() {
    while (!this._aborted) {
      this._fillWindow();
      if (this._closing && this._window.length === 0 && this._outbox.size === 0 && !this._heartbeatDue()) break;
      await this._idle();
    }
    await this._disconnect();
  }

  /** Start publishes: while failing, one probe after the backoff; else held messages first, then new batches. */
  _fillWindow() {
    if (this._failure !== null) {
      if (this.inFlight === 0 && this._pending.length > 0 && performance.now() >= this._retryAt) {
        this._start(/** @type {Outgoing} */ (this._pending.shift()), true);
      }
      return;
    }
    while (this.inFlight < this.maxInFlight) {
      if (this._pending.length === 0 && !this._takeBatch()) return;
      this._start(/** @type {Outgoing} */ (this._pending.shift()), false);
    }
  }

  /** The next batch from the buffer (and a heartbeat, when due) as a pending message; false if there is none. */
  _takeBatch() {
    /** @type {TickbusEvent[]} */
    const batch = [];
    if (this._heartbeatDue()) {
      this._lastHeartbeat = performance.now();
      batch.push(this.heartbeat());
    }
    const ownHeartbeats = batch.length;
    this._outbox.takeInto(batch, this.batchSize - ownHeartbeats);
    if (batch.length === 0) return false;
    this._sequence++;
    const { routingKey, body } = encodeMessage(batch);
    /** @type {Outgoing} */
    const outgoing = {
      routingKey,
      body,
      options: {
        persistent: true,
        contentType: CONTENT_TYPE_JSON,
        messageId: `${this.instance}-${this._sequence}`,
        timestamp: Math.floor(Date.now() / 1000),
        appId: this.source,
        // Sharded deployments route every message of one source to one aggregator replica by this header.
        headers: { 'x-tickbus-source': this.source },
        userId: this.userId,
      },
      events: batch.length - ownHeartbeats,
      settled: false,
    };
    this._window.push(outgoing);
    this._pending.push(outgoing);
    return true;
  }

  /** Wait for something to do: a confirm, an emit() (after the linger time, or at once when a batch is full),
   * a heartbeat or a retry falling due, close(). */
  _idle() {
    return new Promise((resolve) => {
      const wake = () => resolve(undefined);
      this._wakeLoop = wake;
      let due = Infinity;
      if (this._failure !== null) {
        if (this.inFlight === 0) due = Math.max(0, this._retryAt - performance.now());
      } else if (this.inFlight < this.maxInFlight) {
        this._wake = wake;
        if (this.heartbeatIntervalMs > 0) {
          due = Math.max(0, this._lastHeartbeat + this.heartbeatIntervalMs - performance.now());
        }
      }
      if (due !== Infinity) {
        this._idleTimer = setTimeout(this._wakeNow, due);
        // A retry keeps the process alive (what was emitted is still to be delivered); a heartbeat alone does not.
        if (this._failure === null) this._idleTimer.unref();
      }
    });
  }

  /**
   * @param {Outgoing} outgoing
   * @param {boolean} probe
   */
  _start(outgoing, probe) {
    this.inFlight++;
    if (this.inFlight > this.peakInFlight) this.peakInFlight = this.inFlight;
    this._attempt(outgoing).then(
      () => this._finished(outgoing, probe, null),
      (/** @type {Failure} */ failure) => this._finished(outgoing, probe, failure),
    );
  }

  /**
   * One attempt; rejects with the Failure when it was not confirmed and routed.
   * @param {Outgoing} outgoing
   * @returns {Promise<void>}
   */
  async _attempt(outgoing) {
    /** @type {ChannelState | null} */
    let state = null;
    try {
      state = await this._ensureChannel();
      await publishConfirmed(state, this.exchange, outgoing, this.publishTimeoutMs);
    } catch (error) {
      const failure = this._failureOf(error, state, outgoing.routingKey);
      // A broker that does not confirm may hold a dead connection: the next attempt starts afresh.
      if (failure.kind === 'timeout') await this._disconnect();
      throw failure;
    }
  }

  /**
   * @param {Outgoing} outgoing
   * @param {boolean} probe
   * @param {Failure | null} failure
   */
  _finished(outgoing, probe, failure) {
    this.inFlight--;
    if (this._aborted) return;
    this._wakeNow();
    if (failure === null) {
      outgoing.settled = true;
      outgoing.body = EMPTY; // it may wait in the window behind an earlier message: keep no body
      this.messages++;
      this._advance();
      if (probe && this._failure !== null) {
        const seconds = ((performance.now() - this._failingSince) / 1000).toFixed(1);
        this.logger.warn(`tickbus: publishing to RabbitMQ works again after ${seconds} s; resending what was held`);
        this._failure = null;
        this.lastError = '';
        this._retryDelay = FIRST_RETRY_MS;
      }
      return;
    }
    this._pending.unshift(outgoing);
    const now = performance.now();
    if (this._failure === null) {
      this.logger.warn(`tickbus: cannot publish to RabbitMQ: ${failure.reason}; holding events and retrying`);
      this._failingSince = now;
      this._retryDelay = FIRST_RETRY_MS;
    } else if (failure.kind !== this._failure.kind) {
      this.logger.warn(`tickbus: still cannot publish to RabbitMQ, now: ${failure.reason}`);
    }
    if (probe) this._retryDelay = Math.min(this._retryDelay * 2, this.retryMaxMs);
    this._failure = failure;
    this.lastError = failure.reason;
    this._retryAt = now + this._retryDelay;
  }

  _advance() {
    let settled = 0;
    while (settled < this._window.length && this._window[settled].settled) {
      this.confirmed += this._window[settled].events;
      settled++;
    }
    if (settled === 0) return;
    this._window.splice(0, settled);
    this._settleFlushes();
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
   * @param {unknown} error
   * @param {ChannelState | null} state
   * @param {string} routingKey
   * @returns {Failure}
   */
  _failureOf(error, state, routingKey) {
    const exchange = this.exchange;
    if (error instanceof SettingsError) {
      return { kind: 'settings', reason: `cannot connect with these settings: ${error.message}` };
    }
    const tls = tlsFailure(error, this);
    if (tls !== null) return tls;
    if (error instanceof ReturnedError) {
      return {
        kind: `returned:${routingKey}`,
        reason: `no queue is bound for routing key '${routingKey}' on exchange '${exchange}' (returned as unroutable)`,
      };
    }
    const closed = state?.closeError;
    if (closed?.code === 404) {
      return { kind: 'no-exchange', reason: `exchange '${exchange}' does not exist (has the aggregator never run?)` };
    }
    if (closed?.code === 403) return { kind: 'refused', reason: `access refused (${closed.message})` };
    const text = describe(error);
    if (text === 'message nacked') return { kind: 'nacked', reason: 'the broker nacked the message' };
    if (text.startsWith('no confirm within')) return { kind: 'timeout', reason: text };
    if (/ACCESS_REFUSED|403/.test(text)) {
      const where = this.passwordFile ? ` (password from ${this.passwordFile})` : '';
      return { kind: 'login', reason: `RabbitMQ refused the login of user '${this.userId}'${where} (${text})` };
    }
    return { kind: 'unreachable', reason: `RabbitMQ is unreachable (${text})` };
  }

  /** @returns {Promise<import('amqplib').ChannelModel>} */
  async _ensureConnection() {
    if (this._connection !== null) return this._connection;
    if (this._connecting === null) {
      this._connecting = this._connect().finally(() => {
        this._connecting = null;
      });
    }
    return this._connecting;
  }

  /** @returns {Promise<import('amqplib').ChannelModel>} */
  async _connect() {
    const url = new URL(this.url);
    if (this.passwordFile) {
      const password = readSetting(this.passwordFile, 'passwordFile').toString('utf8').replace(/[\r\n]+$/, '');
      if (password === '') throw new SettingsError(`passwordFile: ${this.passwordFile} is empty`);
      url.password = encodeURIComponent(password);
    }
    /** @type {Record<string, unknown>} */
    const tls = {};
    if (this.caFile) tls.ca = [readSetting(this.caFile, 'caFile')];
    if (this.certFile) {
      tls.cert = readSetting(this.certFile, 'certFile');
      tls.key = readSetting(this.keyFile, 'keyFile');
    }
    const connection = await amqp.connect(url.toString(), {
      ...tls,
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
    return connection;
  }

  /**
   * A confirm channel on the exchange's connection; it never declares the exchange (the aggregator owns the
   * topology, and a producer's user may only be allowed to publish).
   * @returns {Promise<ChannelState>}
   */
  async _ensureChannel() {
    if (this._channel !== null) return this._channel;
    if (this._opening === null) {
      this._opening = this._openChannel().finally(() => {
        this._opening = null;
      });
    }
    return this._opening;
  }

  /** @returns {Promise<ChannelState>} */
  async _openChannel() {
    const connection = await this._ensureConnection();
    const channel = await connection.createConfirmChannel();
    /** @type {ChannelState} */
    const state = { channel, returned: new Map(), closeError: null };
    channel.on('return', (/** @type {import('amqplib').Message} */ message) => {
      const id = message.properties.messageId;
      if (typeof id === 'string') state.returned.set(id, message.fields.replyText ?? 'returned');
    });
    channel.on('error', (/** @type {Error & { code?: number }} */ error) => {
      state.closeError = error;
    });
    channel.on('close', () => {
      if (this._channel === state) this._channel = null;
    });
    this._channel = state;
    return state;
  }

  async _disconnect() {
    const connection = this._connection;
    this._connection = null;
    this._channel = null;
    if (connection !== null) await closeQuietly(connection);
  }
}
