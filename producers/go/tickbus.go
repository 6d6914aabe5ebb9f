// Package tickbus emits tickbus metric events to RabbitMQ from Go.
//
// Emit queues an event and returns at once; a background goroutine batches events (by count and by a linger
// time) and publishes them to the topic exchange, persistent and mandatory, with up to MaxInFlight messages
// awaiting their publisher confirms at once. A message is settled only once the broker confirmed it and routed
// it to a queue: one it returns (no queue bound yet), nacks or never confirms, or one lost with its channel or
// connection, is held and published again with the same message id, with a capped backoff, while new events
// wait in the bounded buffer; when that is full, Emit drops and counts, and heartbeats carry the count to the
// aggregator. Each change of state is logged once. The wire contract is docs/wire-format.md; this package
// follows the Python emitter (producers/emitter.py).
//
//	emitter, _ := tickbus.New(tickbus.Options{Source: "momentum-1", Version: "1.4.0"})
//	emitter.Emit(tickbus.Event{"kind": "signal", "strategy": "momentum", "symbol": "BTCUSDT", "side": "buy"})
//	emitter.Close(30 * time.Second)
package tickbus

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	DefaultURL       = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultExchange  = "metrics"
	BatchRoutingKey  = "batch"
	ContentTypeJSON  = "application/json"
	MaxBatchEvents   = 10000
	connectTimeout   = 5 * time.Second
	initialRetryWait = 100 * time.Millisecond
)

// Event is one event: "kind" names its type (see schemas/events.schema.json); "ts" (seconds since the epoch)
// and "source" are filled in by Emit when absent.
type Event map[string]any

// Options say how an Emitter publishes; zero values take the defaults in brackets.
type Options struct {
	Source            string        // name of the emitting component (required)
	URL               string        // RabbitMQ URL, amqp:// or amqps:// (TLS: the host must be in the broker's certificate) [DefaultURL]
	CAFile            string        // amqps://: the CA certificate (PEM) that signed the broker's [the system's CAs]
	CertFile          string        // amqps://: a client certificate (PEM) for a broker that asks for one; with KeyFile
	KeyFile           string        // the client certificate's private key (PEM, unencrypted)
	PasswordFile      string        // holds the password of the URL's user (a Docker or Kubernetes secret); read per connection
	Exchange          string        // topic exchange the aggregator consumes from [metrics]
	Version           string        // version reported in heartbeats
	MaxBuffer         int           // events held while the broker is slow or away [100000]
	BatchSize         int           // most events per message [1000, at most 10000]
	Linger            time.Duration // how long an event may wait for others to share its message [5ms]
	HeartbeatInterval time.Duration // heartbeat period [5s]; negative sends none
	RetryMax          time.Duration // longest wait between two attempts while the broker is away [5s]
	PublishTimeout    time.Duration // wait for a confirm before reconnecting and retrying [10s]
	MaxInFlight       int           // most messages awaiting their confirms at once [64]
	Logger            *log.Logger   // where the one line per change of state goes [log.Default()]
}

// Emitter publishes events in the background; Emit is safe from any goroutine and never blocks.
type Emitter struct {
	opts      Options
	uri       amqp.URI
	instance  string
	startedAt float64
	queue     chan Event

	accepted     atomic.Int64
	dropped      atomic.Int64
	confirmed    atomic.Int64
	settled      atomic.Int64
	messages     atomic.Int64
	inFlightNow  atomic.Int64
	peakInFlight atomic.Int64
	closing      atomic.Bool

	errMu     sync.Mutex
	lastError string

	wake      chan struct{} // closed by Close to wake an idle publisher
	done      chan struct{} // closed when the publisher has stopped
	ctx       context.Context
	abort     context.CancelFunc
	closeOnce sync.Once

	// Owned by the publisher goroutine.
	sequence       int64
	lastHeartbeat  time.Time
	finalHeartbeat bool
	held           []Event   // taken from the queue while lingering, sent first
	lingerUntil    time.Time // when the held events go out even if the batch is not full
	window         []*outgoing
	pending        []*outgoing
	inFlight       map[uint64]*outgoing
	failing        *failure
	failingSince   time.Time
	retryDelay     time.Duration
	retryAt        time.Time
	conn           *amqp.Connection
	channel        *amqp.Channel
	confirms       chan amqp.Confirmation
	returns        chan amqp.Return
	closes         chan *amqp.Error
	returned       map[string]string // message id -> reply text, for returns whose confirm is still to come
	deliveryTag    uint64
}

