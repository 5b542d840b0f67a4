-- Specs for the txmq Lua module (lua/txmq.lua over txmq.core): they start
-- the real txmqd from $TXMQ_BIN on an ephemeral loopback port with temp
-- directories, and use spies to prove the execute and check handlers ran.
-- Run by ctest (which sets TXMQ_BIN, LUA_PATH and LUA_CPATH).
local bin = assert(os.getenv("TXMQ_BIN"), "TXMQ_BIN must name the build's bin dir")
local txmq = require "txmq"

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok
end

local function read(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "w"))
  f:write(s)
  f:close()
end

local work, pid, server

local FAST = "return { tx_timeout_ms = 500, check_interval_ms = 500, check_retry_ms = 200 }"

-- Starts txmqd with config text conf (FAST by default) on listen (an
-- ephemeral port by default), keeping the work directory of a previous
-- start (a restart).
local function start_txmqd(conf, listen)
  if not work then
    work = io.popen("mktemp -d /tmp/txmq-lua.XXXXXX"):read("l")
    sh("mkdir -p " .. work .. "/data " .. work .. "/scripts")
  end
  write(work .. "/conf.lua", conf or FAST)
  write(work .. "/txmqd.log", "")
  sh(string.format("%s/txmqd -c %s/conf.lua --listen %s --sync always --data %s/data "
    .. "--scripts %s/scripts >/dev/null 2>%s/txmqd.log & echo $! > %s/pid",
    bin, work, listen or "127.0.0.1:0", work, work, work, work))
  pid = read(work .. "/pid"):match("%d+")
  for _ = 1, 150 do
    local port = read(work .. "/txmqd.log"):match('msg="listening" addr=[^%s]*:(%d+)')
    if port then
      server = "127.0.0.1:" .. port
      return
    end
    sh("sleep 0.1")
  end
  error("txmqd did not start: " .. read(work .. "/txmqd.log"))
end

