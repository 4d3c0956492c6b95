-- route.lua -- an example gateway script (gateway.lua.script): a small chat
-- with login, rooms and private messages handled in Lua, and every route
-- from 1000 up forwarded to the `game` node service (gateway.nodes.game,
-- see scripts/gateway/example_node.py and modules/gateway/NODE.md).
--
-- Routes (data is text):
--   1  login   "NAME"          bind the session to uid NAME
--   2  join    "ROOM"          join a room (a gateway group)
--   3  say     "ROOM:TEXT"     every member of ROOM gets "NAME: TEXT" (route 3)
--   4  tell    "NAME:TEXT"     the user NAME gets "ME: TEXT" (route 4)
--   5  who                     how many sessions are connected
--   >= 1000                    handled by a game node

local LOGIN, JOIN, SAY, TELL, WHO = 1, 2, 3, 4, 5

function on_connect(session)
    ternd.log("debug", "connect " .. session.id .. " from " .. session.addr)
end

local function name_of(session)
    return session.uid or ("guest" .. session.id)
end

function on_packet(session, route, seq, data)
    if route >= 1000 then
        return "game" -- forward to a node of the `game` service
    end
    if route == LOGIN then
        if #data == 0 then
            return session:reply("name required")
        end
        session:bind(data)
        session:reply("welcome " .. data)
    elseif route == JOIN then
        ternd.gateway.join(data, session)
        session:set("room", data)
        session:reply("joined " .. data)
    elseif route == SAY then
        local room, text = data:match("^([^:]+):(.*)$")
        if not room then
            return session:reply("usage: ROOM:TEXT")
        end
        local n = ternd.gateway.multicast(room, SAY, name_of(session) .. ": " .. text)
        session:reply("sent to " .. n)
    elseif route == TELL then
        local to, text = data:match("^([^:]+):(.*)$")
        local ok = to and ternd.gateway.push(to, TELL, name_of(session) .. ": " .. text)
        session:reply(ok and "delivered" or "no such user")
    elseif route == WHO then
        session:reply(tostring(ternd.gateway.count()))
    else
        session:reply("unknown route " .. route)
    end
end

function on_disconnect(session)
    ternd.log("debug", "disconnect " .. session.id .. " (" .. name_of(session) .. ")")
end