// outgoing is one message on its way: settled once the broker confirmed it and routed it to a queue.
type outgoing struct {
	routingKey string
	publishing amqp.Publishing
	events     int // emitted events it holds (its heartbeat not counted)
	settled    bool
	probe      bool
	sentAt     time.Time
}

// failure says why publishing does not work: kind tells one state from another, reason says it to a person.
type failure struct {
	kind, reason string
}

// New starts an emitter; it connects in the background and never fails for the broker.
func New(opts Options) (*Emitter, error) {
	e, err := newEmitter(opts)
	if err != nil {
		return nil, err
	}
	go e.run()
	return e, nil
}

// newEmitter is an emitter with its defaults filled in, its publisher not started.
func newEmitter(opts Options) (*Emitter, error) {
	if opts.Source == "" {
		return nil, errors.New("tickbus: Options.Source is required")
	}
	if opts.URL == "" {
		opts.URL = DefaultURL
	}
	uri, err := checkConnection(opts)
	if err != nil {
		return nil, err
	}
	if opts.Exchange == "" {
		opts.Exchange = DefaultExchange
	}
	if opts.MaxBuffer <= 0 {
		opts.MaxBuffer = 100000
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	if opts.BatchSize > MaxBatchEvents {
		opts.BatchSize = MaxBatchEvents
	}
	if opts.Linger <= 0 {
		opts.Linger = 5 * time.Millisecond
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = 5 * time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 5 * time.Second
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 10 * time.Second
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 64
	}
	if opts.Logger == nil {
		opts.Logger = log.Default()
	}
	id := make([]byte, 6)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("tickbus: no randomness for the instance id: %w", err)
	}
	ctx, abort := context.WithCancel(context.Background())
	e := &Emitter{
		opts:       opts,
		uri:        uri,
		instance:   hex.EncodeToString(id),
		startedAt:  float64(time.Now().UnixNano()) / 1e9,
		queue:      make(chan Event, opts.MaxBuffer),
		wake:       make(chan struct{}),
		done:       make(chan struct{}),
		ctx:        ctx,
		abort:      abort,
		inFlight:   map[uint64]*outgoing{},
		retryDelay: initialRetryWait,
	}
	return e, nil
}

// Instance is the random id of this emitter's lifetime: message ids are "<instance>-<sequence>".
func (e *Emitter) Instance() string { return e.instance }

// Accepted counts the events Emit took into the buffer.
func (e *Emitter) Accepted() int64 { return e.accepted.Load() }

// Dropped counts the events Emit refused because the buffer was full or the emitter closed.
func (e *Emitter) Dropped() int64 { return e.dropped.Load() }

// Confirmed counts the events the broker confirmed and routed to a queue (heartbeats not counted).
func (e *Emitter) Confirmed() int64 { return e.confirmed.Load() }

// Messages counts the messages confirmed and routed, heartbeats included.
func (e *Emitter) Messages() int64 { return e.messages.Load() }

// InFlight counts the publishes awaiting their confirms now.
func (e *Emitter) InFlight() int64 { return e.inFlightNow.Load() }

// PeakInFlight is the most publishes that awaited their confirms at once (at most Options.MaxInFlight).
func (e *Emitter) PeakInFlight() int64 { return e.peakInFlight.Load() }

// Pending counts the events waiting in the buffer.
func (e *Emitter) Pending() int { return len(e.queue) }

