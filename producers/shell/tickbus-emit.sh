#!/usr/bin/env bash
# tickbus-emit.sh: publish one tickbus event from a shell, with nothing but bash and amqp-publish (Debian's
# amqp-tools; scripts/install-amqp-tools installs it). For machines without Python; where Python and tickbus
# are installed, `aggregator emit` does the same and also validates the event before sending it.
#
#   tickbus-emit.sh [--url URL] [--exchange NAME] [--source NAME] [--ca-file F] [--cert-file F --key-file F]
#                   [--password-file F] [--dry-run] KIND [FIELD=VALUE]...
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
# Environment: TICKBUS_AMQP_URL, TICKBUS_EXCHANGE, TICKBUS_SOURCE (defaults: local broker, metrics, host name);
# TICKBUS_AMQP_CA_FILE, TICKBUS_AMQP_CERT_FILE, TICKBUS_AMQP_KEY_FILE, TICKBUS_AMQP_PASSWORD_FILE (as the options).
#
# TLS: an amqps:// URL whose host is a name in the broker's certificate (amqp-publish checks host names, not IP
# addresses), --ca-file the CA that signed it (default: the system's CAs), --cert-file/--key-file a client
# certificate for a broker that asks for one. --password-file holds the URL user's password (a Docker or
# Kubernetes secret). amqp-tools 0.11 takes TLS only with --url, and --url only with the password in it: over
# amqps:// the password is on amqp-publish's command line while it runs (visible to `ps` on this machine); over
# amqp:// it goes through a private temporary --authfile. A refused TLS connection is diagnosed with `openssl
# s_client` (when installed) to say whether the CA or the host name is wrong.
#
# Prints the event's JSON when the broker took it. Exit status: 0 sent, 2 bad arguments, 1 not sent.
# Limits of amqp-publish (see docs/wire-format.md): no publisher confirms, no mandatory flag (an event no queue is
# bound for is dropped by the broker, and the exit status is still 0), and no message id, timestamp or app id
# property; the id goes into the x-tickbus-message-id header instead. The script never retries by itself. Nor
# can it set user_id: an aggregator authenticating sources (source_auth) refuses its events (source_not_allowed).
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

# Why a TLS connection to $1:$2 fails, in words that say what to do (from `openssl s_client`); fails when the
# handshake works or openssl is missing.
diagnose_tls() {
  local host=$1 port=$2 check out names
  command -v openssl >/dev/null || return 1
  check=(-verify_hostname "$host")
  [[ $host =~ ^[0-9.]+$ || $host == *:* ]] && check=(-verify_ip "$host")
  out=$(openssl s_client -connect "$host:$port" -servername "$host" "${check[@]}" \
    -CAfile "${ca_file:-/etc/ssl/certs/ca-certificates.crt}" -verify_return_error -brief </dev/null 2>&1) || true
  case $out in
    *"verify error:num=62"* | *"verify error:num=64"*)
      names=$(openssl s_client -connect "$host:$port" -servername "$host" </dev/null 2>/dev/null |
        openssl x509 -noout -ext subjectAltName 2>/dev/null | sed -n 's/^ *//; s/DNS://g; s/IP Address://g; 2p')
      echo "TLS: the broker's certificate is for ${names:-names not read}, not for '$host' (the host in the URL):" \
        "connect by a name the certificate holds, or give the broker a certificate that names '$host'" ;;
    *"verify error:num="*)
      local trusted="the system's CAs (no --ca-file)"
      [ -z "$ca_file" ] || trusted=$ca_file
      echo "TLS: the broker's certificate is not signed by a CA in $trusted" \
        "($(sed -n 's/.*verify error:num=[0-9]*://p' <<<"$out" | head -n 1)): set --ca-file to the CA certificate" \
        "that issued it" ;;
    *"CONNECTION ESTABLISHED"*)
      if [[ $host =~ ^[0-9.]+$ ]]; then
        echo "TLS: amqp-publish checks the broker's certificate against host names only: use a host name in the URL"
      else
        return 1
      fi ;;
    *) return 1 ;;
  esac
}

