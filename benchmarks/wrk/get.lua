-- wrk script: one GET (path and optional bearer token from args), summary as JSON.
-- args: <path> [token]
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")
local path, headers = "/", {}

function init(args)
  path = args[1]
  if args[2] then headers["Authorization"] = "Bearer " .. args[2] end
end

function request()
  return wrk.format("GET", path, headers)
end
