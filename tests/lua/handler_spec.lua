-- Specs for lua/txmq/handler.lua, the Lua side of the handler host: result
-- normalisation, the txmq.array marker, the log format and the allow-list
-- sandbox. Run from the repo root: busted --lua=lua5.4 tests/lua
package.path = "./lua/?.lua;" .. package.path

local handler = require("txmq.handler")

describe("txmq.handler", function()
  describe("normalize", function()
    it("maps the constants and the RocketMQ spellings to codes", function()
      assert.are.equal(1, handler.normalize(handler.COMMIT))
      assert.are.equal(2, handler.normalize(handler.ROLLBACK))
      assert.are.equal(3, handler.normalize(handler.UNKNOWN))
      assert.are.equal(1, handler.normalize("COMMIT_MESSAGE"))
      assert.are.equal(2, handler.normalize("ROLLBACK_MESSAGE"))
      assert.are.equal(3, handler.normalize("UNKNOW"))
      assert.are.equal(3, handler.normalize("UNKNOWN"))
    end)

    it("refuses anything else and says what it got", function()
      local code, why = handler.normalize(42)
      assert.is_nil(code)
      assert.matches("returned 42 %(number%)", why)
      code, why = handler.normalize(nil)
      assert.is_nil(code)
      assert.matches("returned nil", why)
      code, why = handler.normalize("commit")
      assert.is_nil(code)
      assert.matches('"commit" %(string%)', why)
      code, why = handler.normalize({})
      assert.is_nil(code)
      assert.matches("returned table", why)
      code, why = handler.normalize(0 / 0)
      assert.is_nil(code)
      assert.matches("expected txmq.COMMIT", why)
    end)

    it("keeps the description on one line", function()
      local _, why = handler.normalize("a\nb" .. string.rep("x", 100))
      assert.is_nil(why:find("\n", 1, true))
      assert.matches("%.%.%.", why)
    end)
  end)

  describe("array", function()
    it("marks a table, or a new one, and returns it", function()
      local t = {}
      assert.are.equal(t, handler.array(t))
      assert.is_true(handler.is_array(t))
      local n = handler.array()
      assert.is_true(handler.is_array(n))
      assert.is_false(handler.is_array({}))
      assert.is_false(handler.is_array("x"))
    end)

    it("is idempotent and hides the marker", function()
      local t = handler.array({ 1, 2 })
      assert.are.equal(t, handler.array(t))
      assert.are.equal("txmq.array", getmetatable(t))
      assert.has_error(function() setmetatable(t, {}) end)
    end)

    it("refuses tables with a metatable of their own and non-tables", function()
      local t = setmetatable({}, {})
      assert.has_error(function() handler.array(t) end,
        "txmq.array: the table already has a metatable")
      assert.has_error(function() handler.array(5) end)
    end)
  end)

  describe("format_log", function()
    it("joins its arguments through tostring", function()
      assert.are.equal("a 1 true nil", handler.format_log("a", 1, true, nil))
      assert.are.equal("", handler.format_log())
    end)
  end)

  describe("safe_setmetatable", function()
    it("refuses __gc and allows the rest", function()
      assert.has_error(function()
        handler.safe_setmetatable({}, { __gc = function() end })
      end)
      local mt = { __index = { x = 1 } }
      local t = handler.safe_setmetatable({}, mt)
      assert.are.equal(1, t.x)
    end)
  end)

  describe("safe_xpcall", function()
    it("passes results through when nothing fails", function()
      local h = spy.new(function() end)
      local ok, a, b = handler.safe_xpcall(function(x, y) return x + y, "z" end, h, 1, 2)
      assert.is_true(ok)
      assert.are.equal(3, a)
      assert.are.equal("z", b)
      assert.spy(h).was_not.called()
    end)

    it("calls the handler with the error and returns what it gives", function()
      local h = spy.new(function(e) return "handled: " .. e end)
      local ok, r = handler.safe_xpcall(function() error("boom", 0) end, h)
      assert.is_false(ok)
      assert.are.equal("handled: boom", r)
      assert.spy(h).was.called(1)
      assert.spy(h).was.called_with("boom")
    end)

    it("returns an error raised by the handler", function()
      local ok, r = handler.safe_xpcall(function() error("a", 0) end,
        function() error("b", 0) end)
      assert.is_false(ok)
      assert.are.equal("b", r)
    end)
  end)

  describe("sandbox", function()
    local function fake_load() end
    local function fake_require() end
    local null = {}

    it("holds only the allow-list", function()
      local env = handler.sandbox(_G, { null = null, log = function() end,
        load = fake_load, require = fake_require })
      for _, name in ipairs({ "io", "debug", "dofile", "loadfile", "package",
        "collectgarbage", "coroutine", "print", "rawequal_x" }) do
        assert.is_nil(env[name], name)
      end
      for _, name in ipairs({ "assert", "error", "ipairs", "next", "pairs",
        "pcall", "select", "tonumber", "tostring", "type", "xpcall",
        "rawequal", "rawget", "rawlen", "rawset", "setmetatable",
        "getmetatable" }) do
        assert.is_function(env[name], name)
      end
      assert.are.equal(env, env._G)
      assert.are.equal(handler.safe_xpcall, env.xpcall)
      assert.are.equal(fake_load, env.load)
      assert.are.equal(fake_require, env.require)
    end)

    it("trims os and drops string.dump", function()
      local env = handler.sandbox(_G, {})
      assert.is_function(env.os.time)
      assert.is_function(env.os.clock)
      assert.is_function(env.os.date)
      assert.is_function(env.os.difftime)
      assert.is_nil(env.os.execute)
      assert.is_nil(env.os.exit)
      assert.is_nil(env.os.getenv)
      assert.is_nil(env.os.remove)
      assert.is_nil(env.string.dump)
      assert.is_function(string.dump) -- the real one is untouched
      assert.is_function(env.string.rep)
      assert.is_function(env.table.concat)
      assert.is_function(env.math.floor)
      assert.is_function(env.utf8.char)
    end)

    it("gives copies of the libraries, not the originals", function()
      local env = handler.sandbox(_G, {})
      env.string.rep = nil
      assert.is_function(string.rep)
    end)

    it("has no load or require unless the host gives them", function()
      local env = handler.sandbox(_G, {})
      assert.is_nil(env.load)
      assert.is_nil(env.require)
    end)

    it("builds the txmq table", function()
      local env = handler.sandbox(_G, { null = null })
      assert.are.equal("COMMIT_MESSAGE", env.txmq.COMMIT)
      assert.are.equal("ROLLBACK_MESSAGE", env.txmq.ROLLBACK)
      assert.are.equal("UNKNOW", env.txmq.UNKNOWN)
      assert.are.equal(null, env.txmq.null)
      assert.are.equal(handler.array, env.txmq.array)
      assert.is_table(env.txmq.host)
    end)

    it("sends txmq.log to the host's log function", function()
      local sink = spy.new(function() end)
      local env = handler.sandbox(_G, { log = sink })
      env.txmq.log("paid", 42)
      assert.spy(sink).was.called(1)
      assert.spy(sink).was.called_with("info", "paid 42")
      env.txmq.log_at("warn", "slow")
      assert.spy(sink).was.called_with("warn", "slow")
      assert.has_error(function() env.txmq.log_at("loud", "x") end)
      assert.spy(sink).was.called(2)
    end)

    it("runs a handler chunk in the sandbox", function()
      local env = handler.sandbox(_G, {})
      local chunk = load([[
        function executeLocalTransaction(msg, arg)
          if io or os.execute then return "leak" end
          return txmq.COMMIT
        end
      ]], "=t", "t", env)
      chunk()
      assert.is_nil(rawget(_G, "executeLocalTransaction"))
      assert.are.equal(1, handler.normalize(env.executeLocalTransaction({}, nil)))
    end)
  end)
end)
