-- A member of the producer group g-failover (txmq.transaction_producer
-- with lua_group/handlers.lua).
--   member.lua SERVER ID send KEY STATE   sends one order in a transaction
--   member.lua SERVER ID standby STOPFILE answers checks until STOPFILE
--                                          exists, then prints its count
local txmq = require "txmq"
local server, id, mode = arg[1], arg[2], arg[3]
local here = arg[0]:match("^(.*)/[^/]*$") or "."
local p = assert(txmq.transaction_producer{ group = "g-failover", server = server,
  client_id = id, script = here .. "/handlers.lua" })
if mode == "send" then
  local r = assert(p:send_in_transaction({ topic = "GroupOrders",
    body = "order " .. arg[4], keys = arg[4] }, arg[5]))
  print("result", r.tx_id, r.tx_state)
elseif mode == "standby" then
  print("ready")
  io.stdout:flush()
  while true do
    local f = io.open(arg[4])
    if f then f:close() break end
    os.execute("sleep 0.1")
  end
  print("checks", p:checks())
else
  error("unknown mode " .. tostring(mode))
end
p:close()