url=${TICKBUS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
exchange=${TICKBUS_EXCHANGE:-metrics}
source_name=${TICKBUS_SOURCE:-$(hostname -s 2>/dev/null || hostname)}
ca_file=${TICKBUS_AMQP_CA_FILE:-}
cert_file=${TICKBUS_AMQP_CERT_FILE:-}
key_file=${TICKBUS_AMQP_KEY_FILE:-}
password_file=${TICKBUS_AMQP_PASSWORD_FILE:-}
dry_run=0
while [ $# -gt 0 ]; do
  case $1 in
    --url) url=${2:?--url needs a value}; shift 2 ;;
    --url=*) url=${1#*=}; shift ;;
    --exchange) exchange=${2:?--exchange needs a value}; shift 2 ;;
    --exchange=*) exchange=${1#*=}; shift ;;
    --source) source_name=${2:?--source needs a value}; shift 2 ;;
    --source=*) source_name=${1#*=}; shift ;;
    --ca-file) ca_file=${2:?--ca-file needs a value}; shift 2 ;;
    --ca-file=*) ca_file=${1#*=}; shift ;;
    --cert-file) cert_file=${2:?--cert-file needs a value}; shift 2 ;;
    --cert-file=*) cert_file=${1#*=}; shift ;;
    --key-file) key_file=${2:?--key-file needs a value}; shift 2 ;;
    --key-file=*) key_file=${1#*=}; shift ;;
    --password-file) password_file=${2:?--password-file needs a value}; shift 2 ;;
    --password-file=*) password_file=${1#*=}; shift ;;
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
# scheme://[user[:password]@]host[:port][/vhost]
[[ $url =~ ^(amqps?)://(([^:@/]*)(:([^@/]*))?@)?([^:/]+)(:([0-9]+))?(/(.*))?$ ]] ||
  fail "--url must look like amqp[s]://user@host:port/vhost"
scheme=${BASH_REMATCH[1]}
url_user=${BASH_REMATCH[3]}
url_has_password=${BASH_REMATCH[4]:+1}
url_host=${BASH_REMATCH[6]}
url_port=${BASH_REMATCH[8]}
url_vhost=${BASH_REMATCH[10]}
if [ "$scheme" != amqps ] && [ -n "$ca_file$cert_file$key_file" ]; then
  fail "--ca-file, --cert-file and --key-file need an amqps:// URL (the broker's TLS port, 5671 by default)"
fi
{ [ -n "$cert_file" ] && [ -n "$key_file" ]; } || [ -z "$cert_file$key_file" ] ||
  fail "--cert-file and --key-file go together (the client certificate and its private key)"
for file in "$ca_file" "$cert_file" "$key_file" "$password_file"; do
  [ -z "$file" ] || [ -r "$file" ] || fail "cannot read $file"
done
if [ -n "$password_file" ]; then
  [ -z "$url_has_password" ] || fail "the password is given twice: in the URL and in --password-file; keep one"
  [ -n "$url_user" ] || fail "--password-file needs a user in the URL (amqps://USER@host:5671/)"
fi
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
  if [ "$name" = source ]; then
    have_source=1
    [[ $assignment == *:=* ]] || source_name=${assignment#*=}
  fi
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

publish=(--exchange="$exchange" --routing-key="$kind" --persistent --content-type=application/json
  --header="x-tickbus-message-id: $message_id" --header="x-tickbus-source: $source_name" --body="$body")
connection=(--url="$url")
shown=$url
[[ $url =~ ^([a-z]+://[^:/@]*):[^@]*@(.*)$ ]] && shown="${BASH_REMATCH[1]}:***@${BASH_REMATCH[2]}"
if [ "$scheme" = amqps ]; then
  # amqp-publish's own default CA file does not exist on Debian: the system's CAs unless told otherwise.
  connection+=(--cacert="${ca_file:-/etc/ssl/certs/ca-certificates.crt}")
  [ -z "$cert_file" ] || connection+=(--cert="$cert_file" --key="$key_file")
fi
if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$body"
  printf '%q ' amqp-publish "${connection[@]}" "${publish[@]}" >&2
  echo >&2
  exit 0
fi
command -v amqp-publish >/dev/null || fail "amqp-publish not found: install Debian's amqp-tools (scripts/install-amqp-tools)" 1
authfile=""
trap '[ -z "$authfile" ] || rm -f "$authfile"' EXIT
if [ -n "$password_file" ]; then
  IFS= read -r password <"$password_file" || [ -n "${password:-}" ] || fail "the password file $password_file is empty"
  [ -n "$password" ] || fail "the password file $password_file is empty"
  if [ "$scheme" = amqps ]; then
    # amqp-tools takes TLS only with --url, and --url only with the password in it.
    encoded=""
    for ((i = 0; i < ${#password}; i++)); do
      char=${password:i:1}
      case $char in
        [A-Za-z0-9._~-]) encoded+=$char ;;
        *) printf -v char '%%%02X' "'$char"; encoded+=$char ;;
      esac
    done
    connection=(--url="$scheme://$url_user:$encoded@${url#*@}" "${connection[@]:1}")
  else
    authfile=$(mktemp)
    chmod 600 "$authfile"
    printf 'username:%s\npassword:%s\n' "$url_user" "$password" >"$authfile"
    vhost=${url_vhost:-/}
    vhost=${vhost//%2f/\/}
    vhost=${vhost//%2F/\/}
    connection=(--server="$url_host" --port="${url_port:-5672}" --vhost="$vhost" --authfile="$authfile")
  fi
fi
if ! error=$(amqp-publish "${connection[@]}" "${publish[@]}" 2>&1); then
  if [ "$scheme" = amqps ] && [[ $error == *"opening socket"* || $error == *SSL* ]]; then
    diagnosis=$(diagnose_tls "$url_host" "${url_port:-5671}") && error="$error: $diagnosis"
  fi
  fail "not sent to exchange '$exchange' at $shown: $error" 1
fi
printf '%s\n' "$body"
