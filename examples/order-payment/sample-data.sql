-- sample-data.sql - what the scenario starts from (sections as in
-- schema.sql). Amounts are in cents; points are one per whole unit paid.

-- @db orders
INSERT INTO orders (order_id, customer, amount_cents) VALUES
  ('A1001', 'alice',   4200),
  ('A1002', 'bob',     1999),
  ('A1003', 'carol', 150000),
  ('A1004', 'dave',  200000),
  ('A1005', 'erin',    2500);

-- @db cart
-- grace orders nothing: her cart must stay as it is.
INSERT INTO cart_items (customer, sku, qty) VALUES
  ('alice', 'tea-200g', 2), ('alice', 'mug', 1),
  ('bob',   'socks', 3),
  ('carol', 'bike', 1),     ('carol', 'helmet', 1),
  ('dave',  'laptop', 1),
  ('erin',  'book', 2),      ('erin', 'pen', 5),
  ('grace', 'kettle', 1);
