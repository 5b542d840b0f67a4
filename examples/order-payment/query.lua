-- query.lua - prints the rows of one SQL query on a SQLite database, one
-- row per line, columns separated by "|" (as the sqlite3 tool does), for
-- run.sh's checks; NULL prints as nothing.
--
--   lua5.4 query.lua DB "SELECT ..."
local sqlite3 = require "luasql.sqlite3"
local env = assert(sqlite3.sqlite3())
local conn = assert(env:connect(assert(arg[1], "usage: query.lua DB SQL")))
local cur = conn:execute("PRAGMA busy_timeout = 2000")
if type(cur) == "userdata" then cur:close() end
cur = assert(conn:execute(assert(arg[2], "usage: query.lua DB SQL")))
if type(cur) == "userdata" then
  local ncols = #cur:getcolnames()
  local r = cur:fetch({}, "n")
  while r do
    local t = {}
    for i = 1, ncols do t[i] = r[i] == nil and "" or tostring(r[i]) end
    print(table.concat(t, "|"))
    r = cur:fetch(r, "n")
  end
  cur:close()
end
conn:close()
env:close()
