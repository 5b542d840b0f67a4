-- txmq.lua - the Lua client of txmqd (DESIGN §7), on the C client through
-- "txmq.core" (core/clients/lua/txmq_lua.c). It mirrors RocketMQ's producer
-- API:
--
--   local txmq = require "txmq"
--   local p = txmq.transaction_producer{ group = "G", server = "127.0.0.1:8967",
--     script = "scripts/G.lua" }
--   -- or: execute = function(msg, arg) ... end, check = function(msg) ... end
--   local r = p:send_in_transaction({ topic = "T", body = "hello" }, arg)
--   print(r.status, r.tx_state, r.msg_id, r.tx_id)
--   p:close()
--
-- executeLocalTransaction runs in the calling Lua state during
-- send_in_transaction. Checks are answered for as long as the producer is
-- open by a background thread with its own connection (announcing the
-- group) and its OWN Lua state, so the user writes no event loop. That
-- state loads `script` and calls its checkLocalTransaction, or runs a copy
-- of an inline `check` function: Lua values cannot cross states, so an
-- inline check sees globals (its state's own: the standard library and
-- require), the txmq constants, and copies, made at creation, of the
-- locals it uses when they are nil, booleans, numbers, strings or tables
-- of those; anything else (a database handle, a function) is refused with
-- an error naming it - use `script` for such checks. An inline check wins
-- over the script's. A producer without any check answers none (the
-- group's other members do).
--
-- The script format is the runtime's (scripts/<group>.lua): globals
-- executeLocalTransaction(msg, arg) and checkLocalTransaction(msg), with
-- txmq.COMMIT / txmq.ROLLBACK / txmq.UNKNOWN (or the RocketMQ strings). In
-- the producer the script is the producer's own code: it runs with the
-- full standard library (no sandbox, no time limit). When its file changes
-- it is loaded again, in the caller before the next send_in_transaction
-- and in the background state before the next check; a version that fails
-- to load leaves the previous one in place (and says so on stderr).
--
-- A producer whose connection was lost fails the call in progress ("nil,
-- ECLOSED: ...": a half message may have been stored and is then decided
-- by checks) and connects again on its next call.
--
-- The consumer, like RocketMQ's lite pull consumer:
--
--   local c = txmq.consumer{ group = "G", topic = "T", server = ... }
--   for _, m in ipairs(c:receive{ max = 32, wait_ms = 1000 }) do m:ack() end
--   c:offset(qid)  c:seek(qid, offset)  c:peek{ queue = qid, from = off }
--
-- offset and seek read and move the group's committed offset on one queue
-- of the topic; peek reads a queue without consuming it.
--
-- Every constructor takes server = "HOST:PORT" (default 127.0.0.1:8967),
-- client_id, and secret (default $TXMQ_SECRET) for a txmqd with auth on.
--
-- Failures of the server or the network return nil and a message
-- ("ECLOSED: ..."); bad arguments raise errors.
local core = require "txmq.core"

local M = {
  COMMIT = "COMMIT_MESSAGE",
  ROLLBACK = "ROLLBACK_MESSAGE",
  UNKNOWN = "UNKNOW",
  core = core,
}

-- The secret sent in the handshake when txmqd has auth on: opts.secret,
-- else $TXMQ_SECRET (as for the txmq tool), else none.
local function secret_of(opts)
  local s = opts.secret or os.getenv("TXMQ_SECRET")
  if s == "" then return nil end
  return s
end

local seq = 0
local function client_id(prefix)
  seq = seq + 1
  return string.format("%s-%d-%d-%d", prefix, os.time(), math.random(1, 1e9), seq)
end

-- Loads a handler script into this state the way the runtime does: its
-- globals go into a table of their own, with txmq the constants (as in the
-- background check state: COMMIT, ROLLBACK, UNKNOWN, null, array, log).
-- Returns the table, or nil and why.
local NULL = setmetatable({}, { __name = "txmq.null" })
local function load_script(path)
  local api = {
    COMMIT = M.COMMIT, ROLLBACK = M.ROLLBACK, UNKNOWN = M.UNKNOWN, null = NULL,
    array = function(t) return t or {} end,
    log = function(...)
      local t = table.pack(...)
      for i = 1, t.n do t[i] = tostring(t[i]) end
      io.stderr:write("txmq: ", table.concat(t, " "), "\n")
    end,
  }
  local env = setmetatable({ txmq = api }, { __index = _G })
  local f, err = loadfile(path, "t", env)
  if not f then return nil, err end
  local ok, rerr = pcall(f)
  if not ok then return nil, tostring(rerr) end
  return env
