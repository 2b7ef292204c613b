-- id: probing
-- severity: medium
-- summary: repeated refused calls to one tool with different arguments (probing the policy)
--
-- Three or more calls to the same tool in a session that the gateway refused (policy deny,
-- rate limit, content block), each with different arguments, within 5 minutes of the first.
-- Near misses: the same arguments retried (a client retry loop), or two attempts only.
-- One alert per session and tool (`incident`), however many attempts follow. The first attempt's
-- time comes from a window over the refused calls (joining them again would compute them twice).
-- A decision names its call's event (`call`): JSON-RPC ids repeat within a session of
-- stateless requests (MCP 2026-07-28), so the id alone would pair it with other calls too.
WITH refused AS (
  SELECT d.event_id, d.ts, d.session, d.subject, d.tool, q.payload AS args
  FROM decisions d
  JOIN events q ON q.session = d.session AND q.rpc_id = d.rpc_id AND (d.call IS NULL OR d.call = q.id)
                AND q.kind = 'request' AND q.direction = 'request'
  WHERE d.direction = 'request' AND d.action IN ('deny', 'refuse', 'rate_limited')
),
timed AS (
  SELECT *, min(ts) OVER (PARTITION BY session, tool) AS t0 FROM refused
)
SELECT session, max(subject) AS subject, max(ts) AS ts, array_agg(event_id ORDER BY ts) AS evidence,
       session || '/' || tool AS incident
FROM timed
WHERE ts <= t0 + INTERVAL '5 minutes'
GROUP BY session, tool
HAVING count(DISTINCT args) >= 3