// LastError says why publishing fails; empty while it works.
func (e *Emitter) LastError() string {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	return e.lastError
}

func (e *Emitter) setLastError(text string) {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	e.lastError = text
}

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// Emit queues an event; false (and counted as dropped) if the buffer is full. It never blocks and never fails
// for the broker. It fills in "ts" and "source" when absent; do not change the map after emitting it.
func (e *Emitter) Emit(event Event) bool {
	if e.closing.Load() {
		e.dropped.Add(1)
		return false
	}
	if _, ok := event["ts"]; !ok {
		event["ts"] = now()
	}
	if _, ok := event["source"]; !ok {
		event["source"] = e.opts.Source
	}
	select {
	case e.queue <- event:
		e.accepted.Add(1)
		return true
	default:
		e.dropped.Add(1)
		return false
	}
}

// Heartbeat is the event this emitter sends: liveness, version, instance, the cumulative drop count and,
// where the OS tells them (Linux), the process's resident memory and CPU time.
func (e *Emitter) Heartbeat() Event {
	event := Event{"kind": "heartbeat", "ts": now(), "source": e.opts.Source}
	if e.opts.Version != "" {
		event["version"] = e.opts.Version
	}
	event["instance"] = e.instance
	event["started_at"] = e.startedAt
	event["dropped"] = e.dropped.Load()
	if rss, ok := residentMemoryBytes(); ok {
		event["resident_memory_bytes"] = rss
	}
	var usage syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &usage) == nil {
		event["cpu_seconds"] = float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
	}
	return event
}

// residentMemoryBytes reads this process's resident set size from /proc (Linux only).
func residentMemoryBytes() (int64, bool) {
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(statm))
	if len(fields) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// Flush waits until every event emitted so far is confirmed by the broker and routed to a queue (or dropped as
// impossible to encode, and counted); false on timeout.
func (e *Emitter) Flush(timeout time.Duration) bool {
	target := e.accepted.Load()
	deadline := time.Now().Add(timeout)
	for e.settled.Load() < target {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-e.done:
			return e.settled.Load() >= target
		case <-time.After(2 * time.Millisecond):
		}
	}
	return true
}

// Close drains the buffer, sends a last heartbeat (with the final drop count) and disconnects; false if it
// could not drain within the timeout (what was left is lost, and said so in the log).
func (e *Emitter) Close(timeout time.Duration) bool {
	e.closeOnce.Do(func() {
		e.closing.Store(true)
		close(e.wake)
	})
	drained := true
	select {
	case <-e.done:
	case <-time.After(timeout):
		drained = false
		e.abort()
		<-e.done
		if lost := e.accepted.Load() - e.settled.Load(); lost > 0 {
			reason := e.LastError()
			if reason == "" {
				reason = "timeout"
			}
			e.opts.Logger.Printf("tickbus: closed with %d emitted events undelivered (%s)", lost, reason)
		}
	}
	return drained && len(e.queue) == 0
}

// Message is the routing key and body of one message: a single event as an object under its kind, several
// as a batch array.
func Message(events []Event) (routingKey string, body []byte, err error) {
	if len(events) == 1 {
		kind, _ := events[0]["kind"].(string)
		body, err = json.Marshal(events[0])
		return kind, body, err
	}
	body, err = json.Marshal(events)
	return BatchRoutingKey, body, err
}

func (e *Emitter) run() {
	defer close(e.done)
	defer e.disconnect()
	for e.ctx.Err() == nil {
		if e.closing.Load() && !e.finalHeartbeat {
			e.finalHeartbeat = true
			e.lastHeartbeat = time.Time{}
		}
		e.fill()
		if e.finalHeartbeat && len(e.window) == 0 && len(e.held) == 0 && len(e.queue) == 0 && !e.heartbeatDue() {
			return
		}
		e.wait()
	}
}

func (e *Emitter) heartbeatDue() bool {
	return e.opts.HeartbeatInterval > 0 && time.Since(e.lastHeartbeat) >= e.opts.HeartbeatInterval
}

