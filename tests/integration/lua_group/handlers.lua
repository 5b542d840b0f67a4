-- The handlers of the producer group g-failover, shared by its members (a
-- handler script in the format of scripts/<group>.lua). The group's local
-- "database" is a directory with one file per order, named by the
-- message's keys, holding the state the local transaction left: "paid" or
-- "failed". Any member can answer a check from it, as any instance of an
-- order service can read the orders table.
local db = assert(os.getenv("GROUP_DB"), "GROUP_DB must name the group's database")

local function state_of(key)
  local f = io.open(db .. "/" .. key)
  if not f then return nil end
  local s = f:read("l")
  f:close()
  return s
end

-- The local transaction records arg ("paid" or "failed") for the order.
-- With CRASH_AFTER_LOCAL set, the member says so on stdout and then hangs
-- before answering: the test kills it there, between the stored half
-- message and its decision.
function executeLocalTransaction(msg, arg)
  local f = assert(io.open(db .. "/" .. msg.keys, "w"))
  f:write(arg, "\n")
  f:close()
  if os.getenv("CRASH_AFTER_LOCAL") then
    io.stdout:write("stored ", msg.tx_id, " ", msg.keys, "\n")
    io.stdout:flush()
    while true do os.execute("sleep 1") end
  end
  return arg == "paid" and txmq.COMMIT or txmq.ROLLBACK
end

function checkLocalTransaction(msg)
  local s = state_of(msg.keys)
  io.stderr:write("check ", msg.keys, " ", tostring(s), "\n")
  if s == "paid" then return txmq.COMMIT end
  if s == "failed" then return txmq.ROLLBACK end
  return txmq.UNKNOWN
end