local function kill_txmqd()
  if pid then
    sh("kill -KILL " .. pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not sh("kill -0 " .. pid .. " 2>/dev/null") then break end
      sh("sleep 0.05")
    end
  end
  pid = nil
end

local function stop_txmqd()
  kill_txmqd()
  if work then sh("rm -rf " .. work) end
  work = nil
end

local function now() -- wall seconds with sub-second precision
  return tonumber(io.popen("date +%s.%N"):read("l"))
end

-- Receives from topic until n messages or seconds have passed.
local function receive_all(topic, group, n, seconds)
  local c = assert(txmq.consumer{ server = server, group = group, topic = topic })
  local got, deadline = {}, now() + seconds
  while #got < n and now() < deadline do
    local list = assert(c:receive{ max = 32, wait_ms = 300 })
    for _, m in ipairs(list) do
      got[#got + 1] = m
      assert.are.equal(1, m:ack())
    end
  end
  c:close()
  return got
end

describe("txmq module", function()
  setup(function() start_txmqd() end)
  teardown(stop_txmqd)

  it("sends with a producer and receives with a consumer", function()
    local p = assert(txmq.producer{ server = server })
    local r = assert(p:send{ topic = "Plain", body = "hi", tags = "A", keys = "k1",
      props = { color = "red" } })
    assert.are.equal(32, #r.msg_id)
    assert.is_number(r.qid)
    assert.is_true(r.qoff >= 0)
    p:close()
    local got = receive_all("Plain", "g-plain", 1, 5)
    assert.are.equal(1, #got)
    assert.are.equal("hi", got[1].body)
    assert.are.equal("A", got[1].tags)
    assert.are.equal("k1", got[1].keys)
    assert.are.equal("red", got[1].properties.color)
    assert.are.equal(r.msg_id, got[1].msg_id)
  end)

  it("commits: execute runs in the producer and the message is visible", function()
    local execute = spy.new(function(msg, arg)
      assert.are.equal("hello commit", msg.body)
      assert.are.equal(32, #msg.tx_id)
      assert.are.equal("a1", arg)
      return txmq.COMMIT
    end)
    local p = assert(txmq.transaction_producer{ group = "g-commit", server = server,
      execute = function(...) return execute(...) end })
    local r = assert(p:send_in_transaction({ topic = "TxCommit", body = "hello commit" }, "a1"))
    assert.spy(execute).was.called(1)
    assert.are.equal("SEND_OK", r.status)
    assert.are.equal("COMMIT_MESSAGE", r.tx_state)
    assert.are.equal("COMMITTED", r.state)
    assert.are.equal(32, #r.msg_id)
    assert.are.equal(32, #r.tx_id)
    p:close()
    local got = receive_all("TxCommit", "g1", 1, 5)
    assert.are.equal(1, #got)
    assert.are.equal("hello commit", got[1].body)
  end)

  it("rolls back: the message is never visible", function()
    local execute = spy.new(function() return "ROLLBACK_MESSAGE" end)
    local p = assert(txmq.transaction_producer{ group = "g-rb", server = server,
      execute = function(...) return execute(...) end })
    local r = assert(p:send_in_transaction{ topic = "TxRollback", body = "never" })
    assert.spy(execute).was.called(1)
    assert.are.equal("ROLLBACK_MESSAGE", r.tx_state)
    assert.are.equal("ROLLED_BACK", r.state)
    p:close()
    assert.are.equal(0, #receive_all("TxRollback", "g1", 1, 1.5))
  end)

  it("an error in execute counts as UNKNOW", function()
    local p = assert(txmq.transaction_producer{ group = "g-err", server = server,
      execute = function() error("boom") end })
    local r = assert(p:send_in_transaction{ topic = "TxErr", body = "x" })
    assert.are.equal("UNKNOW", r.tx_state)
    assert.are.equal("PENDING", r.state)
    assert.matches("boom", r.error)
    p:close()
  end)

  it("UNKNOWN: the server checks, the background check answers COMMIT", function()
    local script = work .. "/test-trans-producer.lua"
    write(script, [[
function executeLocalTransaction(msg, arg) return txmq.UNKNOWN end
function checkLocalTransaction(msg)
  assert(#msg.tx_id == 32 and msg.check_count >= 0)
  return txmq.COMMIT
end
]])
    -- The spy wraps execute in this state; the check runs in the
    -- producer's own background state, counted by p:checks().
    local execute = spy.new(function() return txmq.UNKNOWN end)
    local p = assert(txmq.transaction_producer{ group = "test-trans-producer",
      server = server, script = script,
      execute = function(...) return execute(...) end })
    local r = assert(p:send_in_transaction({ topic = "TopicTest", body = "hello world" }, 7))
    assert.spy(execute).was.called(1)
    assert.are.equal("UNKNOW", r.tx_state)
    assert.are.equal("PENDING", r.state)
    local got = receive_all("TopicTest", "g1", 1, 10)
    assert.are.equal(1, #got)
    assert.are.equal("hello world", got[1].body)
    assert.is_true(p:checks() >= 1)
    local t0 = now()
    p:close()
    assert.is_true(now() - t0 < 1, "close took " .. (now() - t0) .. " s")
  end)

  it("inline check: a copy runs in the background with copied locals", function()
    local answers = { first = txmq.COMMIT }  -- a table local: copied
    local body = "inline check"              -- a string local: copied
    local execute = spy.new(function() return txmq.UNKNOWN end)
    local p = assert(txmq.transaction_producer{ group = "g-inline", server = server,
      execute = function(...) return execute(...) end,
      check = function(msg)
        -- Runs in the producer's own state: globals are that state's.
        assert(type(string.format) == "function" and msg.body == body)
        return answers.first
      end })
    local r = assert(p:send_in_transaction{ topic = "TxInline", body = body })
    assert.spy(execute).was.called(1)
    assert.are.equal("UNKNOW", r.tx_state)
    local got = receive_all("TxInline", "g1", 1, 10)
    assert.are.equal(1, #got)
    assert.are.equal(body, got[1].body)
    assert.is_true(p:checks() >= 1)
    p:close()
  end)

  it("refuses an inline check that uses a function or a handle", function()
    local helper = function() return txmq.COMMIT end
    local ok, err = pcall(txmq.transaction_producer, { group = "g", server = server,
      execute = function() end, check = function() return helper() end })
    assert.is_false(ok)
    assert.matches("'helper' %(function%)", err)
    assert.matches("script = path", err)
    local f = io.tmpfile()
    ok, err = pcall(txmq.transaction_producer, { group = "g", server = server,
      execute = function() end, check = function() return f and txmq.COMMIT end })
    assert.is_false(ok)
    assert.matches("'f' %(userdata%)", err)
    f:close()
    assert.has_error(function()
      txmq.transaction_producer{ group = "g", server = server, execute = function() end,
        check = "not a function" }
    end)
  end)

  it("loads a changed script again, in the caller and in the checker", function()
    local script = work .. "/g-reload.lua"
    write(script, [[
function executeLocalTransaction(msg, arg) return txmq.ROLLBACK end
function checkLocalTransaction(msg) return txmq.UNKNOWN end
]])
    local p = assert(txmq.transaction_producer{ group = "g-reload", server = server,
      script = script })
    local r = assert(p:send_in_transaction{ topic = "TxReload", body = "v1" })
    assert.are.equal("ROLLBACK_MESSAGE", r.tx_state)
    assert.are.equal(0, p:reloads())
    -- Version 2: execute leaves it to the check, which commits.
    write(script, [[
-- version 2
function executeLocalTransaction(msg, arg) return txmq.UNKNOWN end
function checkLocalTransaction(msg) return txmq.COMMIT end
]])
    r = assert(p:send_in_transaction{ topic = "TxReload", body = "v2" })
    assert.are.equal("UNKNOW", r.tx_state)
    local got = receive_all("TxReload", "g1", 1, 10)
    assert.are.equal(1, #got)
    assert.are.equal("v2", got[1].body)
    assert.are.equal(1, p:reloads())
    -- A broken version 3 leaves version 2 in place.
    write(script, "function executeLocalTransaction(msg, arg) return (\n")
    r = assert(p:send_in_transaction{ topic = "TxReload", body = "v3" })
    assert.are.equal("UNKNOW", r.tx_state)
    got = receive_all("TxReload", "g1", 1, 10)
    assert.are.equal(1, #got)
    assert.are.equal("v3", got[1].body)
    p:close()
  end)

  it("reports a server that is not there", function()
    local p, err = txmq.producer{ server = "127.0.0.1:1" }
    assert.is_nil(p)
    assert.matches("EIO", err)
  end)
end)

describe("txmq module across a restart of txmqd", function()
  teardown(stop_txmqd)

  it("the background checker reconnects and answers the pending check", function()
    -- No check before the kill: the first daemon waits a minute.
    start_txmqd("return { tx_timeout_ms = 60000 }")
    local script = work .. "/g-restart.lua"
    write(script, [[
function executeLocalTransaction(msg, arg) return txmq.UNKNOWN end
function checkLocalTransaction(msg) return txmq.COMMIT end
]])
    local p = assert(txmq.transaction_producer{ group = "g-restart", server = server,
      script = script })
    local r = assert(p:send_in_transaction{ topic = "TxRestart", body = "after restart" })
    assert.are.equal("UNKNOW", r.tx_state)
    assert.are.equal(0, p:checks())
    local listen = server
    kill_txmqd()
    start_txmqd(FAST, listen)
    assert.are.equal(listen, server)
    local got = receive_all("TxRestart", "g1", 1, 15)
    assert.are.equal(1, #got)
    assert.are.equal("after restart", got[1].body)
    assert.is_true(p:checks() >= 1)
    p:close()
  end)

  it("the calling connection connects again after a restart", function()
    stop_txmqd()
    start_txmqd(FAST)
    local p = assert(txmq.producer{ server = server })
    assert(p:send{ topic = "Reconnect", body = "before" })
    local listen = server
    kill_txmqd()
    -- While the server is down a call fails with a message ...
    local r, err = p:send{ topic = "Reconnect", body = "lost" }
    assert.is_nil(r)
    assert.matches("^E", err)
    start_txmqd(FAST, listen)
    -- ... and once it is back the same producer works again.
    assert(p:send{ topic = "Reconnect", body = "after" })
    p:close()
    local got = receive_all("Reconnect", "g1", 2, 5)
    assert.are.equal(2, #got)
    assert.are.equal("before", got[1].body)
    assert.are.equal("after", got[2].body)
  end)
end)

-- txmq's own CLI, as an operator would use it: output lines (JSON).
local function cli(...)
  local args = { ... }
  for i, a in ipairs(args) do args[i] = "'" .. a .. "'" end
  local f = io.popen(string.format("%s/txmq --json --server %s %s 2>&1", bin, server,
    table.concat(args, " ")))
  local out = f:read("a")
  f:close()
  return out
end

describe("txmq module and the check schedule", function()
  setup(function()
    start_txmqd("return { tx_timeout_ms = 100, check_interval_ms = 100, "
      .. "check_retry_ms = 100, max_checks = 15 }")
  end)
  teardown(stop_txmqd)

  it("no live member: no check is counted; a member that connects gets it", function()
    local a = assert(txmq.transaction_producer{ group = "g-nobody", server = server,
      execute = function() return txmq.UNKNOWN end })  -- answers no checks
    local r = assert(a:send_in_transaction{ topic = "TxNobody", body = "waits" })
    a:close()
    sh("sleep 1")  -- ten check intervals with nobody to ask
    local show = cli("tx", "show", r.tx_id)
    assert.matches('"state":"pending"', show)
    assert.matches('"check_count":0', show)
    local b = assert(txmq.transaction_producer{ group = "g-nobody", server = server,
      execute = function() return txmq.UNKNOWN end,
      check = function() return txmq.COMMIT end })
    local got = receive_all("TxNobody", "g1", 1, 10)
    assert.are.equal(1, #got)
    assert.are.equal("waits", got[1].body)
    assert.are.equal(1, b:checks())
    b:close()
    assert.matches('"state":"committed"', cli("tx", "show", r.tx_id))
  end)

  it("15 checks answered UNKNOWN: parked, listed, resumed, committed", function()
    local flag = work .. "/g-park.commit"
    local p = assert(txmq.transaction_producer{ group = "g-park", server = server,
      execute = function() return txmq.UNKNOWN end,
      -- UNKNOWN until the flag file exists (flag is a copied string).
      check = function()
        local f = io.open(flag)
        if not f then return txmq.UNKNOWN end
        f:close()
        return txmq.COMMIT
      end })
    local r = assert(p:send_in_transaction{ topic = "TxPark", body = "parked" })
    local list
    for _ = 1, 100 do
      list = cli("tx", "list", "--group", "g-park")
      if list:match('"state":"parked"') then break end
      sh("sleep 0.1")
    end
    assert.matches('"tx_id":"' .. r.tx_id .. '"', list)
    assert.matches('"state":"parked"', list)
    assert.are.equal(15, p:checks())
    sh("sleep 0.5")
    assert.are.equal(15, p:checks())  -- parked: no more checks
    assert.are.equal(0, #receive_all("TxPark", "g1", 1, 0.5))
    write(flag, "yes")
    -- Resuming checks at once (the answer may still be on its way when
    -- resume replies): this check commits.
    local resumed = cli("tx", "resume", r.tx_id)
    assert.is_truthy(resumed:match('"state":"committed"') or resumed:match('"state":"pending"'),
      resumed)
    local got = receive_all("TxPark", "g1", 1, 10)
    assert.are.equal(1, #got)
    assert.are.equal("parked", got[1].body)
    assert.are.equal(16, p:checks())
    p:close()
  end)
end)

describe("txmq module against a txmqd with auth on", function()
  setup(function()
    start_txmqd("return { tx_timeout_ms = 200, check_interval_ms = 200, auth = { "
      .. "producer = 'producer-secret-1', consumer = 'consumer-secret-1' } }")
  end)
  teardown(stop_txmqd)

  it("connects with the role's secret and is refused without it", function()
    local p, err = txmq.producer{ server = server, secret = "wrong-secret" }
    assert.is_nil(p)
    assert.matches("EAUTH", err)
    p = assert(txmq.producer{ server = server, secret = "producer-secret-1" })
    assert(p:send{ topic = "Auth", body = "with a secret" })
    p:close()
    local c = assert(txmq.consumer{ server = server, group = "g1", topic = "Auth",
      secret = "consumer-secret-1" })
    local list = assert(c:receive{ max = 1, wait_ms = 2000 })
    assert.are.equal("with a secret", list[1].body)
    assert.are.equal(1, list[1]:ack())
    c:close()
  end)

  it("a transaction producer's check thread authenticates too", function()
    local p = assert(txmq.transaction_producer{ group = "g-auth", server = server,
      secret = "producer-secret-1",
      execute = function() return txmq.UNKNOWN end,
      check = function() return txmq.COMMIT end })
    local r = assert(p:send_in_transaction{ topic = "AuthTx", body = "checked" })
    assert.are.equal("UNKNOW", r.tx_state)
    local c = assert(txmq.consumer{ server = server, group = "g1", topic = "AuthTx",
      secret = "consumer-secret-1" })
    local got
    for _ = 1, 20 do
      got = assert(c:receive{ max = 1, wait_ms = 500 })
      if #got > 0 then break end
    end
    assert.are.equal("checked", got[1].body)
    assert.is_true(p:checks() >= 1)
    c:close()
    p:close()
  end)
end)

describe("txmq module consumer offsets, seek and peek", function()
  setup(function() start_txmqd() end)
  teardown(stop_txmqd)

  -- A topic with one queue (so that every message lands on queue 0)
  -- holding n messages with bodies "<topic>-0" ... "<topic>-(n-1)".
  local function fill_queue(topic, n)
    assert.matches('"queues":1', cli("topic", "create", topic, "1"))
    local p = assert(txmq.producer{ server = server })
    for i = 0, n - 1 do
      local r = assert(p:send{ topic = topic, body = topic .. "-" .. i })
      assert.are.equal(0, r.qid)
      assert.are.equal(i, r.qoff)
    end
    p:close()
  end

  local function bodies(list)
    local t = {}
    for i, m in ipairs(list) do t[i] = m.body end
    return t
  end

  -- Receives until n messages came (or none came for a while); acks none.
  local function receive_n(c, n)
    local got = {}
    while #got < n do
      local list = assert(c:receive{ max = n - #got, wait_ms = 2000 })
      if #list == 0 then break end
      for _, m in ipairs(list) do got[#got + 1] = m end
    end
    return got
  end

  it("offset: ENOTFOUND before the group reads, the acked position after", function()
    fill_queue("SeekOff", 5)
    local c = assert(txmq.consumer{ server = server, group = "g-off", topic = "SeekOff" })
    local off, err = c:offset(0)
    assert.is_nil(off)
    assert.matches("^ENOTFOUND: group 'g%-off' has no offset on SeekOff/0", err)
    local got = receive_n(c, 3)
    assert.are.same({ "SeekOff-0", "SeekOff-1", "SeekOff-2" }, bodies(got))
    for i, m in ipairs(got) do
      assert.are.equal(0, m.qid)
      assert.are.equal(i - 1, m.qoff)
    end
    -- Received, not acked: the committed offset is the first unacked one.
    assert.are.equal(0, c:offset(0))
    assert.are.equal(2, c:ack{ got[1], got[2] })
    assert.are.equal(2, c:offset(0))
    assert.are.equal(1, got[3]:ack())
    assert.are.equal(3, c:offset(0))
    -- Another group never read that queue: no offset for it.
    local other = assert(txmq.consumer{ server = server, group = "g-off-other",
      topic = "SeekOff" })
    off, err = other:offset(0)
    assert.is_nil(off)
    assert.matches("^ENOTFOUND: group 'g%-off%-other' has no offset on SeekOff/0", err)
    -- A queue the topic does not have, and a topic that does not exist.
    off, err = c:offset(1)
    assert.is_nil(off)
    assert.matches("^ERANGE: topic 'SeekOff' has 1 queues", err)
    off, err = c.conn:offset_get("g-off", "NoSuchTopic", 0)
    assert.is_nil(off)
    assert.matches("^ENOTFOUND: ", err)
    other:close()
    c:close()
  end)

  it("seek back to 0: receive gets the same messages again", function()
    fill_queue("SeekBack", 4)
    local c = assert(txmq.consumer{ server = server, group = "g-back", topic = "SeekBack" })
    local first = receive_n(c, 4)
    assert.are.same({ "SeekBack-0", "SeekBack-1", "SeekBack-2", "SeekBack-3" },
      bodies(first))
    assert.are.equal(4, c:ack(first))
    assert.are.equal(4, c:offset(0))
    assert.are.equal(0, #assert(c:receive{ wait_ms = 200 }))  -- all consumed
    assert.is_true(c:seek(0, 0))
    assert.are.equal(0, c:offset(0))
    local again = receive_n(c, 4)
    assert.are.same(bodies(first), bodies(again))
    for i, m in ipairs(again) do
      assert.are.equal(first[i].msg_id, m.msg_id)
      assert.are.equal(first[i].qoff, m.qoff)
    end
    assert.are.equal(4, c:ack(again))
    assert.are.equal(4, c:offset(0))
    -- Forward: skip to 3 and only the last message comes again.
    assert.is_true(c:seek(0, 3))
    local last = receive_n(c, 4)
    assert.are.same({ "SeekBack-3" }, bodies(last))
    -- A handle received before a seek no longer matches: not acked.
    assert.is_true(c:seek(0, 3))
    assert.are.equal(0, last[1]:ack())
    assert.are.equal(3, c:offset(0))
    c:close()
  end)

  it("seek past the end fails with ERANGE and moves nothing", function()
    fill_queue("SeekEnd", 3)
    local c = assert(txmq.consumer{ server = server, group = "g-end", topic = "SeekEnd" })
    local got = receive_n(c, 2)
    assert.are.equal(2, c:ack(got))
    assert.are.equal(2, c:offset(0))
    local ok, err = c:seek(0, 4)
    assert.is_nil(ok)
    assert.matches("^ERANGE: offset not set: offset 4 is past the end of "
      .. "SeekEnd/0 %(3%)", err)
    assert.are.equal(2, c:offset(0))
    -- The group goes on where it was: the third message, then nothing.
    local rest = receive_n(c, 3)
    assert.are.same({ "SeekEnd-2" }, bodies(rest))
    assert.are.equal(1, rest[1]:ack())
    -- The end itself is a valid offset (nothing left to read); a group that
    -- never read the queue may be moved too, and then has an offset.
    assert.is_true(c:seek(0, 3))
    assert.are.equal(3, c:offset(0))
    local fresh = assert(txmq.consumer{ server = server, group = "g-end-fresh",
      topic = "SeekEnd" })
    ok, err = fresh:seek(0, 9)
    assert.is_nil(ok)
    assert.matches("^ERANGE: offset not set: offset 9 is past the end", err)
    assert.is_nil((fresh:offset(0)))
    assert.is_true(fresh:seek(0, 1))
    assert.are.equal(1, fresh:offset(0))
    assert.are.same({ "SeekEnd-1", "SeekEnd-2" }, bodies(receive_n(fresh, 3)))
    fresh:close()
    c:close()
  end)

  it("peek reads stored messages without consuming them", function()
    fill_queue("PeekQ", 5)
    local c = assert(txmq.consumer{ server = server, group = "g-peek", topic = "PeekQ" })
    local list, nxt = c:peek{ queue = 0 }
    assert.are.same({ "PeekQ-0", "PeekQ-1", "PeekQ-2", "PeekQ-3", "PeekQ-4" },
      bodies(list))
    assert.are.equal(5, nxt)
    for i, m in ipairs(list) do
      assert.are.equal(0, m.qid)
      assert.are.equal(i - 1, m.qoff)
      assert.are.equal("PeekQ", m.topic)
      assert.are.equal(32, #m.msg_id)
      assert.is_nil(m.handle)
      assert.is_nil(m.ack)  -- not a received message: nothing to ack
    end
    -- No group is involved: the group still has no offset ...
    local off, err = c:offset(0)
    assert.is_nil(off)
    assert.matches("^ENOTFOUND: ", err)
    -- ... and a window from an offset goes on where the last one ended.
    list, nxt = c:peek{ queue = 0, from = 1, max = 2 }
    assert.are.same({ "PeekQ-1", "PeekQ-2" }, bodies(list))
    assert.are.equal(3, nxt)
    list, nxt = c:peek{ queue = 0, from = nxt, max = 2 }
    assert.are.same({ "PeekQ-3", "PeekQ-4" }, bodies(list))
    assert.are.equal(5, nxt)
    list, nxt = c:peek{ queue = 0, from = nxt }
    assert.are.same({}, list)
    assert.are.equal(5, nxt)
    -- Nothing was made invisible: the group receives all five. Peeking
    -- while two are in flight and after acks moves nothing either.
    local got = receive_n(c, 5)
    assert.are.same(bodies(c:peek{ queue = 0 }), bodies(got))
    assert.are.equal(3, c:ack{ got[1], got[2], got[3] })
    assert.are.equal(3, c:offset(0))
    list, nxt = c:peek{ queue = 0, from = 0 }
    assert.are.equal(5, #list)
    assert.are.equal(5, nxt)
    assert.are.equal(3, c:offset(0))
    -- The connection-level call, and a topic or queue that does not exist.
    list, nxt = c.conn:peek{ topic = "PeekQ", qid = 0, offset = 4 }
    assert.are.same({ "PeekQ-4" }, bodies(list))
    assert.are.equal(5, nxt)
    list, err = c.conn:peek{ topic = "NoSuchTopic", qid = 0 }
    assert.is_nil(list)
    assert.matches("^ENOTFOUND: topic 'NoSuchTopic' does not exist", err)
    list, err = c:peek{ queue = 2 }
    assert.is_nil(list)
    assert.matches("^ERANGE: topic 'PeekQ' has 1 queues", err)
    c:close()
  end)

  it("refuses bad arguments with Lua errors", function()
    local c = assert(txmq.consumer{ server = server, group = "g-args", topic = "Args" })
    assert.has_error(function() c:offset() end,
      "txmq: Consumer:offset: qid must be an integer >= 0, not nil")
    assert.has_error(function() c:offset("0") end,
      "txmq: Consumer:offset: qid must be an integer >= 0, not 0")
    assert.has_error(function() c:seek(0, -1) end,
      "txmq: Consumer:seek: offset must be an integer >= 0, not -1")
    assert.has_error(function() c:seek(1.5, 0) end,
      "txmq: Consumer:seek: qid must be an integer >= 0, not 1.5")
    assert.has_error(function() c:peek() end,
      "txmq: Consumer:peek: expected a table {queue=, from=, max=}")
    assert.has_error(function() c:peek{} end,
      "txmq: Consumer:peek: queue must be an integer >= 0, not nil")
    assert.has_error(function() c:peek{ queue = 0, from = -2 } end,
      "txmq: Consumer:peek: from must be an integer >= 0, not -2")
    assert.has_error(function() c:peek{ queue = 0, max = 0 } end,
      "txmq: Consumer:peek: max must be an integer from 1 to 256, not 0")
    -- The same checks in txmq.core, for callers of the conn itself.
    local conn = c.conn
    local ok, err = pcall(conn.offset_get, conn, "g-args", "Args", -1)
    assert.is_false(ok)
    assert.matches("qid must be from 0 to 2147483647", err)
    ok, err = pcall(conn.offset_set, conn, "g-args", "Args", 0, "x")
    assert.is_false(ok)
    assert.matches("number expected, got string", err)
    ok, err = pcall(conn.offset_set, conn, "g-args", "Args", 0, 0.5)
    assert.is_false(ok)
    assert.matches("number has no integer representation", err)
    ok, err = pcall(conn.offset_get, conn, nil, "Args", 0)
    assert.is_false(ok)
    assert.matches("string expected, got nil", err)
    ok, err = pcall(conn.peek, conn, { topic = "Args" })
    assert.is_false(ok)
    assert.matches("txmq: qid must be an integer from 0 to 2147483647, not nil", err)
    ok, err = pcall(conn.peek, conn, { topic = "Args", qid = 0, max = 300 })
    assert.is_false(ok)
    assert.matches("txmq: max must be an integer from 1 to 256, not 300", err)
    ok, err = pcall(conn.peek, conn, { qid = 0 })
    assert.is_false(ok)
    assert.matches("txmq: peek needs a topic", err)
    -- A name the server would refuse is refused by the client.
    local off
    off, err = conn:offset_get("bad group", "Args", 0)
    assert.is_nil(off)
    assert.matches("^EINVAL: ", err)
    c:close()
  end)
end)
