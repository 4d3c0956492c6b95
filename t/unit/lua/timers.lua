-- timers.lua -- for test_lua: a one-shot timer whose handle is dropped, a
-- repeating one that cancels itself after three runs, one cancelled before
-- it fires, and one whose callback fails.
fired = {once = 0, rep = 0, cancelled = 0, failing = 0}

ternd.timer(0.01, function() fired.once = fired.once + 1 end)
once = ternd.timer(0, function() end)

local rep
rep = ternd.timer(0.005, function()
    fired.rep = fired.rep + 1
    if fired.rep == 3 then
        rep_cancel_result = rep:cancel()
        rep_active_after = rep:active()
    end
end, 0.005)

local c = ternd.timer(0.01, function() fired.cancelled = fired.cancelled + 1 end)
cancel_active_before = c:active()
cancel_result = c:cancel()
cancel_again = c:cancel()

ternd.timer(0.01, function()
    fired.failing = fired.failing + 1
    error("timer failed on purpose")
end)
