-- order-payment.lua - the handlers of the producer group "order-payment",
-- hosted by the order service itself (order_service.lua), as a RocketMQ
-- TransactionMQProducer hosts its TransactionListener. The local
-- transaction is a real SQLite transaction on the order service's own
-- database (ORDER_DB, default orders.db), through LuaSQL.
--
-- The message's keys is the order id; the arg of send_in_transaction is the
-- payment provider's reference.
--
-- executeLocalTransaction: in one SQLite transaction, order unpaid -> paid,
--   recording the txmq transaction id. COMMIT if that happened; ROLLBACK if
--   the order is unknown or not unpaid (then nothing changed); UNKNOWN if
--   the database could not be used (then the check decides).
-- checkLocalTransaction: asked when no decision arrived (the service died
--   between the half message and its answer, or answered UNKNOWN). The
--   database knows: paid by this transaction -> COMMIT; otherwise ->
--   ROLLBACK; database unusable (locked, say) -> UNKNOWN, ask again.
local sqlite3 = require "luasql.sqlite3"

local DB = os.getenv("ORDER_DB") or "orders.db"

-- Payments above this many cents wait for a person (ROLLBACK: the order
-- stays unpaid and nobody is told). nil: no limit.
local REVIEW_ABOVE_CENTS = nil

local env = assert(sqlite3.sqlite3())

-- Runs f(conn) on a fresh connection and closes it; errors propagate.
local function with_db(f)
  local conn, err = env:connect(DB)
  if not conn then error(err, 0) end
  local cur = conn:execute("PRAGMA busy_timeout = 200")
  if type(cur) == "userdata" then cur:close() end
  local ok, a, b = pcall(f, conn)
  if not ok then
    conn:execute("ROLLBACK") -- harmless when no transaction is open
    conn:close()
    error(a, 0)
  end
  conn:close()
  return a, b
end

-- Executes sql (string.format'ed with escaped string arguments); returns
-- the row count, or raises the database's error.
local function exec(conn, sql, ...)
  local args = table.pack(...)
  for i = 1, args.n do args[i] = conn:escape(tostring(args[i])) end
  local r, err = conn:execute(string.format(sql, table.unpack(args, 1, args.n)))
  if not r then error(err, 0) end
  return r
end

-- Returns the first row of a query as a table (nil if none).
local function row(conn, sql, ...)
  local cur = exec(conn, sql, ...)
  local r = cur:fetch({}, "a")
  cur:close()
  return r
end

function executeLocalTransaction(msg, arg)
  local order = msg.keys or "?"
  local ok, result, why = pcall(with_db, function(conn)
    exec(conn, "BEGIN IMMEDIATE")
    local o = row(conn, "SELECT state, amount_cents FROM orders WHERE order_id = '%s'", order)
    if not o then
      exec(conn, "ROLLBACK")
      return txmq.ROLLBACK, "unknown order"
    end
    if REVIEW_ABOVE_CENTS and math.tointeger(o.amount_cents) > REVIEW_ABOVE_CENTS then
      exec(conn, "ROLLBACK")
      return txmq.ROLLBACK, string.format("held for review (over %.2f)", REVIEW_ABOVE_CENTS / 100)
    end
    local n = exec(conn, [[UPDATE orders SET state = 'paid', paid_tx = '%s', payment_ref = '%s',
        paid_at = strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', 'now')
      WHERE order_id = '%s' AND state = 'unpaid']], msg.tx_id, arg or "", order)
    if n ~= 1 then
      exec(conn, "ROLLBACK")
      return txmq.ROLLBACK, "already " .. o.state
    end
    exec(conn, "COMMIT")
    return txmq.COMMIT, "unpaid -> paid"
  end)
  if not ok then
    txmq.log("order", order, "execute: database error:", result, "-> UNKNOWN")
    return txmq.UNKNOWN
  end
  txmq.log("order", order, "execute:", why, "->", result)
  return result
end

function checkLocalTransaction(msg)
  local order = msg.keys or "?"
  local ok, o = pcall(with_db, function(conn)
    return row(conn, "SELECT state, paid_tx FROM orders WHERE order_id = '%s'", order)
  end)
  local result, why
  if not ok then
    result, why = txmq.UNKNOWN, "database error: " .. tostring(o)
  elseif o and o.state == "paid" and o.paid_tx == msg.tx_id then
    result, why = txmq.COMMIT, "paid by this transaction"
  elseif o and o.state == "paid" then
    result, why = txmq.ROLLBACK, "paid by another transaction"
  else
    result, why = txmq.ROLLBACK, o and "still " .. o.state or "unknown order"
  end
  txmq.log("order", order, "check:", why, "->", result)
  return result
end
