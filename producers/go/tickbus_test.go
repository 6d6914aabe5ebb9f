package tickbus

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const nowhere = "amqp://guest:guest@127.0.0.1:1/"

func quiet() *log.Logger { return log.New(io.Discard, "", 0) }

func signal(i int) Event {
	return Event{"kind": "signal", "strategy": "momentum", "symbol": "BTCUSDT", "side": "buy", "confidence": float64(i) / 1000}
}

func TestOneEventIsAnObjectUnderItsKindSeveralAreABatch(t *testing.T) {
	key, body, err := Message([]Event{{"kind": "order", "ts": 1.5, "source": "s"}})
	if err != nil || key != "order" {
		t.Fatalf("single: key %q err %v", key, err)
	}
	var object map[string]any
	if err := json.Unmarshal(body, &object); err != nil || object["ts"] != 1.5 {
		t.Fatalf("single body %s", body)
	}
	key, body, err = Message([]Event{{"kind": "order"}, {"kind": "trade"}})
	var array []map[string]any
	if err != nil || key != BatchRoutingKey || json.Unmarshal(body, &array) != nil || len(array) != 2 {
		t.Fatalf("batch: key %q body %s err %v", key, body, err)
	}
}

func TestEmitFillsInTsAndSourceAndKeepsTheCallers(t *testing.T) {
	emitter, err := New(Options{Source: "unit", URL: nowhere, HeartbeatInterval: -1, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer emitter.Close(10 * time.Millisecond)
	event := signal(1)
	before := float64(time.Now().Unix()) - 1
	if !emitter.Emit(event) {
		t.Fatal("refused")
	}
	if event["source"] != "unit" || event["ts"].(float64) < before {
		t.Fatalf("not filled in: %v", event)
	}
	own := Event{"kind": "error", "ts": 123.0, "source": "other"}
	emitter.Emit(own)
	if own["ts"] != 123.0 || own["source"] != "other" {
		t.Fatalf("overwritten: %v", own)
	}
}

func TestAFullBufferDropsAndCountsWithoutBlockingAndHeartbeatsCarryTheCount(t *testing.T) {
	emitter, _ := New(Options{Source: "unit", URL: nowhere, MaxBuffer: 100, HeartbeatInterval: -1, Logger: quiet()})
	started := time.Now()
	took := 0
	for i := 0; i < 1000; i++ {
		if emitter.Emit(signal(i)) {
			took++
		}
	}
	if elapsed := time.Since(started); elapsed > 200*time.Millisecond {
		t.Fatalf("1000 emits took %v", elapsed)
	}
	// The publisher may hold a few events while it lingers, so up to a batch more than the buffer fit.
	if took < 100 || emitter.Dropped() != int64(1000-took) || emitter.Accepted() != int64(took) {
		t.Fatalf("took %d, accepted %d, dropped %d", took, emitter.Accepted(), emitter.Dropped())
	}
	heartbeat := emitter.Heartbeat()
	if heartbeat["kind"] != "heartbeat" || heartbeat["dropped"] != emitter.Dropped() || heartbeat["instance"] != emitter.Instance() {
		t.Fatalf("heartbeat %v", heartbeat)
	}
	if emitter.Close(10 * time.Millisecond) {
		t.Fatal("closed drained with no broker")
	}
}

func TestWhileTheBrokerIsUnreachableFlushAndCloseTimeOutAndReportTheError(t *testing.T) {
	var logged bytes.Buffer
	emitter, _ := New(Options{Source: "unit", URL: nowhere, HeartbeatInterval: -1, RetryMax: 50 * time.Millisecond,
		Logger: log.New(&logged, "", 0)})
	emitter.Emit(signal(1))
	if emitter.Flush(400 * time.Millisecond) {
		t.Fatal("flushed with no broker")
	}
	if !strings.Contains(emitter.LastError(), "connection refused") {
		t.Fatalf("last error %q", emitter.LastError())
	}
	started := time.Now()
	if emitter.Close(300 * time.Millisecond) {
		t.Fatal("closed drained with no broker")
	}
	if time.Since(started) > 2*time.Second {
		t.Fatalf("close took %v", time.Since(started))
	}
	if strings.Count(logged.String(), "cannot publish") != 1 {
		t.Fatalf("want one warning per outage, got:\n%s", logged.String())
	}
	if emitter.Emit(signal(2)) || emitter.Dropped() != 1 {
		t.Fatal("a closed emitter must refuse and count")
	}
}

func TestSourceIsRequired(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("no error without a source")
	}
}

// unstarted is an emitter whose publisher goroutine does not run, so a test can drive it step by step.
func unstarted(t *testing.T, logs *bytes.Buffer, opts Options) *Emitter {
	opts.Source, opts.URL, opts.Exchange, opts.HeartbeatInterval = "unit", nowhere, "desk", -1
	opts.Logger = log.New(logs, "", 0)
	emitter, err := newEmitter(opts)
	if err != nil {
		t.Fatal(err)
	}
	return emitter
}

// inFlight puts messages on the emitter's window as published, with delivery tags 1, 2, ...
func inFlight(e *Emitter, count int) []*outgoing {
	var messages []*outgoing
	for i := 1; i <= count; i++ {
		message := &outgoing{routingKey: "signal", events: 1, publishing: amqp.Publishing{MessageId: fmt.Sprintf("abc-%d", i)}}
		e.window = append(e.window, message)
		e.inFlight[uint64(i)] = message
		messages = append(messages, message)
	}
	return messages
}

func TestEventsAreSettledOnlyOverAPrefixSoFlushNeverSkipsAnEarlierMessage(t *testing.T) {
	e := unstarted(t, &bytes.Buffer{}, Options{})
	inFlight(e, 3)
	e.onConfirm(amqp.Confirmation{DeliveryTag: 3, Ack: true})
	e.onConfirm(amqp.Confirmation{DeliveryTag: 2, Ack: true})
	if e.settled.Load() != 0 || e.Confirmed() != 2 {
		t.Fatalf("settled %d, confirmed %d before the first message", e.settled.Load(), e.Confirmed())
	}
	e.onConfirm(amqp.Confirmation{DeliveryTag: 1, Ack: true})
	if e.settled.Load() != 3 || e.Messages() != 3 || len(e.window) != 0 {
		t.Fatalf("settled %d, messages %d, window %d", e.settled.Load(), e.Messages(), len(e.window))
	}
}

func TestAReturnedMessageIsHeldWithACappedBackoffAndFailingAndRecoveringAreOneLineEach(t *testing.T) {
	var logs bytes.Buffer
	e := unstarted(t, &logs, Options{RetryMax: 400 * time.Millisecond})
	messages := inFlight(e, 2)
	e.returns = make(chan amqp.Return, 2)
	e.returned = map[string]string{}
	e.returns <- amqp.Return{MessageId: "abc-1", ReplyText: "NO_ROUTE"}
	e.onConfirm(amqp.Confirmation{DeliveryTag: 1, Ack: true})
	if e.settled.Load() != 0 || len(e.pending) != 1 || e.pending[0] != messages[0] {
		t.Fatalf("a returned message must be held: settled %d, pending %v", e.settled.Load(), e.pending)
	}
	want := "no queue is bound for routing key 'signal' on exchange 'desk' (returned as unroutable: NO_ROUTE)"
	if e.LastError() != want {
		t.Fatalf("last error %q", e.LastError())
	}
	var delays []time.Duration
	for i := 0; i < 5; i++ {
		probe := e.pending[0]
		e.pending = e.pending[1:]
		probe.probe = true
		e.failed(probe, *e.failing)
		delays = append(delays, e.retryDelay)
	}
	ms := time.Millisecond
	if fmt.Sprint(delays) != fmt.Sprint([]time.Duration{200 * ms, 400 * ms, 400 * ms, 400 * ms, 400 * ms}) {
		t.Fatalf("backoff %v", delays)
	}
	if strings.Count(logs.String(), "\n") != 1 || !strings.HasPrefix(logs.String(), "tickbus: cannot publish to RabbitMQ: "+want) {
		t.Fatalf("want one line for the failure, got:\n%s", logs.String())
	}
	probe := e.pending[0]
	e.pending = e.pending[1:]
	e.inFlight[3] = probe
	e.onConfirm(amqp.Confirmation{DeliveryTag: 3, Ack: true})
	if e.LastError() != "" || e.settled.Load() != 1 || !strings.Contains(logs.String(), "tickbus: publishing to RabbitMQ works again after ") {
		t.Fatalf("after the probe: last error %q, settled %d, log:\n%s", e.LastError(), e.settled.Load(), logs.String())
	}
	e.onConfirm(amqp.Confirmation{DeliveryTag: 2, Ack: true})
	if e.settled.Load() != 2 || strings.Count(logs.String(), "\n") != 2 {
		t.Fatalf("settled %d, log:\n%s", e.settled.Load(), logs.String())
	}
}

func TestAMissingExchangeAndAnUnreachableBrokerAreToldApart(t *testing.T) {
	e := unstarted(t, &bytes.Buffer{}, Options{})
	missing := e.failureOf(&amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no exchange 'desk' in vhost '/'"}, "signal")
	if missing.reason != "exchange 'desk' does not exist (has the aggregator never run?)" {
		t.Fatalf("missing exchange: %q", missing.reason)
	}
	if unreachable := e.failureOf(errors.New("dial tcp: connection refused"), "signal"); unreachable.kind == missing.kind {
		t.Fatalf("unreachable broker: %+v", unreachable)
	}
}

// BenchmarkEmit is what Emit costs the caller, building the event included:
// go test -run '^$' -bench Emit -benchmem .
func BenchmarkEmit(b *testing.B) {
	emitter, _ := New(Options{Source: "bench", URL: nowhere, MaxBuffer: b.N + 1, HeartbeatInterval: -1, Logger: quiet()})
	defer emitter.Close(time.Millisecond)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		emitter.Emit(Event{"kind": "signal", "strategy": "momentum", "symbol": "BTCUSDT", "side": "buy", "outcome": "accepted", "confidence": 0.8})
	}
}

func TestConnectionSettingsThatCannotWorkAreRefusedNamingTheOption(t *testing.T) {
	cases := []struct {
		opts    Options
		message string
	}{
		{Options{URL: "amqp://u@h/", CAFile: "ca.pem"}, "need an amqps:// URL"},
		{Options{URL: "amqps://u@h/", CertFile: "c.pem"}, "CertFile and KeyFile go together"},
		{Options{URL: "amqps://u:secret@h/", PasswordFile: "pw"}, "the password is given twice"},
		{Options{URL: "amqps://h/", PasswordFile: "pw"}, "PasswordFile needs a user"},
		{Options{URL: "http://u:secret@h/"}, "not an amqp:// or amqps:// URL"},
	}
	for _, c := range cases {
		c.opts.Source = "unit"
		_, err := newEmitter(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.message) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%+v: got %v, want %q", c.opts, err, c.message)
		}
	}
}

