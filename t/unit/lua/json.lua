-- json.lua -- ternd.json checks run by test_lua: round trips and the errors
-- for values JSON cannot hold. Each check() raises on failure.
local json = ternd.json

local function deep_equal(a, b)
    if type(a) ~= type(b) then return false end
    if type(a) ~= "table" then return a == b end
    for k, v in pairs(a) do
        if not deep_equal(v, b[k]) then return false end
    end
    for k in pairs(b) do
        if a[k] == nil then return false end
    end
    return true
end

local function fails_with(pattern, f, ...)
    local ok, err = pcall(f, ...)
    assert(not ok, "expected an error matching " .. pattern)
    assert(string.find(err, pattern, 1, true), "error '" .. tostring(err) ..
           "' does not contain '" .. pattern .. "'")
end

function json_round_trips()
    local v = {
        name = "ternd", list = {1, 2, 3, "four"}, nested = {t = true, f = false},
        n = -5, f = 0.25, pi = math.pi, tiny = 1e-310, big = 9007199254740993, utf8 = "héllo ✓",
        empty_list_in_list = {{1}, {2, {3}}},
    }
    assert(deep_equal(json.decode(json.encode(v)), v), "round trip")
    local d = json.decode('{"a":[1,2,{"b":null}],"c":"x\\u0000y","r":1.5,"i":7}')
    assert(d.a[3].b == json.null, "null sentinel")
    assert(#d.c == 3 and d.c:byte(2) == 0, "NUL inside a string")
    assert(math.type(d.i) == "integer" and math.type(d.r) == "float", "number types")
    assert(json.decode("42") == 42 and json.decode('"s"') == "s", "scalars")
    assert(json.encode(json.decode("[null,1]")) == "[null,1]", "null round trip")
    local sparse = json.decode(json.encode({[1] = "a", [3] = "c"}))
    assert(sparse["1"] == "a" and sparse["3"] == "c", "sparse table becomes an object")
    local shared = {1}
    assert(json.encode({shared, shared}) == "[[1],[1]]", "shared subtable is no cycle")
    return true
end

function json_errors()
    fails_with("cannot encode a function value", json.encode, {f = print})
    local t = {}
    t.self = t
    fails_with("cycle detected", json.encode, t)
    fails_with("cannot encode NaN", json.encode, {0 / 0})
    fails_with("cannot encode an infinite number", json.encode, math.huge)
    fails_with("table key of type boolean", json.encode, {[true] = 1})
    fails_with("not valid UTF-8", json.encode, "\xff\xfe")
    fails_with("json.decode:", json.decode, "{")
    fails_with("json.decode:", json.decode, "[1,]")
    fails_with("bad argument #1", json.decode, nil)
    local deep = {}
    for _ = 1, 1100 do deep = {deep} end
    fails_with("nested too deeply", json.encode, deep)
    return true
end
