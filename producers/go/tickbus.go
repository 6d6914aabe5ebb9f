// Package tickbus emits tickbus metric events to RabbitMQ from Go.
//
// Emit queues an event and returns at once; a background goroutine batches events (by count and by a linger
// time), publishes them to the topic exchange with publisher confirms and persistent delivery, retries with
// the same message id while the broker is away, and counts what it had to drop when its bounded buffer was
// full. Heartbeats carry that drop count to the aggregator. The wire contract is docs/wire-format.md; this
// package follows the Python emitter (producers/emitter.py).
//
//	emitter, _ := tickbus.New(tickbus.Options{Source: "momentum-1", Version: "1.4.0"})
//	emitter.Emit(tickbus.Event{"kind": "signal", "strategy": "momentum", "symbol": "BTCUSDT", "side": "buy"})
//	emitter.Close(30 * time.Second)
package tickbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
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
	URL               string        // RabbitMQ URL [DefaultURL]
	Exchange          string        // topic exchange the aggregator consumes from [metrics]
	Version           string        // version reported in heartbeats
	MaxBuffer         int           // events held while the broker is slow or away [100000]
	BatchSize         int           // most events per message [1000, at most 10000]
	Linger            time.Duration // how long an event may wait for others to share its message [5ms]
	HeartbeatInterval time.Duration // heartbeat period [5s]; negative sends none
	RetryMax          time.Duration // longest wait between two attempts while the broker is away [5s]
	PublishTimeout    time.Duration // wait for a confirm before reconnecting and retrying [10s]
	Logger            *log.Logger   // where the one warning per outage goes [log.Default()]
}

// Emitter publishes events in the background; Emit is safe from any goroutine and never blocks.
type Emitter struct {
	opts      Options
	instance  string
	startedAt float64
	queue     chan Event

	accepted  atomic.Int64
	dropped   atomic.Int64
	confirmed atomic.Int64
	messages  atomic.Int64
	closing   atomic.Bool

	errMu     sync.Mutex
	lastError string

	wake      chan struct{} // closed by Close to wake an idle publisher
	done      chan struct{} // closed when the publisher has stopped
	ctx       context.Context
	abort     context.CancelFunc
	closeOnce sync.Once

	// Owned by the publisher goroutine.
	sequence      int64
	lastHeartbeat time.Time
	held          []Event // taken from the queue while lingering, sent first
	conn          *amqp.Connection
	channel       *amqp.Channel
	confirms      chan amqp.Confirmation
	deliveryTag   uint64
}

// New starts an emitter; it connects in the background and never fails for the broker.
func New(opts Options) (*Emitter, error) {
	if opts.Source == "" {
		return nil, errors.New("tickbus: Options.Source is required")
	}
	if opts.URL == "" {
		opts.URL = DefaultURL
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
	if opts.Logger == nil {
		opts.Logger = log.Default()
	}
	id := make([]byte, 6)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("tickbus: no randomness for the instance id: %w", err)
	}
	ctx, abort := context.WithCancel(context.Background())
	e := &Emitter{
		opts:      opts,
		instance:  hex.EncodeToString(id),
		startedAt: float64(time.Now().UnixNano()) / 1e9,
		queue:     make(chan Event, opts.MaxBuffer),
		wake:      make(chan struct{}),
		done:      make(chan struct{}),
		ctx:       ctx,
		abort:     abort,
	}
	go e.run()
	return e, nil
}

// Instance is the random id of this emitter's lifetime: message ids are "<instance>-<sequence>".
func (e *Emitter) Instance() string { return e.instance }

// Accepted counts the events Emit took into the buffer.
func (e *Emitter) Accepted() int64 { return e.accepted.Load() }

// Dropped counts the events Emit refused because the buffer was full or the emitter closed.
func (e *Emitter) Dropped() int64 { return e.dropped.Load() }

// Confirmed counts the events the broker confirmed (heartbeats not counted).
func (e *Emitter) Confirmed() int64 { return e.confirmed.Load() }

// Messages counts the messages published and confirmed, heartbeats included.
func (e *Emitter) Messages() int64 { return e.messages.Load() }

// Pending counts the events waiting in the buffer.
func (e *Emitter) Pending() int { return len(e.queue) }

// LastError is the last publishing error while the broker is away; empty once publishing works.
func (e *Emitter) LastError() string {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	return e.lastError
}

func (e *Emitter) setLastError(text string) (first bool) {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	first = e.lastError == "" && text != ""
	e.lastError = text
	return first
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

// Flush waits until every event emitted so far is confirmed by the broker; false on timeout.
func (e *Emitter) Flush(timeout time.Duration) bool {
	target := e.accepted.Load()
	deadline := time.Now().Add(timeout)
	for e.confirmed.Load() < target {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-e.done:
			return e.confirmed.Load() >= target
		case <-time.After(2 * time.Millisecond):
		}
	}
	return true
}

