-- gateway.lua, version 2: what examples/embedded-gateway writes over
-- version 1 while it runs. The limit goes up to 500, and an order above it
-- is no longer refused: its credit is reserved and it waits for an
-- operator (UNKNOWN). checkLocalTransaction then asks the ledger until the
-- operator has decided.
--
-- txmq.host (registered by the host program, on the C side):
--   apply(order, amount)  -> "applied" | "refused" (credit short)
--   hold(order, amount)   -> "held" (credit reserved) | "refused"
--   refuse(order, reason) -> "refused"
--   state(order)          -> "applied" | "held" | "refused" | "none"

local LIMIT = 500

function executeLocalTransaction(msg, arg)
  if arg.amount > LIMIT then
    if txmq.host.hold(arg.order, arg.amount) == "held" then
      return txmq.UNKNOWN -- an operator decides; checks will ask the ledger
    end
    return txmq.ROLLBACK
  end
  if txmq.host.apply(arg.order, arg.amount) == "applied" then
    return txmq.COMMIT
  end
  return txmq.ROLLBACK
end

function checkLocalTransaction(msg)
  local s = txmq.host.state(msg.keys)
  if s == "applied" then return txmq.COMMIT end
  if s == "held" then return txmq.UNKNOWN end
  return txmq.ROLLBACK -- refused, or it never reached the ledger
end
