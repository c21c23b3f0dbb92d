-- wrk script: an empty POST to one path, summary as JSON. args: <path>
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")
local path = "/"

function init(args)
  path = args[1]
end

function request()
  return wrk.format("POST", path)
end
