-- readme_config.lua - the README's configuration reference against
-- core/daemon/txmqd.conf.lua (the annotated file with every key at its
-- default, which txmqd itself is tested to accept): every key of the file
-- has a row "| `key` | `default` | ..." in the README whose default
-- evaluates to the same value, and every row names a key of the file.
--
--   lua5.4 readme_config.lua README.md txmqd.conf.lua
local readme, conf = arg[1], arg[2]

local f = assert(loadfile(conf, "t", { os = { getenv = os.getenv } }))
local keys = f()

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local rows, in_section = {}, false
for l in io.lines(readme) do
  if l:match("^## ") then in_section = l == "## Configuring txmqd" end
  if in_section then
    local k, v = l:match("^| `([%w_]+)` | `(.-)` |")
    if k then rows[k] = v end
  end
end

local bad = 0
local function fail(msg)
  print("FAIL   " .. msg)
  bad = bad + 1
end
local n = 0
for k, v in pairs(keys) do
  n = n + 1
  local cell = rows[k]
  if not cell then
    fail("the README has no row for `" .. k .. "`")
  else
    local g = load("return " .. cell, "=README", "t", {})
    local ok, val = pcall(g or error)
    if not g or not ok or not same(val, v) then
      fail("the README gives `" .. k .. "` the default `" .. cell .. "`, the file another")
    end
  end
end
for k in pairs(rows) do
  if keys[k] == nil and rows[k] ~= "nil" then fail("the README's row `" .. k .. "` is not a key of " .. conf) end
end
if bad > 0 then os.exit(1) end
print(string.format("PASS: the README documents all %d keys of %s with their defaults", n, conf))
