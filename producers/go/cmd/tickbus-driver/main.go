// Command tickbus-driver is a scripted Go producer for the cross-language tests (tests/support/driver.py):
// one JSON command per line on standard input, one JSON reply per line on standard output.
//
//	argument 1: {"source", "url", "caFile", "certFile", "keyFile", "passwordFile", "exchange",
//	            "heartbeatIntervalMs", "retryMaxMs", "maxBuffer", "batchSize", "maxInFlight"}
//	{"op": "emit", "events": [...]}         emit them all; reply with how many it took and how long that took
//	{"op": "flush", "timeout_ms": 10000}    wait for confirms
//	{"op": "stats"}                         counters (in_flight, peak_in_flight too) and the last publishing error
//	{"op": "close", "timeout_ms": 10000}    drain, last heartbeat, disconnect, exit
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	tickbus "tickbus.dev/producer"
)

type settings struct {
	Source              string `json:"source"`
	URL                 string `json:"url"`
	CAFile              string `json:"caFile"`
	CertFile            string `json:"certFile"`
	KeyFile             string `json:"keyFile"`
	PasswordFile        string `json:"passwordFile"`
	Exchange            string `json:"exchange"`
	HeartbeatIntervalMs int    `json:"heartbeatIntervalMs"`
	RetryMaxMs          int    `json:"retryMaxMs"`
	MaxBuffer           int    `json:"maxBuffer"`
	BatchSize           int    `json:"batchSize"`
	MaxInFlight         int    `json:"maxInFlight"`
}

type command struct {
	Op        string          `json:"op"`
	Events    []tickbus.Event `json:"events"`
	TimeoutMs int             `json:"timeout_ms"`
}

func main() {
	var options settings
	if len(os.Args) > 1 {
		if err := json.Unmarshal([]byte(os.Args[1]), &options); err != nil {
			log.Fatalf("bad options: %v", err)
		}
	}
	heartbeat := time.Duration(options.HeartbeatIntervalMs) * time.Millisecond
	if options.HeartbeatIntervalMs == 0 {
		heartbeat = -1
	}
	emitter, err := tickbus.New(tickbus.Options{
		Source: options.Source, URL: options.URL, CAFile: options.CAFile, CertFile: options.CertFile,
		KeyFile: options.KeyFile, PasswordFile: options.PasswordFile, Exchange: options.Exchange, HeartbeatInterval: heartbeat,
		RetryMax: time.Duration(options.RetryMaxMs) * time.Millisecond, MaxBuffer: options.MaxBuffer,
		BatchSize: options.BatchSize, MaxInFlight: options.MaxInFlight, Logger: log.New(os.Stderr, "", log.LstdFlags),
	})
	if err != nil {
		log.Fatal(err)
	}
	out := json.NewEncoder(os.Stdout)
	answer := func(op string, extra map[string]any) {
		reply := map[string]any{
			"op": op, "accepted": emitter.Accepted(), "dropped": emitter.Dropped(),
			"confirmed": emitter.Confirmed(), "messages": emitter.Messages(),
			"last_error": emitter.LastError(), "pending": emitter.Pending(),
			"in_flight": emitter.InFlight(), "peak_in_flight": emitter.PeakInFlight(),
		}
		for key, value := range extra {
			reply[key] = value
		}
		_ = out.Encode(reply)
	}
	timeout := func(c command) time.Duration {
		if c.TimeoutMs <= 0 {
			return 10 * time.Second
		}
		return time.Duration(c.TimeoutMs) * time.Millisecond
	}
	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 1<<20), 1<<26)
	for lines.Scan() {
		var c command
		if err := json.Unmarshal(lines.Bytes(), &c); err != nil {
			answer("error", map[string]any{"error": err.Error()})
			continue
		}
		switch c.Op {
		case "emit":
			took := 0
			started := time.Now()
			for _, event := range c.Events {
				if emitter.Emit(event) {
					took++
				}
			}
			elapsed := float64(time.Since(started).Nanoseconds()) / 1e6
			answer("emit", map[string]any{"took": took, "emit_ms": elapsed})
		case "flush":
			answer("flush", map[string]any{"ok": emitter.Flush(timeout(c))})
		case "stats":
			answer("stats", nil)
		case "close":
			answer("close", map[string]any{"ok": emitter.Close(timeout(c))})
			return
		default:
			answer("error", map[string]any{"error": fmt.Sprintf("unknown op %q", c.Op)})
		}
	}
	emitter.Close(time.Second)
}
