package tickbus

import (
	"bytes"
	"encoding/json"
	"io"
	"log"
	"strings"
	"testing"
	"time"
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
