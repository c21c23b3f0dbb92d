"""zpay as an MCP server: the six tools an agent needs, never more.

`zpay mcp` serves them over stdio for a desktop MCP client (env `ZPAY_URL`,
`ZPAY_AGENT_TOKEN`; `zpay.mcp.stdio`); `zpay serve` also mounts them over streamable
HTTP at `/mcp`, where each request carries the agent's own bearer token
(`zpay.mcp.http`). Either way the tools (`zpay.mcp.tools`) act as that agent through
the zpay API, so every check the API makes applies to them. See docs/mcp.md.
"""