func TestEveryMessageCarriesTheConnectionUserAsUserId(t *testing.T) {
	emitter, err := newEmitter(Options{Source: "unit", URL: "amqps://alice@127.0.0.1:1/", PasswordFile: "/nonexistent",
		HeartbeatInterval: -1, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	emitter.queue <- signal(1)
	if !emitter.takeBatch() || emitter.pending[0].publishing.UserId != "alice" {
		t.Fatalf("user id not set: %+v", emitter.pending)
	}
	_, err = connectionConfig(emitter.opts, emitter.uri)
	var settings *SettingsError
	if !errors.As(err, &settings) || !strings.Contains(err.Error(), "PasswordFile: cannot read /nonexistent") {
		t.Fatalf("unreadable password file: %v", err)
	}
	if f := emitter.failureOf(err, "signal"); f.kind != "settings" {
		t.Fatalf("failure %+v", f)
	}
}

func TestTLSRefusalsSayWhatToDo(t *testing.T) {
	opts := Options{CAFile: "/x/ca.pem"}
	untrusted, ok := tlsFailure(fmt.Errorf("handshake: %w", x509.UnknownAuthorityError{}), opts)
	if !ok || untrusted.kind != "tls-untrusted" || !strings.Contains(untrusted.reason, "not signed by a CA in CAFile (/x/ca.pem)") {
		t.Fatalf("unknown CA: %+v", untrusted)
	}
	certificate := &x509.Certificate{DNSNames: []string{"broker"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.2")}}
	host, ok := tlsFailure(x509.HostnameError{Certificate: certificate, Host: "10.0.0.1"}, opts)
	if !ok || !strings.Contains(host.reason, "is for 'broker', '10.0.0.2', not for '10.0.0.1'") {
		t.Fatalf("host mismatch: %+v", host)
	}
	required, ok := tlsFailure(errors.New("remote error: tls: certificate required"), opts)
	if !ok || !strings.Contains(required.reason, "set CertFile and KeyFile") {
		t.Fatalf("client certificate: %+v", required)
	}
	if _, ok := tlsFailure(errors.New("dial tcp: connection refused"), opts); ok {
		t.Fatal("not a TLS failure")
	}
}
