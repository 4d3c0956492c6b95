-- load_error.lua -- for test_lua: starts a timer, then fails at line 3.
ternd.timer(0, function() ternd.test_bump() end)
error("broken at load")