// Close drains the buffer, sends a last heartbeat (with the final drop count) and disconnects; false if it
// could not drain within the timeout (what was left is lost).
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
	heartbeats := e.opts.HeartbeatInterval > 0
	finalHeartbeat := false
	var batch []Event
	for e.ctx.Err() == nil {
		if e.closing.Load() && !finalHeartbeat {
			finalHeartbeat = true
			e.lastHeartbeat = time.Time{}
		}
		batch = batch[:0]
		if heartbeats && time.Since(e.lastHeartbeat) >= e.opts.HeartbeatInterval {
			e.lastHeartbeat = time.Now()
			batch = append(batch, e.Heartbeat())
		}
		own := len(batch)
		batch = e.take(batch, e.opts.BatchSize-own)
		if len(batch) > 0 {
			if !e.publish(batch) {
				return
			}
			e.messages.Add(1)
			e.confirmed.Add(int64(len(batch) - own))
			continue
		}
		if e.closing.Load() {
			return
		}
		e.idle(heartbeats)
	}
}

// take moves up to limit events, those the linger wait held first, onto batch without waiting.
func (e *Emitter) take(batch []Event, limit int) []Event {
	held := len(e.held)
	if held > limit {
		held = limit
	}
	batch = append(batch, e.held[:held]...)
	e.held = append(e.held[:0], e.held[held:]...)
	for i := held; i < limit; i++ {
		select {
		case event := <-e.queue:
			batch = append(batch, event)
		default:
			return batch
		}
	}
	return batch
}

// idle waits for work: an event (then the linger time, so that others can share its message, unless a batch
// fills first), a heartbeat falling due, or Close.
func (e *Emitter) idle(heartbeats bool) {
	var due <-chan time.Time
	if heartbeats {
		timer := time.NewTimer(time.Until(e.lastHeartbeat.Add(e.opts.HeartbeatInterval)))
		defer timer.Stop()
		due = timer.C
	}
	select {
	case event := <-e.queue:
		e.held = append(e.held, event)
	case <-due:
		return
	case <-e.wake:
		return
	case <-e.ctx.Done():
		return
	}
	linger := time.NewTimer(e.opts.Linger)
	defer linger.Stop()
	for len(e.held) < e.opts.BatchSize {
		select {
		case event := <-e.queue:
			e.held = append(e.held, event)
		case <-linger.C:
			return
		case <-due:
			return
		case <-e.wake:
			return
		case <-e.ctx.Done():
			return
		}
	}
}

// publish sends one message and waits for its confirm, retrying the same message (same id) until it is
// confirmed; false only when Close gave up.
func (e *Emitter) publish(batch []Event) bool {
	e.sequence++
	routingKey, body, err := Message(batch)
	if err != nil {
		// An event json cannot encode (a channel, a func, NaN): drop the message rather than stall.
		e.opts.Logger.Printf("tickbus: cannot encode %d events, dropping them: %v", len(batch), err)
		e.dropped.Add(int64(len(batch)))
		return true
	}
	publishing := amqp.Publishing{
		ContentType:  ContentTypeJSON,
		DeliveryMode: amqp.Persistent,
		MessageId:    fmt.Sprintf("%s-%d", e.instance, e.sequence),
		Timestamp:    time.Now(),
		AppId:        e.opts.Source,
		Body:         body,
	}
	wait := initialRetryWait
	for e.ctx.Err() == nil {
		err := e.publishOnce(routingKey, publishing)
		if err == nil {
			e.setLastError("")
			return true
		}
		if e.setLastError(err.Error()) {
			e.opts.Logger.Printf("tickbus: cannot publish to RabbitMQ (%v); retrying", err)
		}
		e.disconnect()
		select {
		case <-time.After(wait):
		case <-e.ctx.Done():
		}
		wait *= 2
		if wait > e.opts.RetryMax {
			wait = e.opts.RetryMax
		}
	}
	return false
}

// publishOnce publishes and waits for the broker's confirm of this very message. Confirms are read from a
// NotifyPublish listener, not DeferredConfirmation: in amqp091-go 1.5.0 (Debian's) a confirm that arrives
// before PublishWithDeferredConfirm has registered its delivery tag is lost, and Wait never returns.
func (e *Emitter) publishOnce(routingKey string, publishing amqp.Publishing) error {
	channel, err := e.ensureChannel()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.opts.PublishTimeout)
	defer cancel()
	if err := channel.PublishWithContext(ctx, e.opts.Exchange, routingKey, false, false, publishing); err != nil {
		return err
	}
	e.deliveryTag++
	for {
		select {
		case confirmation, open := <-e.confirms:
			if !open {
				return errors.New("channel closed before the confirm")
			}
			if confirmation.DeliveryTag < e.deliveryTag {
				continue // a late confirm of a message already given up on
			}
			if !confirmation.Ack {
				return errors.New("message nacked by the broker")
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("no confirm within %v", e.opts.PublishTimeout)
		}
	}
}

func (e *Emitter) ensureChannel() (*amqp.Channel, error) {
	if e.conn != nil && e.conn.IsClosed() {
		e.disconnect()
	}
	if e.conn == nil {
		conn, err := amqp.DialConfig(e.opts.URL, amqp.Config{
			Properties: amqp.Table{"connection_name": "tickbus-producer " + e.opts.Source},
			Dial:       amqp.DefaultDial(connectTimeout),
		})
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
		e.confirms = channel.NotifyPublish(make(chan amqp.Confirmation, 16))
		e.deliveryTag = 0
		if err := channel.ExchangeDeclare(e.opts.Exchange, "topic", true, false, false, false, nil); err != nil {
			return nil, err
		}
		e.channel = channel
	}
	return e.channel, nil
}

func (e *Emitter) disconnect() {
	if e.conn != nil {
		_ = e.conn.Close()
	}
	e.conn = nil
	e.channel = nil
}
