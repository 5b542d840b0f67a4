-- readme_doctest.lua - runs the console blocks of a README section against
-- the real tools and compares what they print with what the README shows.
--
--   lua5.4 readme_doctest.lua README.md "A five-minute tour" WORKDIR [sh]
--
-- With "sh", the section's ```sh blocks are run instead, one command per
-- line, each of which must exit 0 (their output is not shown in the README).
--
-- In WORKDIR (which has build/bin, scripts/ and TXMQ_SERVER set by the
-- caller), every "$ command" line of every ```console block of the section
-- runs with bash; the lines that follow it, up to the next "$", are its
-- expected standard output, line by line. Values that differ between runs
-- match any value of their kind: ids (32 hex digits, or abbreviated as
-- "01a2…9e3b", whose real value is remembered so that a later command may
-- use the full id the README shows), timestamps, the client ids of the
-- tool, durations, queue ids and offsets. A script's version (a hash of
-- its file) must be the README's. A reading
-- command (consume, tx list, tx show, status) whose output does not match
-- yet (a check that is still due) is run again, for at most RETRY_S
-- seconds; any other command runs once. "kill %1" is left to the caller. Prints one
-- line per command; exits 1 on the first mismatch.
local readme, section, work, kind = arg[1], arg[2], arg[3], arg[4] or "console"
local RETRY_S = tonumber(os.getenv("RETRY_S") or "20")

local lines = {}
for l in io.lines(readme) do lines[#lines + 1] = l end

-- The section's console blocks: a list of {cmd=, want={...}}.
local steps, in_section, in_block = {}, false, false
for _, l in ipairs(lines) do
  if l:match("^## ") then in_section = (l == "## " .. section) end
  if in_section then
    if l:match("^```" .. kind .. "$") then
      in_block = true
    elseif l:match("^```") then
      in_block = false
    elseif in_block and kind == "sh" then
      if l:match("%S") and not l:match("^%s*#") then steps[#steps + 1] = { cmd = l, want = {} } end
    elseif in_block then
      local cmd = l:match("^%$ (.*)$")
      if cmd then
        steps[#steps + 1] = { cmd = cmd, want = {} }
      elseif #steps > 0 then
        table.insert(steps[#steps].want, l)
      end
    end
  end
end
if #steps == 0 then
  io.stderr:write("no console commands in section '", section, "'\n")
  os.exit(1)
end

local ELL = "…"
local abbrev = {}  -- "01a2…9e3b" -> the real id it stood for

-- A Lua pattern for an expected line, with a list of abbreviations whose
-- real values the match captures (in order).
local function pattern_of(want)
  local caps = {}
  local out, i = {}, 1
  local function lit(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end
  while i <= #want do
    local s = want:sub(i)
    local a, b = s:match("^(%x%x%x%x)" .. ELL .. "(%x%x%x%x)")
    local ts = s:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ")
    local hex = s:match("^%x+")
    local cli = s:match("^txmq%-cli:[%w%.%-]+:%d+")
    local dur = s:match("^%d+%.%d+s")
    local ws = s:match("^%s+")
    if a then
      caps[#caps + 1] = a .. ELL .. b
      out[#out + 1] = "(%x+)"
      i = i + #a + #ELL + #b
    elseif ts then
      out[#out + 1] = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"
      i = i + #ts
    elseif cli then
      out[#out + 1] = "txmq%-cli:[%w%.%-]+:%d+"
      i = i + #cli
    elseif dur then
      out[#out + 1] = "%-?%d+%.%d+s"
      i = i + #dur
    elseif hex and #hex == 32 then
      out[#out + 1] = "%x+"
      i = i + #hex
    elseif ws then
      out[#out + 1] = "%s+"
      i = i + #ws
    elseif s:match("^qid=%d+") or s:match("^qoff=%d+") then
      local k = s:match("^(q%a+=)%d+")
      out[#out + 1] = lit(k) .. "%d+"
      i = i + #s:match("^q%a+=%d+")
    else
      out[#out + 1] = lit(s:sub(1, 1))
      i = i + 1
    end
  end
  return "^" .. table.concat(out) .. "$", caps
end

-- Full ids in a command that the README abbreviated earlier become the
-- real ones.
local function substitute(cmd)
  return (cmd:gsub("%x+", function(h)
    if #h ~= 32 then return nil end
    local real = abbrev[h:sub(1, 4) .. ELL .. h:sub(-4)]
    return real
  end))
end

local function run(cmd)
  -- (A newline ends a trailing "# comment" of the command.)
  local f = io.popen("cd '" .. work .. "' && { " .. cmd .. "\n} 2>'" .. work .. "/doctest.err'")
  local got = {}
  for l in f:lines() do got[#got + 1] = l end
  local ok, _, code = f:close()
  return got, ok and 0 or code
end

local function now()
  local f = io.popen("date +%s.%N")
  local t = tonumber(f:read("l"))
  f:close()
  return t
end

for n, step in ipairs(steps) do
  if step.cmd:match("^kill %%1") then
    print(string.format("skip   %d: %s (the caller stops txmqd)", n, step.cmd))
    goto continue
  end
  do
    local cmd = substitute(step.cmd)
    local reads = cmd:match("txmq consume ") or cmd:match("txmq tx list")
      or cmd:match("txmq tx show ") or cmd:match("txmq status")
    local deadline = now() + (reads and RETRY_S or 0)
    local got, code, why
    repeat
      got, code = run(cmd)
      why = nil
      if code ~= 0 then
        why = "exit status " .. tostring(code)
      elseif #step.want > 0 and #got ~= #step.want then
        why = string.format("%d lines, the README shows %d", #got, #step.want)
      else
        for k, w in ipairs(step.want) do
          local pat, caps = pattern_of(w)
          local vals = { got[k]:match(pat) }
          if #vals == 0 then
            why = string.format("line %d is\n  %s\nthe README shows\n  %s", k, got[k], w)
            break
          end
          for c, name in ipairs(caps) do abbrev[name] = vals[c] end
        end
      end
      if why and now() < deadline then os.execute("sleep 0.5") end
    until not why or now() >= deadline
    if why then
      print(string.format("FAIL   %d: %s\n%s", n, step.cmd, why))
      print("  its output:")
      for _, l in ipairs(got) do print("    " .. l) end
      local e = io.open(work .. "/doctest.err")
      if e then print("  its stderr: " .. e:read("a")) e:close() end
      os.exit(1)
    end
    print(string.format("ok     %d: %s", n, step.cmd))
  end
  ::continue::
end
print(string.format("PASS: %d commands of '%s' as the README shows them", #steps, section))
