-- broker.lua -- an example on_publish hook for the broker module
-- (broker.lua.script: scripts/broker.lua). on_publish(topic, body) runs for
-- every message published, before it is queued, and may return:
--   false           drop the message (the producer still gets OK)
--   body            a new body
--   topic, body     publish the body to another topic instead
--   nothing / true  let it pass unchanged
-- A hook that fails lets the message pass (the error is logged).
-- Other functions: ternd.broker.publish(topic, body [, defer_ms]) and
-- ternd.broker.depth(topic); see ternd-lua(7).

-- Topic "events" carries JSON objects with a "type": route each to
-- "events.<type>" so consumers subscribe to the kinds they want.
local function route_event(body)
  local ok, ev = pcall(ternd.json.decode, body)
  if not ok or type(ev) ~= "table" or type(ev.type) ~= "string"
     or not ev.type:match("^[%w_%-]+$") or #ev.type > 50 then
    return "events.invalid", body
  end
  return "events." .. ev.type, body
end

-- Producers may ask for an audit copy of a message by prefixing it "audit:".
local function audit(topic, body)
  local rest = body:match("^audit:(.*)$")
  if rest then
    ternd.broker.publish("audit", topic .. " " .. rest)
    return rest
  end
  return nil
end

function on_publish(topic, body)
  if body == "" then
    return false
  end
  if topic == "events" then
    return route_event(body)
  end
  return audit(topic, body)
end
