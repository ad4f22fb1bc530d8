-- The REST face: Envoy's Lua filter that makes transcoded REST calls speak the API Development Guide's JSON.
--
-- gateway/restface.py prepends `local RULES = {...}`, made from the proto descriptor set (the RestField options
-- and google.api.field_behavior), so this file holds no knowledge of the API itself: requests are checked
-- against the request message (422 with FastAPI's `detail` list, as the guide's app answers) and their enum
-- words turned into proto names; responses get the guide's names and words; every error body becomes the
-- guide's ErrorResponse. gateway/restface.py has the same transform in Python, and the tests hold them equal.
-- Native gRPC requests are never touched and never buffered.

local NS = RULES.metadata_namespace
local byte, sub, find, char, format, concat = string.byte, string.sub, string.find, string.char, string.format, table.concat
local floor = math.floor

-- JSON ----------------------------------------------------------------------------------------------------
-- Arrays and objects carry a metatable so that an empty one encodes as it came; null is a sentinel.
local ARRAY = { __jsontype = "array" }
local OBJECT = { __jsontype = "object" }
local NULL = setmetatable({}, { __jsontype = "null" })
local MAX_DEPTH = 128

local function fail(pos, msg)
  error({ json_error = true, pos = pos, msg = msg }, 0)
end

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8(cp)
  if cp < 0x80 then
    return char(cp)
  elseif cp < 0x800 then
    return char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
  elseif cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

local function skip(str, pos)
  local _, e = find(str, "^[ \n\r\t]*", pos)
  return e + 1
end

local function decode_string(str, pos)
  local parts, n, i = {}, 0, pos + 1
  while true do
    local s = find(str, '["\\%z\1-\31]', i)
    if not s then
      fail(pos, "Unterminated string")
    end
    if s > i then
      n = n + 1
      parts[n] = sub(str, i, s - 1)
    end
    local c = sub(str, s, s)
    if c == '"' then
      return concat(parts), s + 1
    elseif c == "\\" then
      local esc = sub(str, s + 1, s + 1)
      if esc == "u" then
        local hex = sub(str, s + 2, s + 5)
        if not find(hex, "^%x%x%x%x$") then
          fail(s, "Invalid \\uXXXX escape")
        end
        local cp, after = tonumber(hex, 16), s + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local low = sub(str, s + 6, s + 11)
          if not find(low, "^\\u[dD][c-fC-F]%x%x$") then
            fail(s, "Unpaired surrogate")
          end
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(sub(low, 3), 16) - 0xDC00)
          after = s + 12
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          fail(s, "Unpaired surrogate")
        end
        n = n + 1
        parts[n] = utf8(cp)
        i = after
      else
        local plain = ESCAPES[esc]
        if not plain then
          fail(s, "Invalid \\escape")
        end
        n = n + 1
        parts[n] = plain
        i = s + 2
      end
    else
      fail(s, "Invalid control character")
    end
  end
end

local decode_value

local function decode_array(str, pos, depth)
  local out, n = setmetatable({}, ARRAY), 0
  pos = skip(str, pos + 1)
  if sub(str, pos, pos) == "]" then
    return out, pos + 1
  end
  while true do
    local value
    value, pos = decode_value(str, pos, depth)
    n = n + 1
    out[n] = value
    pos = skip(str, pos)
    local c = sub(str, pos, pos)
    if c == "]" then
      return out, pos + 1
    elseif c ~= "," then
      fail(pos, "Expecting ',' delimiter")
    end
    pos = skip(str, pos + 1)
  end
end

local function decode_object(str, pos, depth)
  local out = setmetatable({}, OBJECT)
  pos = skip(str, pos + 1)
  if sub(str, pos, pos) == "}" then
    return out, pos + 1
  end
  while true do
    if sub(str, pos, pos) ~= '"' then
      fail(pos, "Expecting property name enclosed in double quotes")
    end
    local key
    key, pos = decode_string(str, pos)
    pos = skip(str, pos)
    if sub(str, pos, pos) ~= ":" then
      fail(pos, "Expecting ':' delimiter")
    end
    local value
    value, pos = decode_value(str, skip(str, pos + 1), depth)
    out[key] = value
    pos = skip(str, pos)
    local c = sub(str, pos, pos)
    if c == "}" then
      return out, pos + 1
    elseif c ~= "," then
      fail(pos, "Expecting ',' delimiter")
    end
    pos = skip(str, pos + 1)
  end