// fill starts publishes: while failing, one probe after the backoff; else held messages first, then new batches.
func (e *Emitter) fill() {
	if e.failing != nil {
		if len(e.inFlight) == 0 && len(e.pending) > 0 && !time.Now().Before(e.retryAt) {
			next := e.pending[0]
			e.pending = e.pending[1:]
			e.send(next, true)
		}
		return
	}
	for e.failing == nil && len(e.inFlight) < e.opts.MaxInFlight {
		if len(e.pending) == 0 && !e.takeBatch() {
			return
		}
		if len(e.pending) > 0 {
			next := e.pending[0]
			e.pending = e.pending[1:]
			e.send(next, false)
		}
	}
}

// takeBatch turns the held and queued events (and a heartbeat, when due) into a pending message once the batch
// is full or its linger time is over; false if there is nothing to send yet.
func (e *Emitter) takeBatch() bool {
	if len(e.held) == 0 {
		// Events that waited in the queue while the window was full go out without lingering again.
		e.lingerUntil = time.Now()
	}
queued:
	for len(e.held) < e.opts.BatchSize {
		select {
		case event := <-e.queue:
			e.held = append(e.held, event)
		default:
			break queued
		}
	}
	heartbeat := e.heartbeatDue()
	ready := len(e.held) >= e.opts.BatchSize || !time.Now().Before(e.lingerUntil) || e.closing.Load()
	if !heartbeat && (len(e.held) == 0 || !ready) {
		return false
	}
	var batch []Event
	if heartbeat {
		e.lastHeartbeat = time.Now()
		batch = append(batch, e.Heartbeat())
	}
	own := len(batch)
	take := e.opts.BatchSize - own
	if take > len(e.held) {
		take = len(e.held)
	}
	batch = append(batch, e.held[:take]...)
	e.held = append(e.held[:0], e.held[take:]...)
	e.sequence++
	routingKey, body, err := Message(batch)
	if err != nil {
		// An event json cannot encode (a channel, a func, NaN): drop the message rather than stall.
		e.opts.Logger.Printf("tickbus: cannot encode %d events, dropping them: %v", len(batch)-own, err)
		e.dropped.Add(int64(len(batch) - own))
		e.window = append(e.window, &outgoing{events: len(batch) - own, settled: true})
		e.advance()
		return true
	}
	message := &outgoing{
		routingKey: routingKey,
		publishing: amqp.Publishing{
			ContentType:  ContentTypeJSON,
			DeliveryMode: amqp.Persistent,
			MessageId:    fmt.Sprintf("%s-%d", e.instance, e.sequence),
			Timestamp:    time.Now(),
			AppId:        e.opts.Source,
			// Sharded deployments route every message of one source to one aggregator replica by this header.
			Headers: amqp.Table{"x-tickbus-source": e.opts.Source},
			// The broker refuses a user id other than the connection's user: the aggregator can trust it
			// (authenticated sources).
			UserId: e.uri.Username,
			Body:   body,
		},
		events: len(batch) - own,
	}
	e.window = append(e.window, message)
	e.pending = append(e.pending, message)
	return true
}

// send publishes one message, mandatory, on the confirm channel (connecting first if needed); its confirm, or
// its return, arrives in wait.
func (e *Emitter) send(message *outgoing, probe bool) {
	message.probe = probe
	channel, err := e.ensureChannel()
	if err != nil {
		e.failed(message, e.failureOf(err, message.routingKey))
		return
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.opts.PublishTimeout)
	defer cancel()
	if err := channel.PublishWithContext(ctx, e.opts.Exchange, message.routingKey, true, false, message.publishing); err != nil {
		lost := e.takeInFlight()
		e.disconnect()
		for _, other := range append(lost, message) {
			e.failed(other, e.failureOf(err, other.routingKey))
		}
		return
	}
	e.deliveryTag++
	message.sentAt = time.Now()
	e.inFlight[e.deliveryTag] = message
	now := int64(len(e.inFlight))
	e.inFlightNow.Store(now)
	if now > e.peakInFlight.Load() {
		e.peakInFlight.Store(now)
	}
}

