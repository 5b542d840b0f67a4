-- schema.sql - the four services' own SQLite databases. Each service owns
-- one file and no service reads another's; txmq is the only thing between
-- them. setup.lua creates the files from the sections below ("-- @db NAME"
-- starts the statements of NAME.db).

-- @db orders
-- The order service. executeLocalTransaction moves an order from unpaid to
-- paid in one SQLite transaction and records which txmq transaction did it;
-- checkLocalTransaction answers from that record.
CREATE TABLE orders (
  order_id     TEXT PRIMARY KEY,
  customer     TEXT NOT NULL,
  amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
  state        TEXT NOT NULL DEFAULT 'unpaid' CHECK (state IN ('unpaid', 'paid')),
  paid_tx      TEXT UNIQUE,   -- the txmq transaction id that paid it
  payment_ref  TEXT,          -- the payment provider's reference (the arg)
  paid_at      TEXT
);

-- @db logistics
-- One shipment per order: the primary key makes a redelivered message a
-- no-op inside the same SQLite transaction as the effect.
CREATE TABLE shipments (
  order_id   TEXT PRIMARY KEY,
  customer   TEXT NOT NULL,
  status     TEXT NOT NULL DEFAULT 'to-pack',
  msg_id     TEXT NOT NULL,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- Every delivery the consumer saw, duplicates included.
CREATE TABLE deliveries (
  msg_id   TEXT NOT NULL,
  order_id TEXT NOT NULL,
  delivery INTEGER NOT NULL,  -- 1 for the first delivery, 2 for a redelivery...
  outcome  TEXT NOT NULL CHECK (outcome IN ('applied', 'duplicate')),
  at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- @db points
-- One ledger line per order (the idempotency key), and the balances it adds
-- to; both change in one SQLite transaction.
CREATE TABLE ledger (
  order_id  TEXT PRIMARY KEY,
  customer  TEXT NOT NULL,
  points    INTEGER NOT NULL,
  msg_id    TEXT NOT NULL,
  at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE balances (
  customer TEXT PRIMARY KEY,
  points   INTEGER NOT NULL
);
CREATE TABLE deliveries (
  msg_id   TEXT NOT NULL,
  order_id TEXT NOT NULL,
  delivery INTEGER NOT NULL,
  outcome  TEXT NOT NULL CHECK (outcome IN ('applied', 'duplicate')),
  at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- @db cart
-- The customers' shopping carts; a paid order empties its customer's cart
-- once (cleared has one row per order).
CREATE TABLE cart_items (
  customer TEXT NOT NULL,
  sku      TEXT NOT NULL,
  qty      INTEGER NOT NULL,
  PRIMARY KEY (customer, sku)
);
CREATE TABLE cleared (
  order_id TEXT PRIMARY KEY,
  customer TEXT NOT NULL,
  items    INTEGER NOT NULL,  -- cart lines removed
  msg_id   TEXT NOT NULL,
  at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE deliveries (
  msg_id   TEXT NOT NULL,
  order_id TEXT NOT NULL,
  delivery INTEGER NOT NULL,
  outcome  TEXT NOT NULL CHECK (outcome IN ('applied', 'duplicate')),
  at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