end

decode_value = function(str, pos, depth)
  if depth > MAX_DEPTH then
    fail(pos, "Nesting too deep")
  end
  local c = sub(str, pos, pos)
  if c == "{" then
    return decode_object(str, pos, depth + 1)
  elseif c == "[" then
    return decode_array(str, pos, depth + 1)
  elseif c == '"' then
    return decode_string(str, pos)
  elseif sub(str, pos, pos + 3) == "true" then
    return true, pos + 4
  elseif sub(str, pos, pos + 4) == "false" then
    return false, pos + 5
  elseif sub(str, pos, pos + 3) == "null" then
    return NULL, pos + 4
  end
  local s, e = find(str, "^-?%d+", pos)
  if not s or (sub(str, pos, pos + 1) == "-0" and find(str, "^%d", pos + 2)) or find(str, "^0%d", pos) then
    fail(pos, "Expecting value")
  end
  local _, frac = find(str, "^%.%d+", e + 1)
  e = frac or e
  local _, exp = find(str, "^[eE][-+]?%d+", e + 1)
  e = exp or e
  local number = tonumber(sub(str, s, e))
  if number == math.huge or number == -math.huge then
    fail(pos, "Number out of range") -- protobuf's JSON has no infinity; null would lose it silently
  end
  return number, e + 1
end

local function decode(str)
  local pos = skip(str, 1)
  if pos > #str then
    fail(pos, "Expecting value")
  end
  local value
  value, pos = decode_value(str, pos, 0)
  pos = skip(str, pos)
  if pos <= #str then
    fail(pos, "Extra data")
  end
  return value
end

local ENCODE_ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t" }

local function encode_string(s)
  return '"' .. (s:gsub('[%z\1-\31"\\]', function(c)
    return ENCODE_ESCAPES[c] or format("\\u%04x", byte(c))
  end)) .. '"'
end

local function encode_number(v)
  if v ~= v or v == math.huge or v == -math.huge then
    return "null"
  end
  if v == floor(v) and v >= -9007199254740992 and v <= 9007199254740992 then
    return format("%.0f", v)
  end
  local s = format("%.14g", v)
  if tonumber(s) ~= v then
    s = format("%.17g", v)
  end
  return s
end

local function is_array(t)
  local mt = getmetatable(t)
  if mt == ARRAY then
    return true
  elseif mt == OBJECT then
    return false
  end
  return t[1] ~= nil
end