// wait blocks until something happens: a confirm, a return, the channel closing, an event (while the window has
// room), a deadline (linger, heartbeat, retry, confirm timeout), Close or abort.
func (e *Emitter) wait() {
	var queue <-chan Event
	var deadline time.Time
	earliest := func(at time.Time) {
		if deadline.IsZero() || at.Before(deadline) {
			deadline = at
		}
	}
	if e.failing == nil && len(e.inFlight) < e.opts.MaxInFlight {
		if len(e.held) < e.opts.BatchSize {
			queue = e.queue
		}
		if len(e.held) > 0 {
			earliest(e.lingerUntil)
		}
		if e.opts.HeartbeatInterval > 0 {
			earliest(e.lastHeartbeat.Add(e.opts.HeartbeatInterval))
		}
	}
	if e.failing != nil && len(e.inFlight) == 0 {
		earliest(e.retryAt)
	}
	for _, message := range e.inFlight {
		earliest(message.sentAt.Add(e.opts.PublishTimeout))
	}
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		timeout = timer.C
	}
	var wake <-chan struct{}
	if !e.finalHeartbeat {
		wake = e.wake
	}
	select {
	case confirmation, open := <-e.confirms:
		if !open {
			e.channelLost()
			return
		}
		e.onConfirm(confirmation)
	case returned, open := <-e.returns:
		if !open {
			e.channelLost()
			return
		}
		e.returned[returned.MessageId] = returned.ReplyText
	case closeError, open := <-e.closes:
		e.channelLostWith(closeError, open)
	case event := <-queue:
		if len(e.held) == 0 {
			e.lingerUntil = time.Now().Add(e.opts.Linger)
		}
		e.held = append(e.held, event)
	case <-timeout:
		e.expire()
	case <-wake:
	case <-e.ctx.Done():
	}
}

// onConfirm settles one confirm: routed, or returned or nacked (then held for a retry).
func (e *Emitter) onConfirm(confirmation amqp.Confirmation) {
	// The broker sends basic.return before the ack of the same message, and the client hands both over in
	// that order: every return of a message confirmed by now is already waiting in e.returns.
returns:
	for {
		select {
		case returned, open := <-e.returns:
			if !open {
				break returns
			}
			e.returned[returned.MessageId] = returned.ReplyText
		default:
			break returns
		}
	}
	message, known := e.inFlight[confirmation.DeliveryTag]
	if !known {
		return
	}
	delete(e.inFlight, confirmation.DeliveryTag)
	e.inFlightNow.Store(int64(len(e.inFlight)))
	id := message.publishing.MessageId
	if text, returned := e.returned[id]; returned {
		delete(e.returned, id)
		e.failed(message, failure{
			kind: "returned:" + message.routingKey,
			reason: fmt.Sprintf("no queue is bound for routing key '%s' on exchange '%s' (returned as unroutable: %s)",
				message.routingKey, e.opts.Exchange, text),
		})
		return
	}
	if !confirmation.Ack {
		e.failed(message, failure{kind: "nacked", reason: "the broker nacked the message"})
		return
	}
	e.succeeded(message)
}

// channelLost fails every publish still awaiting its confirm on a channel the broker (or the network) closed.
func (e *Emitter) channelLost() {
	select {
	case closeError, open := <-e.closes:
		e.channelLostWith(closeError, open)
	default:
		e.channelLostWith(nil, false)
	}
}

// channelLostWith is channelLost once the close error (if the client gave one) has been read.
func (e *Emitter) channelLostWith(closeError *amqp.Error, open bool) {
	var cause error = errors.New("channel closed")
	if open && closeError != nil {
		cause = closeError
	}
	lost := e.takeInFlight()
	e.dropChannel()
	for _, message := range lost {
		e.failed(message, e.failureOf(cause, message.routingKey))
	}
}

