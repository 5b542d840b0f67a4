-- order_service.lua - the order service: a transaction producer of the
-- group "order-payment" that hosts the group's handlers (order-payment.lua)
-- and, while it runs, answers txmq's checks for the group.
--
--   lua5.4 order_service.lua --server HOST:PORT --id NAME --script PATH
--                            [--crash-after-commit]
--
-- It reads commands on standard input, one per line, and answers each with
-- one line on standard output:
--
--   pay ORDER [PAYMENT_REF]   ->  ORDER COMMIT_MESSAGE committed tx=... msg=...
--
-- It tells logistics, points and cart (the topic "order-paid") about the
-- payment of ORDER in a transactional message: the half message is stored,
-- executeLocalTransaction marks the order paid in SQLite, and its answer
-- decides whether anyone hears of it. At the end of its input it closes
-- (it stops answering checks) and says how many checks it answered.
--
-- --crash-after-commit makes it stop dead inside its first local
-- transaction, right after the SQLite commit and before txmq hears the
-- answer: it writes "crashing tx=TXID" and then waits for ever, to be
-- killed. A check then asks the group's other live members.
--
-- ORDER_DB names the order database (read here to describe the order, and
-- by the handlers). LUA_PATH and LUA_CPATH must find txmq.
local txmq = require "txmq"
local sqlite3 = require "luasql.sqlite3"

local opts = {}
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--crash-after-commit" then
      opts.crash = true
    elseif a:match("^%-%-") and arg[i + 1] then
      opts[a:sub(3)] = arg[i + 1]
      i = i + 1
    else
      io.stderr:write("order_service: unexpected argument ", a, "\n")
      os.exit(2)
    end
    i = i + 1
  end
end
if not (opts.server and opts.id and opts.script) then
  io.stderr:write("usage: order_service.lua --server HOST:PORT --id NAME --script PATH"
    .. " [--crash-after-commit]\n")
  os.exit(2)
end

local function say(fmt, ...)
  io.stdout:write(string.format(fmt, ...), "\n")
  io.stdout:flush()
end

-- The order, for the message (nil if unknown): read outside the local
-- transaction, which decides on its own.
local db_env = assert(sqlite3.sqlite3())
local function describe(order)
  local conn = assert(db_env:connect(os.getenv("ORDER_DB") or "orders.db"))
  local cur = assert(conn:execute(string.format(
    "SELECT customer, amount_cents FROM orders WHERE order_id = '%s'", conn:escape(order))))
  local o = cur:fetch({}, "a")
  cur:close()
  conn:close()
  return o
end

local producer_opts = {
  group = "order-payment",
  server = opts.server,
  client_id = opts.id,
  script = opts.script,
}
if opts.crash then
  -- The script's own executeLocalTransaction, loaded here as the module
  -- loads it, then the crash: nothing after the SQLite commit reaches txmq.
  local env = setmetatable({ txmq = {
    COMMIT = txmq.COMMIT, ROLLBACK = txmq.ROLLBACK, UNKNOWN = txmq.UNKNOWN,
    log = function(...)
      local t = table.pack(...)
      for i = 1, t.n do t[i] = tostring(t[i]) end
      io.stderr:write("txmq: ", table.concat(t, " "), "\n")
    end,
  } }, { __index = _G })
  assert(loadfile(opts.script, "t", env))()
  producer_opts.execute = function(msg, payment)
    local result = env.executeLocalTransaction(msg, payment)
    say("crashing tx=%s after the local transaction answered %s", msg.tx_id, result)
    io.stdin:read("a") -- stand still until killed
    os.exit(1)
  end
end

local producer, err = txmq.transaction_producer(producer_opts)
if not producer then
  io.stderr:write("order_service: ", err, "\n")
  os.exit(1)
end
say("ready id=%s", opts.id)

for line in io.lines() do
  local order, payment = line:match("^pay%s+(%S+)%s*(%S*)")
  if order then
    local o = describe(order)
    local msg = {
      topic = "order-paid",
      tags = "paid",
      keys = order,
      body = o and string.format("order %s paid: %s, %d.%02d", order, o.customer,
        o.amount_cents // 100, o.amount_cents % 100) or ("order " .. order .. " paid"),
      props = o and { order = order, customer = o.customer,
        amount_cents = tostring(o.amount_cents) } or { order = order },
    }
    local r, serr = producer:send_in_transaction(msg, payment ~= "" and payment or nil)
    if r then
      say("%s %s %s tx=%s msg=%s%s", order, r.tx_state, r.state:lower(), r.tx_id, r.msg_id,
        r.error and (" error=" .. r.error) or "")
    else
      say("%s FAILED %s", order, serr)
    end
  elseif line:match("%S") then
    say("? unknown command: %s", line)
  end
end

local n = producer:checks()
producer:close()
say("closed id=%s, answered %d check%s", opts.id, n, n == 1 and "" or "s")
