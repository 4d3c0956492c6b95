-- basic.lua -- functions test_lua calls; the line numbers of the error()
-- calls below are asserted by the tests, keep them where they are.
greeting = "hello"

function fail()
    error("failing on purpose")        -- line 6
end

function add(a, b)
    return a + b
end

function three()
    return 1, "two", 3.0
end

function bump_twice()
    ternd.test_bump()
    ternd.test_bump()
end
