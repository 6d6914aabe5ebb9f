// Command tickbus-emit emits tickbus events read from standard input (a JSON array, or one JSON object per
// line) with the Go producer, waits for the broker's confirms, and prints what happened as one JSON line:
//
//	{"accepted":17,"dropped":0,"confirmed":17,"messages":1,"drained":true}
//
// It exits 1 if not everything emitted was confirmed within -timeout.
//
//	tickbus-emit -source desk-7 < events.jsonl
//	tickbus-emit -source desk-7 -url amqps://desk-7@broker:5671/ -ca-file ca.pem -password-file secret < events.jsonl
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	tickbus "tickbus.dev/producer"
)

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func readEvents(input []byte) ([]tickbus.Event, error) {
	input = bytes.TrimSpace(input)
	var events []tickbus.Event
	if bytes.HasPrefix(input, []byte("[")) {
		err := json.Unmarshal(input, &events)
		return events, err
	}
	scanner := bufio.NewScanner(bytes.NewReader(input))
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for scanner.Scan() {
		line := bytes.TrimSpace(scanner.Bytes())
		if len(line) == 0 {
			continue
		}
		var event tickbus.Event
		if err := json.Unmarshal(line, &event); err != nil {
			return nil, err
		}
		events = append(events, event)
	}
	return events, scanner.Err()
}

func main() {
	source := flag.String("source", os.Getenv("TICKBUS_SOURCE"), "source name (or TICKBUS_SOURCE)")
	url := flag.String("url", env("TICKBUS_AMQP_URL", tickbus.DefaultURL), "RabbitMQ URL (or TICKBUS_AMQP_URL)")
	caFile := flag.String("ca-file", os.Getenv("TICKBUS_AMQP_CA_FILE"), "amqps://: the broker's CA certificate (or TICKBUS_AMQP_CA_FILE)")
	certFile := flag.String("cert-file", os.Getenv("TICKBUS_AMQP_CERT_FILE"), "amqps://: client certificate (or TICKBUS_AMQP_CERT_FILE)")
	keyFile := flag.String("key-file", os.Getenv("TICKBUS_AMQP_KEY_FILE"), "its private key (or TICKBUS_AMQP_KEY_FILE)")
	passwordFile := flag.String("password-file", os.Getenv("TICKBUS_AMQP_PASSWORD_FILE"),
		"file holding the URL user's password (or TICKBUS_AMQP_PASSWORD_FILE)")
	exchange := flag.String("exchange", env("TICKBUS_EXCHANGE", tickbus.DefaultExchange), "exchange (or TICKBUS_EXCHANGE)")
	version := flag.String("version", "", "version reported in heartbeats")
	batchSize := flag.Int("batch-size", 1000, "most events per message")
	linger := flag.Duration("linger", 5*time.Millisecond, "how long an event may wait for others")
	maxBuffer := flag.Int("max-buffer", 100000, "events held before emit drops")
	heartbeat := flag.Duration("heartbeat", 5*time.Second, "heartbeat period; 0 sends none")
	retryMax := flag.Duration("retry-max", 5*time.Second, "longest wait between retries")
	maxInFlight := flag.Int("max-in-flight", 64, "most messages awaiting their confirms at once")
	timeout := flag.Duration("timeout", 30*time.Second, "how long to wait for confirms at the end")
	flag.Parse()
	if *source == "" {
		fmt.Fprintln(os.Stderr, "error: -source (or TICKBUS_SOURCE) is required")
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error: cannot read standard input:", err)
		os.Exit(2)
	}
	events, err := readEvents(input)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error: standard input is not JSON:", err)
		os.Exit(2)
	}
	if *heartbeat == 0 {
		*heartbeat = -1
	}
	emitter, err := tickbus.New(tickbus.Options{
		Source: *source, URL: *url, CAFile: *caFile, CertFile: *certFile, KeyFile: *keyFile,
		PasswordFile: *passwordFile, Exchange: *exchange, Version: *version, BatchSize: *batchSize,
		Linger: *linger, MaxBuffer: *maxBuffer, HeartbeatInterval: *heartbeat, RetryMax: *retryMax,
		MaxInFlight: *maxInFlight,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	for _, event := range events {
		emitter.Emit(event)
	}
	drained := emitter.Close(*timeout)
	report, _ := json.Marshal(map[string]any{
		"accepted": emitter.Accepted(), "dropped": emitter.Dropped(), "confirmed": emitter.Confirmed(),
		"messages": emitter.Messages(), "drained": drained,
	})
	fmt.Println(string(report))
	if !drained {
		os.Exit(1)
	}
}