end

-- ---- producer ----

local Producer = {}
Producer.__index = Producer

function M.producer(opts)
  opts = opts or {}
  local conn, err = core.connect(opts.server or "127.0.0.1:8967",
    opts.client_id or client_id("lua-producer"), "producer", secret_of(opts))
  if not conn then return nil, err end
  return setmetatable({ conn = conn }, Producer)
end

-- send{topic=, body=, tags=, keys=, props={...}} -> {msg_id, qid, qoff}
function Producer:send(msg)
  return self.conn:send(msg)
end

function Producer:close()
  self.conn:close()
end

-- ---- transaction producer ----

local TxProducer = {}
TxProducer.__index = TxProducer

function M.transaction_producer(opts)
  assert(type(opts) == "table", "txmq.transaction_producer: expected a table")
  local group = assert(opts.group, "txmq.transaction_producer: group is required")
  local server = opts.server or "127.0.0.1:8967"
  if opts.execute ~= nil and type(opts.execute) ~= "function" then
    error("txmq.transaction_producer: execute must be a function", 2)
  end
  if opts.check ~= nil and type(opts.check) ~= "function" then
    error("txmq.transaction_producer: check must be a function", 2)
  end
  local execute, script_check, stamp = opts.execute, nil, nil
  if opts.script then
    stamp = core.mtime(opts.script)
    local env, err = load_script(opts.script)
    if not env then error("txmq.transaction_producer: " .. err, 2) end
    execute = execute or env.executeLocalTransaction
    script_check = env.checkLocalTransaction
  end
  if type(execute) ~= "function" then
    error("txmq.transaction_producer: no executeLocalTransaction "
      .. "(give execute = function or a script that defines it)", 2)
  end
  local id = opts.client_id or client_id("lua-tx-" .. group)
  local self = setmetatable({ group = group, execute = execute,
    script = opts.script, stamp = stamp,
    script_execute = opts.execute == nil }, TxProducer)
  if opts.check then
    -- Copied now, so a refused local is reported before any connection.
    local ok, checker, cerr = pcall(core.checker, server, id, group, opts.check, M,
      secret_of(opts))
    if not ok then error("txmq.transaction_producer: " .. tostring(checker), 2) end
    if not checker then return nil, cerr end
    self.checker = checker
  elseif opts.script and script_check then
    local checker, cerr = core.checker(server, id, group, opts.script, nil, secret_of(opts))
    if not checker then return nil, cerr end
    self.checker = checker
  end
  local conn, err = core.connect(server, id, "producer", secret_of(opts))
  if not conn then
    if self.checker then self.checker:close() end
    return nil, err
  end
  self.conn = conn
  return self
end

-- Loads the script again if its file changed since it was loaded.
function TxProducer:reload_if_changed()
  if not self.script then return false end
  local stamp = core.mtime(self.script)
  if stamp == self.stamp then return false end
  self.stamp = stamp
  local env, err = load_script(self.script)
  if env and self.script_execute and type(env.executeLocalTransaction) ~= "function" then
    env, err = nil, "it defines no executeLocalTransaction"
  end
  if not env then
    io.stderr:write("txmq: ", self.script, " changed but does not load, the ",
      "previous version stays: ", err, "\n")
    return false
  end
  if self.script_execute then self.execute = env.executeLocalTransaction end
  return true
end

-- send_in_transaction(msg, arg) -> {status="SEND_OK", msg_id, tx_id,
-- tx_state="COMMIT_MESSAGE"|"ROLLBACK_MESSAGE"|"UNKNOW", state=...}.
-- An error in execute counts as UNKNOW (result.error says why): the checks
-- decide. execute runs inside this call: it cannot use this producer's
-- connection (an error says so); a message it sends goes through another
-- producer.
function TxProducer:send_in_transaction(msg, arg)
  self:reload_if_changed()
  return self.conn:send_in_transaction(self.group, msg, self.execute, arg)
end

