-- The script the gateway tests run: one route per feature.
function on_connect(s)
    s:set("n", 0)
end

function on_packet(s, route, seq, data)
    if route == 1 then
        s:reply("echo:" .. data)
    elseif route == 2 then
        s:bind(data)
        s:reply("bound:" .. tostring(s.uid))
    elseif route == 3 then
        ternd.gateway.join(data, s)
        s:reply("joined")
    elseif route == 4 then
        s:reply("sent:" .. ternd.gateway.multicast(data, 40, "to-" .. data))
    elseif route == 5 then
        s:reply("sent:" .. ternd.gateway.broadcast(50, data))
    elseif route == 6 then
        local uid, msg = data:match("([^:]*):(.*)")
        s:reply("pushed:" .. tostring(ternd.gateway.push(uid, 60, msg)))
    elseif route == 7 then
        s:set("n", s:get("n") + 1)
        s:reply("n=" .. s:get("n"))
    elseif route == 8 then
        error("boom")
    elseif route == 9 then
        s:reply("bye")
        s:close()
    elseif route == 10 then
        s:reply("count=" .. ternd.gateway.count())
    elseif route == 11 then
        return data
    elseif route == 12 then
        ternd.gateway.leave(data, s)
        s:reply("left")
    elseif route == 13 then
        s:unbind()
        s:reply("uid=" .. tostring(s.uid))
    elseif route == 14 then
        s:reply("id=" .. s.id .. " addr=" .. s.addr)
    end
end

function on_disconnect(s)
    ternd.log("info", "gone " .. s.id .. " n=" .. tostring(s:get("n")))
end