// expire gives up on publishes whose confirm is overdue; a broker that does not confirm may hold a dead
// connection, so the next attempt starts afresh.
func (e *Emitter) expire() {
	overdue := false
	for _, message := range e.inFlight {
		if time.Since(message.sentAt) >= e.opts.PublishTimeout {
			overdue = true
		}
	}
	if !overdue {
		return
	}
	lost := e.takeInFlight()
	e.disconnect()
	for _, message := range lost {
		e.failed(message, failure{kind: "timeout", reason: fmt.Sprintf("no confirm within %v", e.opts.PublishTimeout)})
	}
}

func (e *Emitter) takeInFlight() []*outgoing {
	lost := make([]*outgoing, 0, len(e.inFlight))
	for tag, message := range e.inFlight {
		lost = append(lost, message)
		delete(e.inFlight, tag)
	}
	e.inFlightNow.Store(0)
	return lost
}

func (e *Emitter) succeeded(message *outgoing) {
	message.settled = true
	message.publishing.Body = nil // it may wait in the window behind an earlier message: keep no body
	e.messages.Add(1)
	e.confirmed.Add(int64(message.events))
	e.advance()
	if message.probe && e.failing != nil {
		e.opts.Logger.Printf("tickbus: publishing to RabbitMQ works again after %.1f s; resending what was held",
			time.Since(e.failingSince).Seconds())
		e.failing = nil
		e.setLastError("")
		e.retryDelay = initialRetryWait
	}
}

// failed holds a message for a retry and moves the state: the first failure, or a failure of another kind, is
// logged once; a failed probe doubles the backoff up to RetryMax.
func (e *Emitter) failed(message *outgoing, f failure) {
	e.pending = append([]*outgoing{message}, e.pending...)
	now := time.Now()
	if e.failing == nil {
		e.opts.Logger.Printf("tickbus: cannot publish to RabbitMQ: %s; holding events and retrying", f.reason)
		e.failingSince = now
		e.retryDelay = initialRetryWait
	} else if f.kind != e.failing.kind {
		e.opts.Logger.Printf("tickbus: still cannot publish to RabbitMQ, now: %s", f.reason)
	}
	if message.probe {
		e.retryDelay *= 2
		if e.retryDelay > e.opts.RetryMax {
			e.retryDelay = e.opts.RetryMax
		}
	}
	e.failing = &f
	e.setLastError(f.reason)
	e.retryAt = now.Add(e.retryDelay)
}

// advance counts as settled the events of the messages settled at the front of the window, so that Flush never
// counts a later message while an earlier one is still held.
func (e *Emitter) advance() {
	settled := 0
	for settled < len(e.window) && e.window[settled].settled {
		e.settled.Add(int64(e.window[settled].events))
		settled++
	}
	e.window = append(e.window[:0], e.window[settled:]...)
}

func (e *Emitter) failureOf(err error, routingKey string) failure {
	var settingsError *SettingsError
	if errors.As(err, &settingsError) {
		return failure{kind: "settings", reason: "cannot connect with these settings: " + settingsError.Error()}
	}
	if f, ok := tlsFailure(err, e.opts); ok {
		return f
	}
	if errors.Is(err, amqp.ErrCredentials) || errors.Is(err, amqp.ErrSASL) {
		where := ""
		if e.opts.PasswordFile != "" {
			where = " (password from " + e.opts.PasswordFile + ")"
		}
		return failure{kind: "login",
			reason: fmt.Sprintf("RabbitMQ refused the login of user '%s'%s (%v)", e.uri.Username, where, err)}
	}
	var amqpError *amqp.Error
	if errors.As(err, &amqpError) {
		switch amqpError.Code {
		case amqp.NotFound:
			return failure{kind: "no-exchange",
				reason: fmt.Sprintf("exchange '%s' does not exist (has the aggregator never run?)", e.opts.Exchange)}
		case amqp.AccessRefused:
			return failure{kind: "refused", reason: fmt.Sprintf("access refused (%v)", err)}
		}
		if amqpError.Recover {
			return failure{kind: fmt.Sprintf("channel-closed:%d", amqpError.Code),
				reason: fmt.Sprintf("the broker closed the channel (%v)", err)}
		}
	}
	return failure{kind: "unreachable", reason: fmt.Sprintf("RabbitMQ is unreachable (%v)", err)}
}

