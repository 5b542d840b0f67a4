-- txmq/handler.lua - the Lua side of the handler host (core/script).
--
-- Provides what handler scripts see of txmq besides the C functions: the
-- result constants, the txmq.array marker, the normalisation of a handler's
-- result, the log message format, and the allow-list that builds a script's
-- _ENV. The C host embeds this file at build time (it never reads it from a
-- path at run time), runs it once per Lua state with the state's full
-- globals, and keeps the module out of the scripts' reach.
--
-- It does not: run handlers, enforce time or memory budgets, load scripts or
-- modules (the host passes its own text-only `load` and path-checked
-- `require`), or talk to the network.

local M = {}

-- Captured now: scripts may change their own copies of these libraries, never
-- the ones this module uses.
local type, pairs, ipairs, select, tostring, error, rawequal, rawget =
  type, pairs, ipairs, select, tostring, error, rawequal, rawget
local setmetatable = setmetatable
local getmt = (debug and debug.getmetatable) or getmetatable
local concat, sformat, sgsub, ssub = table.concat, string.format, string.gsub,
  string.sub

-- The RocketMQ spellings are the values, so a script may return either.
M.COMMIT = "COMMIT_MESSAGE"
M.ROLLBACK = "ROLLBACK_MESSAGE"
M.UNKNOWN = "UNKNOW"

-- Result codes as txmq/script.h numbers them.
M.CODE = { COMMIT = 1, ROLLBACK = 2, UNKNOWN = 3 }
local codes = {
  COMMIT_MESSAGE = 1,
  ROLLBACK_MESSAGE = 2,
  UNKNOW = 3,
  UNKNOWN = 3,
}

-- The array marker. __metatable hides it from getmetatable() and makes
-- setmetatable() refuse to replace it; the C codec compares it raw.
local array_mt = { __name = "txmq.array", __metatable = "txmq.array" }
M.array_mt = array_mt

-- Marks t (or a new table) as an array so that the codec packs it as a
-- msgpack array even when it is empty. Returns t.
function M.array(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then
    error("txmq.array: expected a table, got " .. type(t), 2)
  end
  local mt = getmt(t)
  if mt == nil then return setmetatable(t, array_mt) end
  if rawequal(mt, array_mt) then return t end
  error("txmq.array: the table already has a metatable", 2)
end

function M.is_array(t)
  return type(t) == "table" and rawequal(getmt(t), array_mt)
end

-- A short, one-line description of a value for a diagnostic.
local function describe(v)
  local tv = type(v)
  if tv == "string" then
    local s = v
    if #s > 40 then s = ssub(s, 1, 40) .. "..." end
    s = sgsub(s, "[%c\"\\]", function(c) return sformat("\\%03d", c:byte()) end)
    return '"' .. s .. '" (string)'
  elseif tv == "number" or tv == "boolean" then
    return tostring(v) .. " (" .. tv .. ")"
  end
  return tv
end
M.describe = describe

-- Turns what a handler returned into a result code (1, 2, 3), or nil and a
-- description of what was wrong with it.
function M.normalize(v)
  if type(v) == "string" then
    local c = codes[v]
    if c then return c end
  end
  return nil, "returned " .. describe(v) ..
    ", expected txmq.COMMIT, txmq.ROLLBACK or txmq.UNKNOWN"
end

-- The message of one txmq.log call: its arguments through tostring, joined
-- by spaces.
function M.format_log(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  return concat(parts, " ")
end

-- setmetatable for scripts: a __gc metamethod would run with debug hooks
-- off, out of reach of the time budget, so it is refused.
function M.safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not allowed in handler scripts", 2)
  end
  return setmetatable(t, mt)
end

-- xpcall for scripts: the message handler runs after the stack unwinds, not
-- at the error. When the error is the time budget's (raised from a debug
-- hook), Lua would run a handler at the error point with hooks off, where an
-- endless handler could never be stopped. Scripts have no debug library, so
-- they cannot tell the difference otherwise. An error in the handler is
-- returned like Lua returns one.
local pcall_ = pcall
local function xpcall_rest(handler, ok, ...)
  if ok then return true, ... end
  local _, r = pcall_(handler, (...))
  return false, r
end
function M.safe_xpcall(f, handler, ...)
  return xpcall_rest(handler, pcall_(f, ...))
end

-- The allow-list. Anything not named here is not in a script's _ENV.
local BASE = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "select",
  "tonumber", "tostring", "type", "xpcall", "rawequal", "rawget", "rawlen",
  "rawset", "getmetatable", "_VERSION",
}
local LIBS = { "string", "table", "math", "utf8" }
local OS = { "time", "clock", "date", "difftime" }
local LEVELS = { debug = true, info = true, warn = true, error = true }

-- Builds a fresh _ENV for a script from the globals G (the state's real
-- ones, which scripts never see). opts:
--   null     the txmq.null sentinel
--   log      function(level, message) that writes the log line
--   load     the host's text-only load (absent: no load at all)
--   require  the host's path-checked require (absent: no require at all)
function M.sandbox(G, opts)
  opts = opts or {}
  local env = {}
  for _, k in ipairs(BASE) do env[k] = G[k] end
  env.setmetatable = M.safe_setmetatable
  env.xpcall = M.safe_xpcall
  for _, name in ipairs(LIBS) do
    local copy = {}
    local lib = G[name]
    if type(lib) == "table" then
      for k, v in pairs(lib) do copy[k] = v end
    end
    env[name] = copy
  end
  env.string.dump = nil -- bytecode out, so no bytecode back in
  local os = {}
  local gos = G.os
  if type(gos) == "table" then
    for _, k in ipairs(OS) do os[k] = gos[k] end
  end
  env.os = os
  env.load = opts.load
  env.loadstring = opts.load
  env.require = opts.require

  local log = opts.log
  local txmq = {
    COMMIT = M.COMMIT,
    ROLLBACK = M.ROLLBACK,
    UNKNOWN = M.UNKNOWN,
    null = opts.null,
    array = M.array,
    is_array = M.is_array,
    host = {},
  }
  -- txmq.log(...) logs at info; txmq.log_at(level, ...) at debug, info,
  -- warn or error.
  function txmq.log(...)
    if log then log("info", M.format_log(...)) end
  end
  function txmq.log_at(level, ...)
    if not LEVELS[level] then
      error("txmq.log_at: level must be debug, info, warn or error", 2)
    end
    if log then log(level, M.format_log(...)) end
  end
  env.txmq = txmq
  env._G = env
  return env
end

return M
