-- txmqd.conf.lua - an annotated configuration for txmqd, with every key
-- set to its default. Use it with `txmqd -c txmqd.conf.lua`; flags on the
-- command line override what it says.
--
-- The file is Lua, run once at start in a bare sandbox (string, table,
-- math, the safe base functions and os.getenv; no io, require, load or
-- os.execute), with a 16 MiB memory cap and a 1 s time limit. It either
-- returns a table of keys (as here) or sets them as globals. An unknown
-- key, a value of the wrong type or out of range stops txmqd with one line
-- naming the key. Sizes are bytes, durations milliseconds. Relative paths
-- are relative to txmqd's working directory.

return {
  -- The daemon --------------------------------------------------------------
  listen = "127.0.0.1:8967",  -- HOST:PORT; [::1]:8967 for IPv6; port 0 = any
  data = "./data",            -- created if missing; one txmqd per directory
  scripts = "./scripts",      -- handler scripts, <scripts>/<group>.lua
  log_level = "info",         -- "debug", "info", "warn" or "error"

  -- The commit log and the store -------------------------------------------
  sync = "always",            -- "always": answer after fsync (group commit);
                              -- "interval": fsync every sync_interval_ms;
                              -- "never": the OS decides
  sync_interval_ms = 1000,
  segment_size = 64 * 1024 * 1024,
  retain_bytes = 0,           -- delete the oldest segments past this; 0 = off
  retain_seconds = 0,         -- ... or older than this; 0 = off
  default_queues = 4,         -- queues of a topic created by its first message
  checkpoint_interval_ms = 5000,
  snapshot_interval_ms = 60000, -- a checkpoint also saves the transaction
                              -- engine's state this often (and at a stop)
  max_topics = 4096,          -- a send that would create one more topic
                              -- fails: ERANGE "topic limit reached ..."

  -- Transactions and checks (RocketMQ's defaults) ---------------------------
  tx_timeout_ms = 6000,       -- first check of an undecided transaction
  check_interval_ms = 30000,  -- then every ...
  check_backoff_pct = 100,    -- ... times this per check (100 = no growth)
  check_interval_max_ms = 300000,
  max_checks = 15,            -- then the transaction is parked
  check_timeout_ms = 5000,    -- a producer's answer to a check is due within
  check_retry_ms = 1000,      -- a check nobody could take is offered again
  max_producer_groups = 1024, -- groups with undecided transactions at once;
                              -- a transaction of one more group fails:
                              -- ERANGE "producer group limit reached ..."

  -- The Lua handler host ----------------------------------------------------
  workers = 2,                -- threads running handlers
  states_per_group = 1,       -- Lua states per producer group
  script_memory_limit = 64 * 1024 * 1024,  -- per state
  call_budget_ms = 1000,      -- per handler call
  load_budget_ms = 200,       -- per script load
  watch_scripts = true,       -- reload a script when its file changes
  allow_modules = {},         -- require() paths scripts may use, e.g.
                              -- "/usr/share/lua/5.4/?.lua"

  -- The server --------------------------------------------------------------
  -- auth: nil (the default) = no authentication: a client's role is a
  -- declaration. A table of secrets by role turns it on:
  --   auth = {
  --     producer = os.getenv("TXMQ_PRODUCER_SECRET"),
  --     consumer = os.getenv("TXMQ_CONSUMER_SECRET"),
  --     admin = os.getenv("TXMQ_ADMIN_SECRET"),
  --   },
  -- Each secret is a string of 8..256 bytes; os.getenv keeps it out of this
  -- file. A client's hello must carry its role's secret or the admin secret
  -- (accepted for every role, so one TXMQ_SECRET serves every `txmq`
  -- command); a role left without a secret can be claimed with the admin
  -- secret only. Roles then also limit what a connection may do (producer:
  -- send and transactions; consumer: receive, ack, offsets; admin:
  -- everything). A table that sets no secret at all is refused.
  auth = nil,
  max_frame = 8 * 1024 * 1024,  -- largest frame either way; a longer one
                                -- gets ETOOBIG and the connection closes
  max_connections = 10000,    -- one more gets EAGAIN and is closed
  max_inflight = 1024,        -- requests in progress per connection; past
                              -- it the socket is not read (back-pressure)
  heartbeat_ms = 10000,       -- idle connections are closed after 3x this
  max_output = 1024 * 1024,   -- queued response bytes per connection
  drain_ms = 10000,           -- shutdown waits this long for requests

  -- Consumers ---------------------------------------------------------------
  visibility_ms = 30000,      -- a received message is invisible for ...
  max_deliveries = 16,        -- then it goes to DLQ.<group>
  consumer_max_inflight = 10000,  -- unacknowledged per group and topic
  max_consumer_groups = 1024, -- a receive or offset.set of one more group
                              -- fails: ERANGE "consumer group limit ..."
                              -- (groups with stored offsets always count)
}
