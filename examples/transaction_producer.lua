-- examples/transaction_producer.lua - RocketMQ's TransactionProducer
-- example in Lua: a transaction producer whose local transaction answers
-- UNKNOW, so txmqd checks it later; the producer's background thread
-- answers the check with COMMIT (examples/test-trans-producer.lua), and a
-- consumer then receives "hello world".
--
--   lua5.4 examples/transaction_producer.lua [HOST:PORT]
-- (with txmqd running; from a build tree set
--  LUA_CPATH="<build>/lua/?.so;;" LUA_PATH="<repo>/lua/?.lua;;").
-- Exits 0 once the message was received, 1 after 30 s without it.
local txmq = require "txmq"

local server = arg[1] or os.getenv("TXMQ_SERVER") or "127.0.0.1:8967"
local here = (arg[0]:match("^(.*)/[^/]*$") or ".")

local producer = assert(txmq.transaction_producer{
  group = "test-trans-producer",
  server = server,
  script = here .. "/test-trans-producer.lua",
})
local r = assert(producer:send_in_transaction({ topic = "TopicTest", body = "hello world" }, nil))
print(r.status, r.tx_state, r.msg_id, r.tx_id)

local consumer = assert(txmq.consumer{ server = server, group = "example-consumer",
  topic = "TopicTest" })
local deadline = os.time() + 30
local ok = false
while not ok and os.time() < deadline do
  for _, m in ipairs(assert(consumer:receive{ max = 16, wait_ms = 1000 })) do
    print("received", m.body)
    m:ack()
    if m.body == "hello world" then ok = true end
  end
end
consumer:close()
producer:close()
os.exit(ok and 0 or 1)
