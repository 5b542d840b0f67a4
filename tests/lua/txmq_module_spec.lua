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
    .. "--scripts %s/scripts 2>%s/txmqd.log & echo $! > %s/pid",
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

  it("refuses an inline check without a script", function()
    assert.has_error(function()
      txmq.transaction_producer{ group = "g", server = server,
        execute = function() end, check = function() end }
    end)
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
end)