// ensureChannel is the confirm channel, connecting first if needed. It never declares the exchange: the
// aggregator owns the topology, and a producer's user may only be allowed to publish.
func (e *Emitter) ensureChannel() (*amqp.Channel, error) {
	if e.channel != nil && e.channel.IsClosed() {
		// Closed before its notifications were read: fail what awaited confirms there, with the broker's reason
		// (the client marks the channel closed just before it hands the reason over).
		var reason error = errors.New("channel closed")
		select {
		case closeError, open := <-e.closes:
			if open && closeError != nil {
				reason = closeError
			}
			e.channelLostWith(closeError, open)
		case <-time.After(time.Second):
			e.channelLostWith(nil, false)
		}
		return nil, reason
	}
	if e.conn != nil && e.conn.IsClosed() {
		e.disconnect()
	}
	if e.conn == nil {
		config, err := connectionConfig(e.opts, e.uri)
		if err != nil {
			return nil, err
		}
		conn, err := amqp.DialConfig(e.opts.URL, config)
		if err != nil {
			return nil, err
		}
		e.conn = conn
	}
	if e.channel == nil || e.channel.IsClosed() {
		channel, err := e.conn.Channel()
		if err != nil {
			return nil, err
		}
		if err := channel.Confirm(false); err != nil {
			return nil, err
		}
		// Buffers as deep as the window: the client's reader goroutine must never block handing them over.
		e.confirms = channel.NotifyPublish(make(chan amqp.Confirmation, e.opts.MaxInFlight+1))
		e.returns = channel.NotifyReturn(make(chan amqp.Return, e.opts.MaxInFlight+1))
		e.closes = channel.NotifyClose(make(chan *amqp.Error, 1))
		e.returned = map[string]string{}
		e.deliveryTag = 0
		e.channel = channel
	}
	return e.channel, nil
}

// dropChannel forgets the channel (the broker closed it); the connection stays for the next one.
func (e *Emitter) dropChannel() {
	e.channel = nil
	e.confirms = nil
	e.returns = nil
	e.closes = nil
}

func (e *Emitter) disconnect() {
	if e.conn != nil {
		_ = e.conn.Close()
	}
	e.conn = nil
	e.dropChannel()
}

// SettingsError says a connection setting (the password file, a TLS file) cannot be used, naming it.
type SettingsError struct{ message string }

func (e *SettingsError) Error() string { return e.message }

// checkConnection refuses connection settings that cannot work; the error names the option, never the URL.
func checkConnection(opts Options) (amqp.URI, error) {
	uri, err := amqp.ParseURI(opts.URL)
	if err != nil {
		return uri, errors.New("tickbus: Options.URL is not an amqp:// or amqps:// URL")
	}
	if (opts.CAFile != "" || opts.CertFile != "" || opts.KeyFile != "") && uri.Scheme != "amqps" {
		return uri, errors.New("tickbus: CAFile, CertFile and KeyFile need an amqps:// URL (the broker's TLS port, 5671 by default)")
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return uri, errors.New("tickbus: CertFile and KeyFile go together (the client certificate and its private key)")
	}
	if opts.PasswordFile != "" {
		parsed, err := neturl.Parse(opts.URL)
		if err != nil || parsed.User == nil || parsed.User.Username() == "" {
			return uri, errors.New("tickbus: PasswordFile needs a user in the URL (amqps://USER@host:5671/)")
		}
		if _, given := parsed.User.Password(); given {
			return uri, errors.New("tickbus: the password is given twice: in the URL and in PasswordFile; keep one")
		}
	}
	return uri, nil
}

