#!/usr/bin/env bash
# log_tool.sh - black-box test of `txmq log dump` and `txmq log verify`.
#
# Writes logs with the log-demo example (through the store, and raw records
# through the log API), then runs the tool on them, on damaged copies
# (truncated tail, zeros after the tail, a flipped byte in the middle of a
# segment, a missing segment, a record that is not a message), with bad
# command lines and into a pipe whose reader stops reading (`| head`: no
# error), and checks exit codes, the exact error lines and, through
# --json (parsed with Lua 5.4 and dkjson), what was read. The transaction
# engine's records come from fixtures that tests/fixtures/log/gen.py wrote
# with its own msgpack encoder (a good log, and records whose checksum is
# valid but whose payload is not a transaction record); cli_log_tx.sh
# dumps a log that a real txmqd wrote.
#
#   bash tests/integration/log_tool.sh BUILD/bin
set -euo pipefail

bin="${1:?usage: log_tool.sh BIN_DIR, the bin directory of a build}"
bin="$(cd "$bin" && pwd)"
txmq="$bin/txmq"
demo="$bin/log-demo"
for b in "$txmq" "$demo"; do
  [ -x "$b" ] || { echo "FAIL: $b is not built"; exit 1; }
done
fixtures="$(cd "$(dirname "${BASH_SOURCE[0]}")/../fixtures/log" && pwd)"
command -v lua5.4 >/dev/null || { echo "FAIL: lua5.4 is not installed"; exit 1; }
lua5.4 -e 'require "dkjson"' 2>/dev/null ||
  { echo "FAIL: the Lua module dkjson (Debian lua-dkjson, pulled in by lua-busted) is missing"; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/txmq-log-tool.XXXXXX")"
trap 'rm -rf "$work"' EXIT

passed=0
failures=()
ok() { passed=$((passed + 1)); echo "ok     $1"; }
not_ok() { failures+=("$1"); echo "FAIL   $1"; }

# run CMD... : stdout to $out, stderr to $err, exit status to $rc.
out="$work/out"
err="$work/err"
rc=0
run() {
  set +e
  timeout 60 "$@" >"$out" 2>"$err"
  rc=$?
  set -e
}
first_err() { head -n 1 "$err"; }
err_lines() { wc -l <"$err" | tr -d ' '; }

# expect NAME RC [EXACT_STDERR_LINE]: the last run's exit status and, when
# given, its whole standard error (exactly one line).
expect() {
  local name=$1 want=$2
  if [ "$rc" != "$want" ]; then
    not_ok "$name: exit $rc, want $want (stderr: $(head -c 300 "$err"))"
  elif [ $# -ge 3 ] && { [ "$(err_lines)" != 1 ] || [ "$(first_err)" != "$3" ]; }; then
    not_ok "$name: stderr is '$(head -c 300 "$err")', want exactly '$3'"
  else
    ok "$name"
  fi
}
# expect_err_prefix NAME RC PREFIX: exit status and a one-line stderr that
# starts with PREFIX.
expect_err_prefix() {
  local name=$1 want=$2 prefix=$3
  if [ "$rc" != "$want" ]; then
    not_ok "$name: exit $rc, want $want (stderr: $(head -c 300 "$err"))"
  elif [ "$(err_lines)" != 1 ] || [[ "$(first_err)" != "$prefix"* ]]; then
    not_ok "$name: stderr is '$(head -c 400 "$err")', want one line starting '$prefix'"
  else
    ok "$name"
  fi
}
# check NAME COMMAND...: passes if COMMAND succeeds.
check() {
  local name=$1
  shift
  if "$@"; then ok "$name"; else not_ok "$name"; fi
}

# jl FILE CODE: runs Lua CODE with `lines` = the JSON objects of FILE (one
# per line) and kind(k) = those of that kind; prints what CODE prints.
cat >"$work/prelude.lua" <<'LUA'
local json = require "dkjson"
lines = {}
for l in io.lines(arg[1]) do
  local o, _, e = json.decode(l)
  if type(o) ~= "table" then
    io.stderr:write("not a JSON object: " .. l .. " (" .. tostring(e) .. ")\n")
    os.exit(3)
  end
  lines[#lines + 1] = o
end
function kind(k)
  local t = {}
  for _, o in ipairs(lines) do if o.kind == k then t[#t + 1] = o end end
  return t
end
LUA
jl() {
  { cat "$work/prelude.lua"; printf '%s\n' "$2"; } >"$work/q.lua"
  lua5.4 "$work/q.lua" "$1"
}

flip_byte() { # flip_byte FILE OFFSET: inverts one byte in place
  local f=$1 off=$2 b
  b=$(od -An -tu1 -j "$off" -N1 "$f" | tr -d ' ')
  # shellcheck disable=SC2059
  printf "$(printf '\\%03o' $((b ^ 0xff)))" |
    dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

# ---------------------------------------------------------------------------
echo "# writing logs with log-demo"
data="$work/data"
"$demo" put "$data" --count 60 --segment-size 4096 >/dev/null
"$demo" put "$data" --count 5 --binary --segment-size 4096 >/dev/null
logdir="$data/log"
# The damage tests below need a newest segment holding at least 3 records
# (corruption there with valid records after it is not a torn tail): add
# orders until it does.
nmsg_written=65
for _ in 1 2 3 4 5 6 7 8; do
  "$txmq" log dump --json "$data" >"$work/probe.json"
  in_last=$(jl "$work/probe.json" '
    local segs, n = kind("segment"), 0
    for _, r in ipairs(kind("record")) do if r.segment == segs[#segs].file then n = n + 1 end end
    print(n)')
  [ "$in_last" -ge 3 ] && break
  "$demo" put "$data" --count 2 --segment-size 4096 >/dev/null
  nmsg_written=$((nmsg_written + 2))
done
nseg_files=$(find "$logdir" -name '[0-9]*.log' | wc -l | tr -d ' ')
check "the store wrote several segments ($nseg_files)" test "$nseg_files" -ge 3

# --- dump --json: structure, density of positions, decoded messages ---------
run "$txmq" log dump "$data" --json
expect "dump --json of a data directory exits 0" 0
cp "$out" "$work/dump.json"
res=$(jl "$work/dump.json" '
  local log, segs, recs = kind("log")[1], kind("segment"), kind("record")
  local problems = {}
  local function bad(m) problems[#problems + 1] = m end
  if not log then bad("no log object") end
  if lines[1] ~= log then bad("the log object is not first") end
  if log.segments ~= #segs then bad("log.segments ~= segment lines") end
  local msgs, topics = 0, 0
  for i, r in ipairs(recs) do
    if i == 1 and r.pos ~= log.begin then bad("first pos ~= begin") end
    if recs[i + 1] and r.next ~= recs[i + 1].pos then bad("positions not dense at " .. r.pos) end
    if r.next ~= r.pos + 12 + r.len then bad("next ~= pos + 12 + len at " .. r.pos) end
    local seg
    for _, s in ipairs(segs) do if s.base <= r.pos then seg = s end end
    if not seg or seg.file ~= r.segment then bad("wrong segment for " .. r.pos) end
    if r.type == "msg" then msgs = msgs + 1 end
    if r.type == "topic" then topics = topics + 1 end
  end
  if recs[#recs].next ~= log["end"] then bad("last next ~= end") end
  local m1
  for _, r in ipairs(recs) do if r.type == "msg" then m1 = r.msg break end end
  if not (m1 and m1.topic == "orders" and m1.keys == "order-1" and m1.tags == "paid"
          and m1.props.source == "log-demo" and m1.body_encoding == "text"
          and m1.body == "{\"order\":1,\"amount_cents\":7919,\"status\":\"paid\"}"
          and #m1.id == 32 and m1.qid >= 0) then bad("first message not decoded as written") end
  local bin
  for _, r in ipairs(recs) do if r.type == "msg" and r.msg.keys == "order-65" then bin = r.msg end end
  if not (bin and bin.body_encoding == "base64" and bin.body_len == 24 and #bin.body == 32) then
    bad("binary body not base64")
  end
  for _, t in ipairs(recs) do
    if t.type == "topic" and not (t.topic.name == "orders" and t.topic.queues >= 1) then bad("topic record") end
  end
  print(#problems == 0 and "ok" or table.concat(problems, "; "))
  print(#segs, #recs, msgs, topics, log.begin, log["end"])
')
verdict=$(sed -n 1p <<<"$res")
read -r nseg nrec nmsg ntopic lbegin lend <<<"$(sed -n 2p <<<"$res")"
check "dump --json: one log object, segments, dense records, decoded messages ($verdict)" \
  test "$verdict" = ok
check "dump --json lists every segment file" test "$nseg" = "$nseg_files"
check "dump --json: every message and 1 topic record" \
  test "$nmsg/$ntopic/$nrec" = "$nmsg_written/1/$((nmsg_written + 1))"

# --- plain dump -----------------------------------------------------------
run "$txmq" log dump "$data"
expect "plain dump exits 0 with nothing on stderr" 0
cp "$out" "$work/dump.txt"
check "plain dump: one line per segment" test "$(grep -c '^segment ' "$work/dump.txt")" = "$nseg"
check "plain dump: one line per record" test "$(grep -c '^record ' "$work/dump.txt")" = "$nrec"
check "plain dump: a text body is shown as text" \
  grep -qF 'keys="order-1" props={"source":"log-demo"} born=' "$work/dump.txt"
check "plain dump: text body quoted" \
  grep -qF 'body=text:"{\"order\":1,\"amount_cents\":7919,\"status\":\"paid\"}"' "$work/dump.txt"
check "plain dump: a binary body is shown as hex and says so" \
  grep -qE 'keys="order-65" .*body_len=24 body=hex:ff[0-9a-f]{46}$' "$work/dump.txt"
check "plain dump: the topic record is decoded" \
  grep -qE '^record pos=[0-9]+ type=topic len=[0-9]+ next=[0-9]+ topic=orders queues=[0-9]+$' "$work/dump.txt"
run "$txmq" log dump "$logdir"
check "dump of the log directory equals dump of the data directory" cmp -s "$out" "$work/dump.txt"

# --- a reader that stops reading: the output ends there, nothing to report -
set +e
"$txmq" log dump "$data" --json 2>"$err" | head -n 1 >"$out"
st=${PIPESTATUS[0]}
set -e
check "dump | head -1: the first line" test "$(jl "$out" 'print(#lines, lines[1].kind)')" = "1	log"
check "dump | head -1: exit 0, nothing on stderr" test "$st/$(head -c 200 "$err")" = "0/"
# The same with a reader gone before the first write, so that every write
# meets the closed pipe (head above may have read all before leaving): the
# reader closes its end, then tells the writer to start.
set +e
{
  for _ in $(seq 100); do [ -e "$work/reader-gone" ] && break; sleep 0.1; done
  exec "$txmq" log dump "$data"
} 2>"$err" | { exec 0<&-; touch "$work/reader-gone"; }
st=${PIPESTATUS[0]}
set -e
check "dump into a pipe closed at once: exit 0, nothing on stderr" \
  test "$st/$(head -c 200 "$err")" = "0/"
if [ -w /dev/full ]; then
  set +e
  "$txmq" log dump "$data" >/dev/full 2>"$err"
  rc=$?
  set -e
  expect "dump to a full device is still an error" 1 "txmq: writing standard output failed"
fi

# --- --from and -n, options anywhere -------------------------------------
read -r p3 p4 <<<"$(jl "$work/dump.json" 'local r = kind("record"); print(r[3].pos, r[4].pos)')"
run "$txmq" --json log dump -n 2 "$data" --from "$p3"
expect "options before and after the positionals" 0
check "--from POS -n 2 gives the 2 records from POS" \
  test "$(jl "$out" 'local r = kind("record"); print(#r, r[1].pos)')" = "2	$p3"
run "$txmq" log dump "$data" --from=$((p3 + 1)) --json -n1
check "--from inside a record starts at the next record" \
  test "$(jl "$out" 'local r = kind("record"); print(#r, r[1].pos)')" = "1	$p4"
run "$txmq" log dump -- "$data" -n 0
expect "'--' ends the options" 2 "txmq: 'log dump' takes one directory; unexpected '-n'"
run "$txmq" log dump -n 0 "$data"
check "-n 0 prints no record" test "$rc/$(grep -c '^record ' "$out" || true)" = "0/0"
run "$txmq" log dump "$data" --from "$lend" --json
check "--from the end prints no record" \
  test "$rc/$(jl "$out" 'print(#kind("record"))')" = "0/0"

# --- verify: clean ---------------------------------------------------------
run "$txmq" log verify "$data"
expect "verify of a clean log exits 0 with nothing on stderr" 0
check "verify prints the counts" grep -qxF \
  "$logdir: ok, $nseg segments, $nrec records ($nmsg msg, $ntopic topic, 0 tx_half, 0 tx_event, 0 other), $((lend - lbegin)) bytes, positions $lbegin..$lend" "$out"
run "$txmq" log verify --json "$data"
check "verify --json: status ok and the same counts as dump" \
  test "$(jl "$out" 'local v = kind("verify")[1]; print(#lines, v.status, v.segments, v.records, v.msgs, v.bytes)')" \
  = "1	ok	$nseg	$nrec	$nmsg	$((lend - lbegin))"

# Facts about the records, for the damage below.
last_seg=$(ls "$logdir" | grep -E '^[0-9]{20}\.log$' | sort | tail -n 1)
first_seg=$(ls "$logdir" | grep -E '^[0-9]{20}\.log$' | sort | head -n 1)
# A record in the middle of the first segment, and the first record of the
# last segment when another follows it.
read -r mid_i mid_pos mid_len mid_base <<<"$(jl "$work/dump.json" '
  local segs, recs = kind("segment"), kind("record")
  local inseg = {}
  for i, r in ipairs(recs) do if r.segment == segs[1].file then inseg[#inseg + 1] = i end end
  local i = inseg[math.max(2, #inseg // 2)]
  print(i - 1, recs[i].pos, recs[i].len, segs[1].base)')"
read -r ls_i ls_pos ls_len ls_base <<<"$(jl "$work/dump.json" '
  local segs, recs = kind("segment"), kind("record")
  local last = segs[#segs]
  for i, r in ipairs(recs) do
    if r.segment == last.file and recs[i + 1] then print(i - 1, r.pos, r.len, last.base) break end
  end')"
read -r tail_pos tail_len <<<"$(jl "$work/dump.json" 'local r = kind("record"); print(r[#r].pos, r[#r].len)')"

snapshot() { (cd "$1" && find . -type f -exec md5sum {} + | sort); }

# --- torn tail: the last record cut short ------------------------------------
torn="$work/torn"
cp -r "$data" "$torn"
# (the file may go on with zeros the writer filled ahead: cut the record)
size=$((32 + tail_pos + 12 + tail_len - 10#${last_seg%.log}))
truncate -s $((size - 5)) "$torn/log/$last_seg"
before=$(snapshot "$torn")
run "$txmq" log verify "$torn"
expect_err_prefix "verify of a cut last record: exit 0, one-line torn-tail note" 0 \
  "txmq: torn tail: $torn/log/$last_seg: $((tail_len + 12 - 5)) bytes after position $tail_pos are an incomplete write"
check "verify says torn tail, not corrupt, and counts the records before it" \
  grep -qF "$torn/log: torn tail, $nseg segments, $((nrec - 1)) records" "$out"
run "$txmq" log verify --json "$torn"
check "verify --json: status torn_tail at the cut record" \
  test "$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.pos, v.torn_bytes, v.segment_file, v.records)')" \
  = "torn_tail	$tail_pos	$((tail_len + 12 - 5))	$last_seg	$((nrec - 1))"
run "$txmq" log dump --json "$torn"
check "dump of a torn log exits 0 and shows every complete record" \
  test "$rc/$(jl "$out" 'print(#kind("record"))')" = "0/$((nrec - 1))"
check "dump and verify leave a torn log untouched (read-only)" test "$(snapshot "$torn")" = "$before"

# --- torn tail: the only record of the newest segment cut short -------------
lone="$work/lone"
"$demo" append "$lone" --type 42 --count 3 --size 2000 --segment-size 4096 >/dev/null
lone_last=$(ls "$lone" | grep -E '^[0-9]{20}\.log$' | sort | tail -n 1)
lone_base=$((10#${lone_last%.log}))
truncate -s $((32 + 2012 - 5)) "$lone/$lone_last"
run "$txmq" log verify "$lone"
expect_err_prefix "verify: a torn lone record names the newest segment file" 0 \
  "txmq: torn tail: $lone/$lone_last: 2007 bytes after position $lone_base are an incomplete write"
check "...and counts both segment files and the 2 complete records" \
  grep -qF "$lone: torn tail, 2 segments, 2 records (0 msg, 0 topic, 0 tx_half, 0 tx_event, 2 other)" "$out"

# --- the newest segment's creation cut short (shorter than its header) -----
# The log leaves such a file out (a read-write open writes its header again);
# verify says so instead of "ok".
tornhdr="$work/tornhdr"
cp -r "$lone" "$tornhdr"
truncate -s 10 "$tornhdr/$lone_last"
run "$txmq" log verify "$tornhdr"
expect_err_prefix "verify: a newest segment shorter than its header is a torn tail, exit 0" 0 \
  "txmq: torn tail: $tornhdr/$lone_last: the newest segment holds 10 of its 32 header bytes"
check "...and the summary says so" \
  grep -qF "; $lone_last has 10 bytes of its header, written again at the next open" "$out"
run "$txmq" log verify --json "$tornhdr"
check "verify --json: torn_tail, 10 bytes, in the newest segment" \
  test "$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.torn_bytes, v.segment_file)')" \
  = "torn_tail	10	$lone_last"

# --- topic records the store would skip: shown as errors, never as names ---
# ["a\nb", 2] (a line break in the name), ["\e[31m", 2] (a terminal escape),
# ["", 2^64-1]: valid checksums, payloads the store's replay refuses.
for hex in 92a3610a6202 92a51b5b33316d02 92a0cfffffffffffffffff; do
  badtopic="$work/badtopic-$hex"
  "$demo" append "$badtopic" --type 2 --count 1 --hex "$hex" >/dev/null
  run "$txmq" log verify "$badtopic"
  expect_err_prefix "verify: topic record $hex is corrupt" 1 \
    "txmq: corrupt log: $badtopic/00000000000000000000.log at position 0 (file offset 32): the record's checksum is valid but its payload is not [topic, queues] with a valid name and 1 to 256 queues"
  run "$txmq" log dump "$badtopic"
  check "dump: topic record $hex as hex on one line, no name printed" \
    test "$(grep -c "^record pos=0 type=topic len=[0-9]* next=[0-9]* error=EPROTO payload=hex:$hex\$" "$out")/$(grep -c 'topic=' "$out")/$(grep -c $'\x1b' "$out")/$(wc -l <"$out" | tr -d " ")" = "1/0/0/3"
done

# --- zeros after the last record: room filled ahead, not a torn tail ------
zeros="$work/zeros"
cp -r "$data" "$zeros"
head -c 100 /dev/zero >>"$zeros/log/$last_seg"
run "$txmq" log verify --json "$zeros"
check "zeros after the last record are room the writer filled ahead: ok, every record" \
  test "$rc/$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.records)')" \
  = "0/ok	$nrec"

# --- corruption in the middle of an earlier segment -------------------------
mid="$work/mid"
cp -r "$data" "$mid"
flip_byte "$mid/log/$first_seg" $((32 + mid_pos - mid_base + 12 + mid_len / 2))
run "$txmq" log verify "$mid"
expect_err_prefix "verify: a flipped byte in $first_seg exits 1 naming file and position" 1 \
  "txmq: corrupt log: $mid/log/$first_seg at position $mid_pos (file offset $((32 + mid_pos - mid_base))): "
check "...and says how many records before it are valid" \
  grep -qE "; $mid_i records before it are valid\$" "$err"
run "$txmq" log dump --from 0 -n 1000000 "$mid"
check "dump with --from or -n says its count is of the records it read" \
  grep -qE "; $mid_i records read \(from --from, up to -n\) before it are valid\$" "$err"
run "$txmq" log verify --json "$mid"
check "verify --json: status corrupt, segment file and position" \
  test "$rc/$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.segment_file, v.pos, v.records)')" \
  = "1/corrupt	$first_seg	$mid_pos	$mid_i"
run "$txmq" log dump --json "$mid"
check "dump exits 1 after printing every record before the corruption" \
  test "$rc/$(jl "$out" 'print(#kind("record"))')" = "1/$mid_i"
check "dump names the corruption on one stderr line" \
  test "$(err_lines)" = 1 -a "$(grep -c "^txmq: corrupt log: $mid/log/$first_seg at position $mid_pos " "$err")" = 1

# --- corruption in the last segment with valid records after it --------------
lastc="$work/lastc"
cp -r "$data" "$lastc"
flip_byte "$lastc/log/$last_seg" $((32 + ls_pos - ls_base + 12 + ls_len / 2))
run "$txmq" log verify "$lastc"
expect_err_prefix "verify: corruption in the last segment is not taken for a torn tail" 1 \
  "txmq: corrupt log: $lastc/log/$last_seg at position $ls_pos "
run "$txmq" log verify --json "$lastc"
check "verify --json: corrupt at the first record of the last segment" \
  test "$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.pos, v.records)')" \
  = "corrupt	$ls_pos	$ls_i"

# --- a missing segment -------------------------------------------------------
miss="$work/miss"
cp -r "$data" "$miss"
second_seg=$(ls "$miss/log" | grep -E '^[0-9]{20}\.log$' | sort | sed -n 2p)
rm "$miss/log/$second_seg"
run "$txmq" log verify "$miss"
expect_err_prefix "verify: a missing segment is corruption" 1 "txmq: corrupt log: "

# --- a record whose checksum is fine but is not a message --------------------
badmsg="$work/badmsg"
"$demo" append "$badmsg" --type 1 --count 2 --size 8 >/dev/null
run "$txmq" log verify "$badmsg"
expect_err_prefix "verify: a type-1 record that is not a message exits 1" 1 \
  "txmq: corrupt log: $badmsg/00000000000000000000.log at position 0 (file offset 32): the record's checksum is valid but its payload is not a message"

# --- records of other types --------------------------------------------------
raw="$work/raw"
"$demo" append "$raw" --type 42 --count 3 --size 10 >/dev/null
run "$txmq" log dump "$raw"
check "dump shows an unknown type by number, payload as hex" \
  test "$rc/$(grep -cE '^record pos=[0-9]+ type=42 len=10 next=[0-9]+ payload=hex:[0-9a-f]{20}$' "$out")" = "0/3"
run "$txmq" log dump --json "$raw"
check "dump --json: type_id 42, payload base64" \
  test "$(jl "$out" 'local r = kind("record")[1]; print(r.type, r.type_id, r.payload_encoding, #r.payload)')" \
  = "42	42	base64	16"
run "$txmq" log verify "$raw"
check "verify counts other record types" \
  test "$rc/$(grep -c '3 records (0 msg, 0 topic, 0 tx_half, 0 tx_event, 3 other)' "$out")" = "0/1"

# --- transaction records (fixtures written by gen.py) --------------------------
# Copied first: the fixtures are never opened in place.
cp -r "$fixtures/tx_records" "$fixtures/tx_garbage" "$fixtures/tx_bad_msg" \
  "$fixtures/tx_bad_event" "$work/"
txr="$work/tx_records"
run "$txmq" log dump "$txr"
expect "dump of transaction records exits 0 with nothing on stderr" 0
check "dump: the header and the segment" test "$(head -n 2 "$out")" = \
  "log $txr: 1 segment, positions 0..1035
segment 00000000000000000000.log base=0 size=1035 file_bytes=1067"
cat >"$work/tx_records.want" <<'DUMP'
record pos=0 type=topic len=9 next=21 topic=orders queues=4
record pos=21 type=tx_half len=302 next=335 tx=101112131415161718191a1b1c1d1e1f group=shop producer=txmq-cli:host:42 at=2023-11-14T22:13:20.000Z immunity_ms=0 msgs=2
  msg id=303132333435363738393a3b3c3d3e3f topic=orders qid=0 tags="paid" keys="order-1" props={"source":"gen.py"} born=2023-11-14T22:13:19.998Z stored=2023-11-14T22:13:20.000Z body_len=12 body=text:"order 1 paid"
  msg id=404142434445464748494a4b4c4d4e4f topic=audit qid=3 born=2023-11-14T22:13:19.998Z stored=2023-11-14T22:13:20.000Z body_len=3 body=hex:00ff10
record pos=335 type=tx_event len=104 next=451 tx=101112131415161718191a1b1c1d1e1f ev=commit src=script ver=0123456789abcdef who=txmq-cli:host:42 count=0 at=2023-11-14T22:13:20.004Z prev=21
record pos=451 type=tx_half len=150 next=613 tx=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf group=shop at=2023-11-14T22:13:20.010Z immunity_ms=60000 msgs=1
  msg id=505152535455565758595a5b5c5d5e5f topic=orders qid=1 born=2023-11-14T22:13:20.009Z stored=2023-11-14T22:13:20.010Z body_len=7 body=text:"order 2"
record pos=613 type=tx_event len=78 next=703 tx=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf ev=unknown src=producer who="client 7" count=0 at=2023-11-14T22:13:20.011Z prev=451
record pos=703 type=tx_event len=63 next=778 tx=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf ev=check src=timeout count=1 at=2023-11-14T22:14:25.000Z prev=613
record pos=778 type=tx_event len=62 next=852 tx=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf ev=park src=max_checks count=15 at=2023-11-14T22:28:20.000Z prev=703
record pos=852 type=tx_event len=72 next=936 tx=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf ev=resume src=operator who=ops count=0 at=2023-11-14T22:30:00.000Z prev=778
record pos=936 type=tx_event len=87 next=1035 tx=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf ev=rollback src=check who=txmq-cli:host:43 count=1 at=2023-11-14T22:30:30.000Z prev=852
DUMP
tail -n +3 "$out" >"$work/tx_records.got"
if cmp -s "$work/tx_records.got" "$work/tx_records.want"; then
  ok "dump: a tx_half with its messages on indented lines, every tx_event field, as gen.py wrote them"
else
  not_ok "dump of tx_records differs: $(diff "$work/tx_records.want" "$work/tx_records.got" | head -c 600)"
fi
run "$txmq" log dump --json "$txr"
expect "dump --json of transaction records" 0
got=$(jl "$out" '
  local r = kind("record")
  local h, e = r[2].tx_half, r[3].tx_event
  local m = h.msgs
  print(r[2].type, r[2].type_id, r[2].payload, h.tx, h.group, h.producer, h.at_ms,
    h.immunity_ms, #m, m[1].topic, m[1].keys, m[1].props.source, m[1].body,
    m[2].topic, m[2].body_encoding, m[2].body)
  print(r[3].type, r[3].type_id, e.tx, e.ev, e.src, e.ver, e.who, e.count, e.at_ms, e.prev)
  local evs = {}
  for _, x in ipairs(r) do
    if x.tx_event then evs[#evs + 1] = x.tx_event.ev .. "/" .. x.tx_event.src end
  end
  print(table.concat(evs, " "), r[4].tx_half.producer, r[5].tx_event.ver, r[5].tx_event.who)')
check "dump --json: tx_half and tx_event objects with every field" test "$got" = \
"tx_half	16	nil	101112131415161718191a1b1c1d1e1f	shop	txmq-cli:host:42	1700000000000	0	2	orders	order-1	gen.py	order 1 paid	audit	base64	AP8Q
tx_event	17	101112131415161718191a1b1c1d1e1f	commit	script	0123456789abcdef	txmq-cli:host:42	0	1700000000004	21
commit/script unknown/producer check/timeout park/max_checks resume/operator rollback/check	nil	nil	client 7"
run "$txmq" log verify "$txr"
expect "verify of transaction records exits 0 with nothing on stderr" 0
check "verify counts tx_half and tx_event records" test "$(cat "$out")" = \
  "$txr: ok, 1 segment, 9 records (0 msg, 1 topic, 2 tx_half, 6 tx_event, 0 other), 1035 bytes, positions 0..1035"
run "$txmq" log verify --json "$txr"
check "verify --json: tx_halfs and tx_events" \
  test "$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.records, v.topics, v.tx_halfs, v.tx_events, v.other)')" \
  = "ok	9	1	2	6	0"
run "$txmq" log dump "$txr" --from 451 -n 2
check "-n counts a half record and its message lines as one record" \
  test "$rc/$(grep -c '^record ' "$out")/$(grep -c '^  msg ' "$out")/$(grep -c '^record pos=451 type=tx_half ' "$out")" = "0/2/1/1"

bad_tx="the record's checksum is valid but its payload is not a transaction"
run "$txmq" log verify "$work/tx_garbage"
expect "verify: a type-16 record that is not a half record exits 1 with the reason" 1 \
  "txmq: corrupt log: $work/tx_garbage/00000000000000000000.log at position 160 (file offset 192): $bad_tx half record (ECORRUPT); 1 records before it are valid"
check "...after counting the good half record before it" grep -qxF \
  "$work/tx_garbage: CORRUPT, 1 segment, 1 records (0 msg, 0 topic, 1 tx_half, 0 tx_event, 0 other), 160 bytes, positions 0..160; corrupt at 160 in 00000000000000000000.log" "$out"
run "$txmq" log verify --json "$work/tx_garbage"
check "verify --json: corrupt at the garbage record, with the reason" \
  test "$rc/$(jl "$out" 'local v = kind("verify")[1]; print(v.status, v.pos, v.records, v.tx_halfs, v.reason)')" \
  = "1/corrupt	160	1	1	$bad_tx half record (ECORRUPT)"
run "$txmq" log dump "$work/tx_garbage"
check "dump: the garbage record as hex with the error, exit 1, nothing after it" \
  test "$rc/$(tail -n 1 "$out")" = \
  "1/record pos=160 type=tx_half len=18 next=190 error=ECORRUPT payload=hex:$(printf 'not msgpack at all' | od -An -tx1 | tr -d ' \n')"
check "dump names the bad record on one stderr line" \
  test "$(err_lines)/$(grep -c "at position 160 (file offset 192): $bad_tx half record (ECORRUPT)" "$err")" = "1/1"
run "$txmq" log dump --json "$work/tx_garbage"
check "dump --json: error and base64 payload for the garbage record" \
  test "$rc/$(jl "$out" 'local r = kind("record"); print(#r, r[2].type, r[2].error, r[2].payload_encoding, r[2].tx_half)')" \
  = "1/2	tx_half	ECORRUPT	base64	nil"
run "$txmq" log verify "$work/tx_bad_msg"
expect "verify: a half record holding something that is not a message exits 1, naming it" 1 \
  "txmq: corrupt log: $work/tx_bad_msg/00000000000000000000.log at position 0 (file offset 32): $bad_tx half record (message 2 of 2: EPROTO); 0 records before it are valid"
run "$txmq" log verify "$work/tx_bad_event"
expect "verify: an event record with an unknown event exits 1" 1 \
  "txmq: corrupt log: $work/tx_bad_event/00000000000000000000.log at position 160 (file offset 192): $bad_tx event record (ECORRUPT); 1 records before it are valid"

# --- command line --------------------------------------------------------------
run "$txmq"
expect "no command: exit 2" 2 "txmq: no command given (see 'txmq --help')"
run "$txmq" --help
check "--help: exit 0, usage on stdout" test "$rc/$(grep -c 'txmq log dump DIR' "$out")" = "0/1"
run "$txmq" log --help
check "log --help: exit 0" test "$rc/$(grep -c '^usage: txmq log dump' "$out")" = "0/1"
run "$txmq" --version
check "--version" test "$rc/$(grep -cE '^txmq [0-9]+\.[0-9]+\.[0-9]+$' "$out")" = "0/1"
# The commands that talk to txmqd fail cleanly, on one line, when nothing
# listens (their real tests are cli_*.sh, against a running txmqd).
refused="txmq: cannot connect to 127.0.0.1:1: connection refused"
run "$txmq" --server 127.0.0.1:1 send orders hello
expect "send without txmqd" 1 "$refused"
check "send prints nothing on stdout" test ! -s "$out"
run "$txmq" tx send --group g orders hello --server 127.0.0.1:1
expect "tx send without txmqd" 1 "$refused"
run env TXMQ_SERVER=127.0.0.1:1 "$txmq" tx list
expect "tx list without txmqd" 1 "$refused"
run "$txmq" consume orders --group g -n 1 --server 127.0.0.1:1
expect "consume without txmqd" 1 "$refused"
run "$txmq" --server 127.0.0.1:1 status
expect "status without txmqd" 1 "$refused"
run "$txmq" --server 127.0.0.1:1 reload order-payment
expect "reload without txmqd" 1 "$refused"
run "$txmq" frobnicate
expect "unknown command" 2 "txmq: unknown command 'frobnicate' (see 'txmq --help')"
run "$txmq" log
expect "log without subcommand" 2 \
  "txmq: 'log' needs a subcommand: txmq log dump DIR | txmq log verify DIR"
run "$txmq" log fix "$data"
expect "unknown log subcommand" 2 "txmq: unknown log subcommand 'fix' (expected dump or verify)"
run "$txmq" log dump
expect "log dump without DIR" 2 "txmq: 'log dump' needs a directory: txmq log dump DIR"
run "$txmq" log verify "$work/nope"
expect "missing directory" 2 "txmq: $work/nope: No such file or directory"
mkdir "$work/empty"
run "$txmq" log verify "$work/empty"
expect_err_prefix "a directory without segments" 2 "txmq: $work/empty: no log segments here"
run "$txmq" log verify "$data" -n 3
expect "an option that does not apply" 2 \
  "txmq: option '-n' does not apply to 'log verify' (see 'txmq --help')"
run "$txmq" log dump "$data" -n x
expect "a malformed -n" 2 "txmq: -n 'x': expected a non-negative integer"
run "$txmq" log dump "$data" --from -5
expect "a negative --from" 2 "txmq: --from '-5': expected a non-negative integer"
run "$txmq" log dump "$data" --bogus
expect "an unknown option" 2 "txmq: unknown option '--bogus' (see 'txmq --help')"
run "$txmq" log dump "$data" --from
expect "an option without its value" 2 "txmq: option '--from' needs a value"

# ---------------------------------------------------------------------------
echo
if [ "${#failures[@]}" -eq 0 ]; then
  echo "PASS: log_tool: all $passed checks passed"
else
  echo "FAIL: log_tool: ${#failures[@]} of $((passed + ${#failures[@]})) checks failed:"
  for f in "${failures[@]}"; do echo "  - $f"; done
  exit 1
fi
