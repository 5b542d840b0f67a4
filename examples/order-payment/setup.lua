-- setup.lua - creates the services' SQLite databases in DIR from
-- schema.sql and, unless --empty, fills them with sample-data.sql.
--
--   lua5.4 setup.lua DIR [--empty]
--
-- Makes DIR/orders.db, DIR/logistics.db, DIR/points.db and DIR/cart.db
-- (in WAL mode, so that a service's readers never wait for its writer).
-- Refuses to touch a database that exists.
local sqlite3 = require "luasql.sqlite3"

local dir = assert(arg[1], "usage: lua5.4 setup.lua DIR [--empty]")
local here = arg[0]:match("^(.*)/[^/]*$") or "."

-- Returns { [db] = { statement, ... } } from a file of "-- @db NAME"
-- sections. A statement ends with a semicolon at the end of a line.
local function sections(path)
  local out, db, buf = {}, nil, {}
  for line in io.lines(path) do
    local name = line:match("^%-%- @db (%w+)%s*$")
    if name then
      db = name
      out[db] = out[db] or {}
    elseif db and not line:match("^%s*%-%-") and line:match("%S") then
      buf[#buf + 1] = line
      if line:match(";%s*$") then
        table.insert(out[db], table.concat(buf, "\n"))
        buf = {}
      end
    end
  end
  if #buf > 0 then error(path .. ": a statement does not end with ';': " .. buf[1], 0) end
  return out
end

local env = assert(sqlite3.sqlite3())
local schema = sections(here .. "/schema.sql")
local sample = arg[2] ~= "--empty" and sections(here .. "/sample-data.sql") or {}
for _, db in ipairs{ "orders", "logistics", "points", "cart" } do
  local path = dir .. "/" .. db .. ".db"
  local f = io.open(path)
  if f then
    f:close()
    error(path .. " exists; remove it first", 0)
  end
  local conn = assert(env:connect(path))
  local cur = assert(conn:execute("PRAGMA journal_mode = WAL"))
  cur:close()
  assert(conn:execute("BEGIN"))
  for _, list in ipairs{ schema[db] or {}, sample[db] or {} } do
    for _, sql in ipairs(list) do
      local ok, err = conn:execute(sql)
      if not ok then error(path .. ": " .. err .. "\n" .. sql, 0) end
    end
  end
  assert(conn:execute("COMMIT"))
  conn:close()
end
env:close()