// connectionConfig is how to dial: the password read from PasswordFile, the TLS configuration of CAFile,
// CertFile and KeyFile (the broker's certificate and name are always verified).
func connectionConfig(opts Options, uri amqp.URI) (amqp.Config, error) {
	config := amqp.Config{
		Properties: amqp.Table{"connection_name": "tickbus-producer " + opts.Source},
		Dial:       amqp.DefaultDial(connectTimeout),
	}
	if opts.PasswordFile != "" {
		data, err := os.ReadFile(opts.PasswordFile)
		if err != nil {
			return config, &SettingsError{fmt.Sprintf("PasswordFile: cannot read %s (%v)", opts.PasswordFile, err)}
		}
		password := strings.TrimRight(string(data), "\r\n")
		if password == "" {
			return config, &SettingsError{fmt.Sprintf("PasswordFile: %s is empty", opts.PasswordFile)}
		}
		config.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: uri.Username, Password: password}}
	}
	if uri.Scheme != "amqps" {
		return config, nil
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return config, &SettingsError{fmt.Sprintf("CAFile: cannot read %s (%v)", opts.CAFile, err)}
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return config, &SettingsError{fmt.Sprintf("CAFile: %s holds no PEM certificate", opts.CAFile)}
		}
		tlsConfig.RootCAs = roots
	}
	if opts.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return config, &SettingsError{fmt.Sprintf("CertFile / KeyFile: cannot load %s with the key %s (%v)",
				opts.CertFile, opts.KeyFile, err)}
		}
		tlsConfig.Certificates = []tls.Certificate{pair}
	}
	config.TLSClientConfig = tlsConfig
	return config, nil
}

// tlsFailure says what a TLS failure means and what to do; ok is false if err is not one.
func tlsFailure(err error, opts Options) (failure, bool) {
	var unknownAuthority x509.UnknownAuthorityError
	if errors.As(err, &unknownAuthority) {
		where := "a CA this system trusts (CAFile is unset)"
		if opts.CAFile != "" {
			where = fmt.Sprintf("a CA in CAFile (%s)", opts.CAFile)
		}
		return failure{kind: "tls-untrusted", reason: fmt.Sprintf(
			"TLS: the broker's certificate is not signed by %s (%v): set CAFile to the CA certificate that issued it",
			where, err)}, true
	}
	var hostname x509.HostnameError
	if errors.As(err, &hostname) {
		var held []string
		if hostname.Certificate != nil {
			for _, name := range hostname.Certificate.DNSNames {
				held = append(held, "'"+name+"'")
			}
			for _, address := range hostname.Certificate.IPAddresses {
				held = append(held, "'"+address.String()+"'")
			}
		}
		return failure{kind: "tls-host", reason: fmt.Sprintf(
			"TLS: the broker's certificate is for %s, not for '%s' (the host in the URL): connect by a name the "+
				"certificate holds, or give the broker a certificate that names '%s'",
			strings.Join(held, ", "), hostname.Host, hostname.Host)}, true
	}
	text := err.Error()
	switch {
	case strings.Contains(text, "tls: certificate required"):
		return failure{kind: "tls-client",
			reason: fmt.Sprintf("TLS: the broker asks for a client certificate (%v): set CertFile and KeyFile", err)}, true
	case strings.Contains(text, "tls: unknown certificate authority") || strings.Contains(text, "tls: bad certificate"):
		return failure{kind: "tls-client", reason: fmt.Sprintf(
			"TLS: the broker refused the client certificate in CertFile (%s) (%v): it must be signed by a CA the "+
				"broker trusts", opts.CertFile, err)}, true
	case strings.Contains(text, "tls: "):
		return failure{kind: "tls", reason: fmt.Sprintf("TLS: %v", err)}, true
	}
	return failure{}, false
}
