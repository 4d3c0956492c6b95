-- reload_a.lua -- for test_lua: the first generation of a reloaded state;
-- its repeating timer must stop once the state is replaced.
generation = "a"
ternd.timer(0.005, function() ternd.test_bump() end, 0.005)
