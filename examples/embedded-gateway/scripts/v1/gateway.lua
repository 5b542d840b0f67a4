-- gateway.lua, version 1: the handlers of the producer group "gateway" in
-- examples/embedded-gateway. The gateway applies small orders to its
-- ledger itself and refuses the others.
--
-- The local transaction lives on the C side, in the gateway's ledger; the
-- handlers reach it only through the functions the host program registered
-- under txmq.host:
--   apply(order, amount)  -> "applied" | "refused" (credit short)
--   hold(order, amount)   -> "held" (credit reserved) | "refused"
--   refuse(order, reason) -> "refused"
--   state(order)          -> "applied" | "held" | "refused" | "none"

local LIMIT = 100

function executeLocalTransaction(msg, arg)
  if arg.amount > LIMIT then
    txmq.host.refuse(arg.order, "over the v1 limit of " .. LIMIT)
    return txmq.ROLLBACK
  end
  if txmq.host.apply(arg.order, arg.amount) == "applied" then
    return txmq.COMMIT
  end
  return txmq.ROLLBACK
end

-- Asked about a transaction still undecided after its timeout: the ledger
-- knows what became of the order.
function checkLocalTransaction(msg)
  local s = txmq.host.state(msg.keys)
  if s == "applied" then return txmq.COMMIT end
  if s == "held" then return txmq.UNKNOWN end
  return txmq.ROLLBACK -- refused, or it never reached the ledger
end
