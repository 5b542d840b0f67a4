-- consumer.lua - the three services that must hear of every paid order,
-- each a consumer group of the topic "order-paid" with its own SQLite
-- database:
--
--   logistics  creates a shipment for the order
--   points     credits the customer one point per whole unit paid
--   cart       empties the customer's shopping cart
--
--   lua5.4 consumer.lua --server HOST:PORT --group logistics|points|cart
--                       --db PATH [--stop-file PATH] [--crash-before-ack]
--
-- Delivery is at least once, so every effect is idempotent: the effect and
-- a row keyed by the order id are written in one SQLite transaction, and
-- the message is acknowledged only after that transaction committed. A
-- redelivered message (the consumer died before its ack) finds the row and
-- changes nothing; it is acknowledged all the same. Every delivery is
-- recorded in the table deliveries.
--
-- It prints one line per delivery and runs until the stop file exists.
-- --crash-before-ack makes it exit right after committing its first effect,
-- without acknowledging: txmq delivers the message again after the
-- visibility timeout.
local txmq = require "txmq"
local sqlite3 = require "luasql.sqlite3"

local opts = {}
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--crash-before-ack" then
      opts.crash = true
    elseif a:match("^%-%-") and arg[i + 1] then
      opts[a:sub(3)] = arg[i + 1]
      i = i + 1
    else
      io.stderr:write("consumer: unexpected argument ", a, "\n")
      os.exit(2)
    end
    i = i + 1
  end
end
if not (opts.server and opts.group and opts.db) then
  io.stderr:write("usage: consumer.lua --server HOST:PORT --group logistics|points|cart"
    .. " --db PATH [--stop-file PATH] [--crash-before-ack]\n")
  os.exit(2)
end

local function say(fmt, ...)
  io.stdout:write(string.format("%-9s ", opts.group .. ":"), string.format(fmt, ...), "\n")
  io.stdout:flush()
end

local env = assert(sqlite3.sqlite3())
local conn = assert(env:connect(opts.db))
do
  local cur = conn:execute("PRAGMA busy_timeout = 2000")
  if type(cur) == "userdata" then cur:close() end
end

local function exec(sql, ...)
  local args = table.pack(...)
  for i = 1, args.n do args[i] = conn:escape(tostring(args[i])) end
  local r, err = conn:execute(string.format(sql, table.unpack(args, 1, args.n)))
  if not r then error(err, 0) end
  return r
end

local function value(sql, ...)
  local cur = exec(sql, ...)
  local r = cur:fetch()
  cur:close()
  return r
end

-- The effects: each inserts its idempotency row first; a duplicate returns
-- nil (nothing changed), an applied effect returns what it did.
local effects = {}

function effects.logistics(m, order, customer)
  if exec("INSERT OR IGNORE INTO shipments (order_id, customer, msg_id) VALUES ('%s', '%s', '%s')",
      order, customer, m.msg_id) == 0 then
    return nil
  end
  return "shipment created for " .. customer
end

function effects.points(m, order, customer)
  local points = (tonumber(m.properties.amount_cents) or 0) // 100
  if exec("INSERT OR IGNORE INTO ledger (order_id, customer, points, msg_id) VALUES ('%s', '%s', %d, '%s')",
      order, customer, points, m.msg_id) == 0 then
    return nil
  end
  exec([[INSERT INTO balances (customer, points) VALUES ('%s', %d)
    ON CONFLICT (customer) DO UPDATE SET points = points + excluded.points]], customer, points)
  return string.format("+%d points for %s (balance %d)", points, customer,
    value("SELECT points FROM balances WHERE customer = '%s'", customer))
end

function effects.cart(m, order, customer)
  local items = value("SELECT count(*) FROM cart_items WHERE customer = '%s'", customer)
  if exec("INSERT OR IGNORE INTO cleared (order_id, customer, items, msg_id) VALUES ('%s', '%s', %d, '%s')",
      order, customer, items, m.msg_id) == 0 then
    return nil
  end
  exec("DELETE FROM cart_items WHERE customer = '%s'", customer)
  return string.format("cart of %s emptied (%d line%s)", customer, items, items == 1 and "" or "s")
end

local effect = effects[opts.group]
if not effect then
  io.stderr:write("consumer: unknown group ", opts.group, " (logistics, points or cart)\n")
  os.exit(2)
end

-- Applies one message in one SQLite transaction; returns what it did.
local function apply(m)
  local order = m.keys or m.properties.order
  local customer = m.properties.customer or "?"
  exec("BEGIN IMMEDIATE")
  local ok, did = pcall(effect, m, order, customer)
  if not ok then
    conn:execute("ROLLBACK")
    error(did, 0)
  end
  exec("INSERT INTO deliveries (msg_id, order_id, delivery, outcome) VALUES ('%s', '%s', %d, '%s')",
    m.msg_id, order, m.deliveries or 1, did and "applied" or "duplicate")
  exec("COMMIT")
  return order, did
end

local consumer, err = txmq.consumer{ server = opts.server, group = opts.group,
  topic = "order-paid" }
if not consumer then
  io.stderr:write("consumer: ", err, "\n")
  os.exit(1)
end
say("ready")

local function stopped()
  local f = opts["stop-file"] and io.open(opts["stop-file"])
  if f then f:close() end
  return f ~= nil
end

while not stopped() do
  local list, rerr = consumer:receive{ max = 16, wait_ms = 200 }
  if not list then
    io.stderr:write("consumer: ", rerr, "\n")
    os.exit(1)
  end
  for _, m in ipairs(list) do
    local ok, order, did = pcall(apply, m)
    if not ok then
      -- Not acknowledged: txmq delivers it again after the visibility timeout.
      say("%s: database error, left for redelivery: %s", m.keys or "?", order)
    else
      local nth = (m.deliveries or 1) > 1 and string.format(" (delivery %d)", m.deliveries) or ""
      say("%s %s%s", order, did or "already done, nothing changed", nth)
      if opts.crash then
        say("%s crashing before the ack", order)
        os.exit(3)
      end
      m:ack()
    end
  end
end
consumer:close()
conn:close()
say("stopped")
