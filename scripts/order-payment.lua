-- scripts/order-payment.lua - handlers of the producer group "order-payment",
-- used by the README's tour: txmqd (run from the repository's top folder)
-- loads scripts/<group>.lua by default.
--
-- executeLocalTransaction decides from the arg the producer sent
-- (`txmq tx send --group order-payment TOPIC BODY --arg paid`):
--   "paid"  -> COMMIT: consumers get the message
--   "later" -> UNKNOWN: undecided; txmq checks after the transaction timeout
--   else    -> ROLLBACK: no consumer ever sees it

function executeLocalTransaction(msg, arg)
  if arg == "paid" then return txmq.COMMIT end
  if arg == "later" then return txmq.UNKNOWN end
  return txmq.ROLLBACK
end

-- Asked for transactions still undecided after the timeout. A real handler
-- looks at its own state (an orders table, say); this one commits.
function checkLocalTransaction(msg)
  txmq.log("check", msg.tx_id, "count", msg.check_count)
  return txmq.COMMIT
end