-- How many check requests the background thread answered, and how many
-- times it loaded a changed script again.
function TxProducer:checks()
  return self.checker and self.checker:checks() or 0
end

function TxProducer:reloads()
  return self.checker and self.checker:reloads() or 0
end

-- Stops answering checks (joins the thread) and closes the connection.
function TxProducer:close()
  if self.checker then self.checker:close() end
  self.conn:close()
end

-- ---- consumer ----

local Consumer = {}
Consumer.__index = Consumer

local Message = {}
Message.__index = Message
function Message:ack()
  return self._consumer:ack(self)
end

function M.consumer(opts)
  assert(type(opts) == "table", "txmq.consumer: expected a table")
  assert(opts.group and opts.topic, "txmq.consumer: group and topic are required")
  local conn, err = core.connect(opts.server or "127.0.0.1:8967",
    opts.client_id or client_id("lua-consumer"), "consumer", secret_of(opts))
  if not conn then return nil, err end
  return setmetatable({ conn = conn, group = opts.group, topic = opts.topic,
    tags = opts.tags }, Consumer)
end

-- receive{max=, wait_ms=} -> list of messages (each with :ack(); m.qid and
-- m.qoff say where it is, for offset and seek).
function Consumer:receive(o)
  o = o or {}
  local list, err = self.conn:receive{ group = self.group, topic = self.topic,
    tags = self.tags, max = o.max, wait_ms = o.wait_ms }
  if not list then return nil, err end
  for _, m in ipairs(list) do
    m._consumer = self
    setmetatable(m, Message)
  end
  return list
end

-- ack(m) or ack{m1, m2, ...} -> how many were acknowledged.
function Consumer:ack(m)
  local handles = {}
  if m.handle then
    handles[1] = m.handle
  else
    for i, x in ipairs(m) do handles[i] = x.handle end
  end
  return self.conn:ack(self.group, handles)
end

-- A queue id or an offset given to a consumer method: an integer >= 0.
-- Checked here so that the error names the method and points at the
-- caller's line.
local function check_index(v, what, method)
  if math.type(v) ~= "integer" or v < 0 then
    error(string.format("txmq: Consumer:%s: %s must be an integer >= 0, not %s",
      method, what, tostring(v)), 3)
  end
  return v
end

-- offset(qid) -> the group's committed offset on queue qid of the topic
-- (the first message of that queue it has not acknowledged), or nil,
-- "ENOTFOUND: ..." when the group never read that queue.
function Consumer:offset(qid)
  check_index(qid, "qid", "offset")
  return self.conn:offset_get(self.group, self.topic, qid)
end

-- seek(qid, offset) -> true: moves the group on queue qid at once, like
-- RocketMQ's DefaultLitePullConsumer.seek: the next receive of that queue
-- starts at offset (back to read messages again, forward to skip them).
-- Messages of that queue received but not yet acknowledged are forgotten
-- (their acks count as missed). An offset past the queue's end is refused
-- (nil, "ERANGE: ...") and moves nothing.
function Consumer:seek(qid, offset)
  check_index(qid, "qid", "seek")
  check_index(offset, "offset", "seek")
  return self.conn:offset_set(self.group, self.topic, qid, offset)
end

-- peek{queue=, from=, max=} -> list, next: up to max (default 32, at most
-- 256) stored messages of queue `queue` of the topic from offset `from`
-- (default: the first retained) on, without consuming them: no group is
-- involved, nothing is delivered or made invisible, no offset moves. The
-- messages are those of receive without handle (no :ack()); next is where
-- the next peek goes on (an empty list at the end of the queue).
function Consumer:peek(o)
  if type(o) ~= "table" then
    error("txmq: Consumer:peek: expected a table {queue=, from=, max=}", 2)
  end
  check_index(o.queue, "queue", "peek")
  if o.from ~= nil then check_index(o.from, "from", "peek") end
  local max = o.max
  if max ~= nil and (math.type(max) ~= "integer" or max < 1 or max > 256) then
    error("txmq: Consumer:peek: max must be an integer from 1 to 256, not "
      .. tostring(max), 2)
  end
  return self.conn:peek{ topic = self.topic, qid = o.queue, offset = o.from,
    max = max }
end

function Consumer:close()
  self.conn:close()
end

return M
