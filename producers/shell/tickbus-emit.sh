#!/usr/bin/env bash
# tickbus-emit.sh: publish one tickbus event from a shell, with nothing but bash and amqp-publish (Debian's
# amqp-tools; scripts/install-amqp-tools installs it). For machines without Python; where Python and tickbus
# are installed, `aggregator emit` does the same and also validates the event before sending it.
#
#   tickbus-emit.sh [--url URL] [--exchange NAME] [--source NAME] [--dry-run] KIND [FIELD=VALUE]...
#
#   tickbus-emit.sh signal strategy=momentum symbol=BTCUSDT side=buy outcome=accepted confidence=0.8
#   tickbus-emit.sh error component=backup error_type=failed severity=critical message="disk full"
#   tickbus-emit.sh dependency dependency=postgres operation=select outcome=ok latency=0.004
#   tickbus-emit.sh metric name=kill_switch_active value=1 labels.reason=drawdown
#
# FIELD=VALUE   numeric and boolean fields (see NUMBER_FIELDS, BOOLEAN_FIELDS) become JSON numbers and
#               booleans, everything else a JSON string; labels.NAME=VALUE fills a metric's labels;
#               FIELD:=JSON puts raw JSON in (e.g. labels:='{"cache":"features"}').
# ts and source are filled in (now, and --source) unless given.
# Environment: TICKBUS_AMQP_URL, TICKBUS_EXCHANGE, TICKBUS_SOURCE (defaults: local broker, metrics, host name).
#
# Prints the event's JSON when the broker took it. Exit status: 0 sent, 2 bad arguments, 1 not sent.
# Limits of amqp-publish (see docs/wire-format.md): no publisher confirms, no mandatory flag (an event no queue is
# bound for is dropped by the broker, and the exit status is still 0), and no message id, timestamp or app id
# property; the id goes into the x-tickbus-message-id header instead. The script never retries by itself.
set -euo pipefail

# Kept equal to the Structs by tests/unit/test_wire_contract.py.
KINDS="signal order prediction error position portfolio trade heartbeat dependency metric"
NUMBER_FIELDS="avg_price cash confidence cpu_seconds daily_pnl daily_return drawdown dropped equity expected_profit exposure holding_time latency market_value open_positions pnl price probability quantity realized_pnl resident_memory_bytes slippage_bps started_at total_return ts unrealized_pnl value"
BOOLEAN_FIELDS="correct healthy up"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

fail() {
  echo "tickbus-emit: $1" >&2
  exit "${2:-2}"
}

# A JSON string literal of $1: backslash, quote and control characters escaped.
json_string() {
  local s=$1 out="" char code
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  if [[ $s == *[$'\x01'-$'\x1f']* ]]; then
    local i
    for ((i = 0; i < ${#s}; i++)); do
      char=${s:i:1}
      if [[ $char == [$'\x01'-$'\x1f'] ]]; then
        printf -v code '\\u%04x' "'$char"
        out+=$code
      else
        out+=$char
      fi
    done
    s=$out
  fi
  printf '"%s"' "$s"
}

is_word_in() { [[ " $2 " == *" $1 "* ]]; }

url=${TICKBUS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
exchange=${TICKBUS_EXCHANGE:-metrics}
source_name=${TICKBUS_SOURCE:-$(hostname -s 2>/dev/null || hostname)}
dry_run=0
while [ $# -gt 0 ]; do
  case $1 in
    --url) url=${2:?--url needs a value}; shift 2 ;;
    --url=*) url=${1#*=}; shift ;;
    --exchange) exchange=${2:?--exchange needs a value}; shift 2 ;;
    --exchange=*) exchange=${1#*=}; shift ;;
    --source) source_name=${2:?--source needs a value}; shift 2 ;;
    --source=*) source_name=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) fail "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
# The URL spec reads a bare trailing slash as the empty vhost name; tickbus (like most AMQP clients) means "/".
[[ $url =~ ^amqps?://[^/]*/$ ]] && url="${url}%2f"
kind=$1
shift
is_word_in "$kind" "$KINDS" || fail "unknown kind '$kind'; one of: $KINDS"

number='^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$'
fields="\"kind\":$(json_string "$kind")"
labels=""
have_ts=0
have_source=0
for assignment in "$@"; do
  case $assignment in
    *:=*) name=${assignment%%:=*}; raw=${assignment#*:=} ;;
    *=*) name=${assignment%%=*}; raw="" ;;
    *) fail "expected FIELD=VALUE, got '$assignment'" ;;
  esac
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || fail "bad field name '$name'"
  if [[ $assignment != *:=* ]]; then
    text=${assignment#*=}
    if [[ $name == labels.* ]]; then
      labels+="${labels:+,}$(json_string "${name#labels.}"):$(json_string "$text")"
      continue
    elif is_word_in "$name" "$NUMBER_FIELDS"; then
      [[ $text =~ $number ]] || fail "$name must be a number, got '$text'"
      raw=$text
    elif is_word_in "$name" "$BOOLEAN_FIELDS"; then
      [[ $text == true || $text == false ]] || fail "$name must be true or false, got '$text'"
      raw=$text
    else
      raw=$(json_string "$text")
    fi
  fi
  [ "$name" = kind ] && fail "give the kind as the first word, not as a field"
  [ "$name" = ts ] && have_ts=1
  [ "$name" = source ] && have_source=1
  fields+=",$(json_string "$name"):$raw"
done
[ -n "$labels" ] && fields+=",\"labels\":{$labels}"
if [ "$have_ts" = 0 ]; then
  now=${EPOCHREALTIME:-$(date +%s)}
  fields+=",\"ts\":${now/,/.}"
fi
[ "$have_source" = 0 ] && fields+=",\"source\":$(json_string "$source_name")"
body="{$fields}"

# <instance>-<sequence>, as every tickbus producer names its messages: this run is its own instance.
instance=$(od -An -N6 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n') || instance=""
[ ${#instance} -eq 12 ] || printf -v instance '%04x%04x%04x' "$RANDOM" "$RANDOM" "$$"
message_id="$instance-1"

command=(amqp-publish --url="$url" --exchange="$exchange" --routing-key="$kind" --persistent
  --content-type=application/json --header="x-tickbus-message-id: $message_id" --body="$body")
if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$body"
  printf '%q ' "${command[@]}" >&2
  echo >&2
  exit 0
fi
command -v amqp-publish >/dev/null || fail "amqp-publish not found: install Debian's amqp-tools (scripts/install-amqp-tools)" 1
if ! error=$("${command[@]}" 2>&1); then
  shown=$url
  [[ $url =~ ^([a-z]+://[^:/@]*):[^@]*@(.*)$ ]] && shown="${BASH_REMATCH[1]}:***@${BASH_REMATCH[2]}"
  fail "not sent to exchange '$exchange' at $shown: $error" 1
fi
printf '%s\n' "$body"