local function encode(v, out)
  local kind = type(v)
  if kind == "string" then
    out[#out + 1] = encode_string(v)
  elseif kind == "number" then
    out[#out + 1] = encode_number(v)
  elseif kind == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == NULL then
    out[#out + 1] = "null"
  elseif kind == "table" then
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then
          out[#out + 1] = ","
        end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      -- Sorted keys: the same value always gives the same bytes.
      local keys = {}
      for k in pairs(v) do
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then
          out[#out + 1] = ","
        end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  else
    out[#out + 1] = "null"
  end
  return out
end

local function encode_json(v)
  return concat(encode(v, {}))
end

-- The REST face -------------------------------------------------------------------------------------------

local function object()
  return setmetatable({}, OBJECT)
end

local function array()
  return setmetatable({}, ARRAY)
end

local function word(prefix, value)
  if type(value) == "string" and sub(value, 1, #prefix) == prefix then
    return string.lower(sub(value, #prefix + 1))
  end
  return value
end

local to_rest

local function convert_value(rule, value)
  if rule.enum then
    if type(value) == "table" and is_array(value) then
      local out = array()
      for i = 1, #value do
        out[i] = word(rule.enum, value[i])
      end
      return out
    end
    return word(rule.enum, value)
  elseif rule.message then
    if type(value) == "table" and is_array(value) then
      local out = array()
      for i = 1, #value do
        out[i] = to_rest(rule.message, value[i])
      end
      return out
    end
    return to_rest(rule.message, value)
  end
  return value
end

to_rest = function(name, obj)
  local rules = RULES.responses[name]
  if rules == nil or type(obj) ~= "table" or is_array(obj) or obj == NULL then
    return obj
  end
  local out, inlined = object(), {}
  for key, value in pairs(obj) do
    local rule = rules[key]
    if rule == nil then
      if out[key] == nil then
        out[key] = value
      end
    elseif not rule.hidden then
      if rule.constant then
        value = rule.constant
      else
        value = convert_value(rule, value)
      end
      if rule.inline then
        inlined[#inlined + 1] = value
      else
        out[rule.name or key] = value
      end
    end
  end
  for _, inner in ipairs(inlined) do
    if type(inner) == "table" and not is_array(inner) then
      for key, value in pairs(inner) do
        if out[key] == nil then
          out[key] = value
        end
      end
    end
  end
  return out
end

-- FastAPI's request validation errors (pydantic 2's wording), for the guide's clients.
local function problem(kind, loc, msg, input, ctx)
  local p = object()
  p.type, p.loc, p.msg = kind, setmetatable(loc, ARRAY), msg
  p.input = input == nil and NULL or input
  if ctx then
    p.ctx = ctx
  end
  return p
end

local CHECKS = {
  string = function(v)
    return type(v) == "string", "string_type", "Input should be a valid string"
  end,
  object = function(v)
    return type(v) == "table" and v ~= NULL and not is_array(v), "dict_type", "Input should be a valid dictionary"
  end,
  array = function(v)
    return type(v) == "table" and v ~= NULL and is_array(v), "list_type", "Input should be a valid list"
  end,
  boolean = function(v)
    return type(v) == "boolean", "bool_type", "Input should be a valid boolean"
  end,
  integer = function(v)
    local ok = (type(v) == "number" and v == floor(v)) or (type(v) == "string" and find(v, "^-?%d+$") ~= nil)
    return ok, "int_type", "Input should be a valid integer"
  end,
  number = function(v)
    return type(v) == "number", "float_type", "Input should be a valid number"
  end,
  any = function()
    return true
  end,
}

-- Checks one request field and returns its proto JSON value, or nil after adding a problem.
local function from_rest_value(rule, value, loc, problems)
  if rule.kind == "enum" then
    if type(value) ~= "string" then
      problems[#problems + 1] = problem("string_type", loc, "Input should be a valid string", value)
      return nil
    end
    local proto = rule.words[value]
    if proto == nil then
      local ctx = object()
      ctx.pattern = rule.pattern
      problems[#problems + 1] =
        problem("string_pattern_mismatch", loc, "String should match pattern '" .. rule.pattern .. "'", value, ctx)
    end
    return proto
  end
  local ok, kind, msg = CHECKS[rule.kind](value)
  if not ok then
    problems[#problems + 1] = problem(kind, loc, msg, value)
    return nil
  end
  return value
end

-- The request message `name` from REST JSON: FastAPI-style problems, or the body the transcoder reads.
local function from_rest(name, body)
  local rules = RULES.requests[name]
  if type(body) ~= "table" or body == NULL or is_array(body) then
    return nil, { problem("model_attributes_type", { "body" },
      "Input should be a valid dictionary or object to extract fields from", body) }
  end
  local out, problems = object(), {}
  local known = {}
  for field, rule in pairs(rules) do
    local key = rule.name or field
    known[key] = true
    local value = body[key]
    if value == nil or value == NULL then
      if rule.required then
        problems[#problems + 1] = problem("missing", { "body", key }, "Field required", body)
      end
    elseif rule.repeated then
      if type(value) ~= "table" or not is_array(value) then
        problems[#problems + 1] = problem("list_type", { "body", key }, "Input should be a valid list", value)
      else
        local list = array()
        for i = 1, #value do
          list[i] = from_rest_value(rule, value[i], { "body", key, i - 1 }, problems)
        end
        out[field] = list
      end
    else
      out[field] = from_rest_value(rule, value, { "body", key }, problems)
    end
  end
  -- Keys the model does not name are ignored, as pydantic's default does (the transcoder ignores them too).
  if #problems > 0 then
    table.sort(problems, function(a, b)
      return encode_json(a.loc) < encode_json(b.loc)
    end)
    return nil, problems
  end
  return out, nil
end

local function unescape(s)
  return (s:gsub("%+", " "):gsub("%%(%x%x)", function(h)
    return char(tonumber(h, 16))
  end))
end

local function escape(s)
  return (s:gsub("[^%w%-._~]", function(c)
    return format("%%%02X", byte(c))
  end))
end

-- Query parameters take the REST names and words; anything else passes for the transcoder to judge. Returns
-- the proto query, or nil and a field violation for a word the enum does not have.
local function query_to_proto(name, query)
  local rules = RULES.requests[name] or {}
  local by_key = {}
  for field, rule in pairs(rules) do
    by_key[rule.name or field] = { field = field, rule = rule }
  end
  local parts = {}
  for pair in string.gmatch(query, "[^&]+") do
    local eq = find(pair, "=", 1, true)
    local key = eq and sub(pair, 1, eq - 1) or pair
    local entry = by_key[unescape(key)]
    if entry ~= nil and eq then
      local value = unescape(sub(pair, eq + 1))
      if entry.rule.kind == "enum" then
        local proto = entry.rule.words[value]
        if proto == nil then
          local words = {}
          for w in pairs(entry.rule.words) do
            words[#words + 1] = w
          end
          table.sort(words)
          local v = object()
          v.field = unescape(key)
          v.description = "must be one of " .. concat(words, ", ") .. ", not '" .. value .. "'"
          return nil, v
        end
        value = proto
      elseif entry.rule.kind == "integer" and not find(value, "^-?%d+$") then
        local v = object()
        v.field = unescape(key)
        v.description = "must be an integer, not '" .. value .. "'"
        return nil, v
      end
      pair = escape(entry.field) .. "=" .. escape(value)
    elseif entry ~= nil then
      pair = escape(entry.field)
    end
    parts[#parts + 1] = pair
  end
  return concat(parts, "&"), nil
end

local function match_route(method, path)
  for _, route in ipairs(RULES.routes) do
    if route.method == method and find(path, route.pattern) then
      return route
    end
  end
  return nil
end

-- Stable machine codes for gRPC codes without an ErrorInfo, and for HTTP statuses of Envoy's own replies.
local GRPC_CODES = { [1] = "CANCELLED", [2] = "UNKNOWN", [3] = "INVALID_ARGUMENT", [4] = "DEADLINE_EXCEEDED",
  [5] = "NOT_FOUND", [6] = "ALREADY_EXISTS", [7] = "PERMISSION_DENIED", [8] = "RESOURCE_EXHAUSTED",
  [9] = "FAILED_PRECONDITION", [10] = "ABORTED", [11] = "OUT_OF_RANGE", [12] = "UNIMPLEMENTED", [13] = "INTERNAL",
  [14] = "UNAVAILABLE", [15] = "DATA_LOSS", [16] = "UNAUTHENTICATED" }

local function now_iso(handle)
  local ok, ms = pcall(handle.timestamp, handle)
  if not ok or type(ms) ~= "number" then
    return os.date("!%Y-%m-%dT%H:%M:%SZ")
  end
  return os.date("!%Y-%m-%dT%H:%M:%S", floor(ms / 1000)) .. format(".%03dZ", ms % 1000)
end

local function error_body(handle, status, message, error_code, details, request_id)
  local body = object()
  body.error = error_code or RULES.http_errors[tostring(status)] or "ERROR"
  body.message = message
  body.detail = message
  body.details = details or object()
  body.timestamp = now_iso(handle)
  body.request_id = request_id or NULL
  return body
end

local function seconds_of(duration)
  local n = type(duration) == "string" and tonumber((duration:gsub("s$", ""))) or nil
  return n
end

-- google.rpc.Status JSON (the transcoder's) -> the guide's ErrorResponse; Retry-After from RetryInfo.
local function guide_error(handle, status, parsed, request_id)
  local message = type(parsed.message) == "string" and parsed.message or ""
  local code, details = GRPC_CODES[parsed.code], object()
  local retry
  if type(parsed.details) == "table" and is_array(parsed.details) then
    for _, d in ipairs(parsed.details) do
      local kind = type(d) == "table" and d["@type"] or ""
      if kind == "type.googleapis.com/google.rpc.ErrorInfo" then
        code = d.reason or code
        if type(d.metadata) == "table" then
          for k, v in pairs(d.metadata) do
            details[k] = v
          end
        end
      elseif kind == "type.googleapis.com/google.rpc.BadRequest" then
        details.field_violations = d.field_violations or array()
      elseif kind == "type.googleapis.com/google.rpc.RetryInfo" then
        retry = seconds_of(d.retry_delay)
        details.retry_after_seconds = retry
      elseif kind == "type.googleapis.com/google.rpc.RequestInfo" then
        if type(d.request_id) == "string" and d.request_id ~= "" then
          request_id = d.request_id
        end
      end
    end
  end
  return error_body(handle, status, message, code, details, request_id), retry
end

-- This filter's own replies: marked in the stream's metadata (which no client can set), so that
-- local_reply_config, which would wrap any local reply's body, leaves them as they are (gateway/config.py).
local function respond(handle, status, reply)
  handle:streamInfo():dynamicMetadata():set(NS, "own_reply", true)
  handle:respond({ [":status"] = tostring(status), ["content-type"] = "application/json" }, encode_json(reply))
end

local function replace_body(handle, headers, body, text)
  body:setBytes(text)
  if headers:get("content-length") ~= nil then
    headers:replace("content-length", tostring(#text))
  end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  -- A native gRPC call is not ours, and is never buffered. What Envoy counts as gRPC: application/grpc, or
  -- application/grpc+<codec> (grpc-web and the like go through the transcoder, so through here too).
  if content_type == "application/grpc" or sub(content_type, 1, 17) == "application/grpc+"
    or sub(content_type, 1, 17) == "application/grpc;" then
    return
  end
  local meta = handle:streamInfo():dynamicMetadata()
  local path = headers:get(":path") or ""
  local q = find(path, "?", 1, true)
  local bare = q and sub(path, 1, q - 1) or path
  -- The transcoder ignores trailing slashes: so does the match, or /execute-workflow/ would skip the checks.
  local route = match_route(headers:get(":method"), (bare:gsub("(.)/+$", "%1")))
  if route == nil then
    meta:set(NS, "rpc", "")
    return
  end
  meta:set(NS, "rpc", route.rpc)
  if route.rpc == "ListWorkflowTypes" then
    meta:set(NS, "if_none_match", headers:get("if-none-match") or "")
  end
  if q then
    local query, violation = query_to_proto(route.request, sub(path, q + 1))
    if query == nil then
      local details = object()
      details.field_violations = setmetatable({ violation }, ARRAY)
      local reply = error_body(handle, 400, violation.field .. ": " .. violation.description, "INVALID_ARGUMENT",
        details, headers:get("x-request-id"))
      respond(handle, 400, reply)
      return
    end
    headers:replace(":path", bare .. "?" .. query)
  end
  if not route.body then
    return
  end
  local body = handle:body()
  -- body() waits for the whole body; header handles taken before it are no longer valid after it.
  headers = handle:headers()
  local text = body and body:getBytes(0, body:length()) or ""
  local problems, converted
  if find(text, "^[ \n\r\t]*$") then
    problems = { problem("missing", { "body" }, "Field required", NULL) }
  else
    local ok, parsed = pcall(decode, text)
    if not ok then
      if type(parsed) ~= "table" or not parsed.json_error then
        error(parsed)
      end
      local ctx = object()
      ctx.error = parsed.msg
      problems = { problem("json_invalid", { "body", parsed.pos - 1 }, "JSON decode error", object(), ctx) }
    else
      converted, problems = from_rest(route.request, parsed)
    end
  end
  if problems then
    local violations = array()
    for i, p in ipairs(problems) do
      local v = object()
      local names = {}
      for j = 2, #p.loc do
        names[#names + 1] = tostring(p.loc[j])
      end
      -- A JSON syntax error's loc holds a character position, not a field.
      v.field = (#names > 0 and p.type ~= "json_invalid") and concat(names, ".") or "body"
      v.description = p.msg
      violations[i] = v
    end
    local details = object()
    details.field_violations = violations
    local reply = error_body(handle, 422, "The request body does not match the request model", "VALIDATION_ERROR",
      details, headers:get("x-request-id"))
    reply.detail = setmetatable(problems, ARRAY)
    respond(handle, 422, reply)
    return
  end
  body:setBytes(encode_json(converted))
  headers:remove("content-length")
  headers:replace("content-type", "application/json")
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get(NS)
  if meta == nil then
    return -- native gRPC, or a route this filter does not serve
  end
  local headers = handle:headers()
  local status = tonumber(headers:get(":status")) or 0
  local content_type = headers:get("content-type") or ""
  if status >= 400 then
    local body = handle:body()
    headers = handle:headers() -- body() waits; the earlier handle is no longer valid
    local text = body and body:getBytes(0, body:length()) or ""
    local ok, parsed = pcall(decode, text)
    if ok and type(parsed) == "table" and parsed.error ~= nil and parsed.detail ~= nil then
      return -- already the guide's ErrorResponse (Envoy's own replies, this filter's 422)
    end
    local reply, retry
    local request_id = headers:get("x-request-id")
    if ok and type(parsed) == "table" and not is_array(parsed) and parsed ~= NULL then
      reply, retry = guide_error(handle, status, parsed, request_id)
    else
      reply = error_body(handle, status, text, nil, nil, request_id)
    end
    if retry ~= nil and headers:get("retry-after") == nil then
      headers:add("retry-after", tostring(math.max(1, math.ceil(retry))))
    end
    headers:replace("content-type", "application/json")
    if body then
      replace_body(handle, headers, body, encode_json(reply))
    end
    return
  end
  local rpc = meta.rpc
  if rpc == nil or rpc == "" or status ~= 200 or find(content_type, "application/json", 1, true) == nil then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  headers = handle:headers() -- body() waits; the earlier handle is no longer valid
  local ok, parsed = pcall(decode, body:getBytes(0, body:length()))
  if not ok then
    -- The transcoder always writes valid JSON; should it not, a 500 in the guide's shape beats the raw body.
    headers:replace(":status", "500")
    headers:replace("content-type", "application/json")
    replace_body(handle, headers, body, encode_json(error_body(handle, 500, "internal error", "INTERNAL", nil,
      headers:get("x-request-id"))))
    return
  end
  local response = to_rest(RULES.response_of[rpc], parsed)
  local unhealthy = RULES.unhealthy
  if rpc == unhealthy.rpc and type(parsed) == "table" and parsed[unhealthy.field] == unhealthy.value then
    -- The report stays the body; probes and balancers read the status (gateway/restface.py, UNHEALTHY).
    headers:replace(":status", unhealthy.status)
    headers:replace("cache-control", "no-store")
  end
  if rpc == "ListWorkflowTypes" then
    local etag = headers:get("etag")
    -- private: the reply answers an authenticated request, which a shared cache must not hand to others.
    headers:replace("cache-control", "private, max-age=" .. RULES.types_max_age)
    if etag ~= nil and meta.if_none_match ~= "" then
      for candidate in string.gmatch(meta.if_none_match, "[^,%s]+") do
        if candidate == etag or candidate == "W/" .. etag or candidate == "*" then
          headers:replace(":status", "304")
          headers:remove("content-type")
          replace_body(handle, headers, body, "")
          return
        end
      end
    end
  end
  replace_body(handle, headers, body, encode_json(response))
end
