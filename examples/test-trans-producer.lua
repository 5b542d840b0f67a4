-- examples/test-trans-producer.lua - the handlers of the producer group
-- "test-trans-producer" for examples/transaction_producer.lua, hosted by
-- the producer itself (DESIGN §2, "In the producer"). As in the seed's Java
-- example, the local transaction answers UNKNOW and the check commits.

function executeLocalTransaction(msg, arg)
  return txmq.UNKNOWN
end

function checkLocalTransaction(msg)
  txmq.log("check", msg.tx_id, "count", msg.check_count, "-> COMMIT")
  return txmq.COMMIT
end
