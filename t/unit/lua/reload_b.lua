-- reload_b.lua -- for test_lua: the second generation of a reloaded state.
generation = "b"
