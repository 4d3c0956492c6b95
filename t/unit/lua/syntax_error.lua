-- syntax_error.lua -- for test_lua: line 3 does not parse.
local ok = 1
local x = = 2
