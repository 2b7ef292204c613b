-- id: probing
-- severity: medium
-- summary: repeated refused calls to one tool with different arguments (probing the policy)
--
-- Three or more calls to the same tool in a session that the gateway refused (policy deny,
-- rate limit, content block), each with different arguments, within 5 minutes of the first.
-- Near misses: the same arguments retried (a client retry loop), or two attempts only.
-- One alert per session and tool (`incident`), however many attempts follow.
WITH refused AS (
  SELECT d.event_id, d.ts, d.session, d.subject, d.tool, q.payload AS args
  FROM decisions d
  JOIN events q ON q.session = d.session AND q.rpc_id = d.rpc_id AND q.kind = 'request' AND q.direction = 'request'
  WHERE d.direction = 'request' AND d.action IN ('deny', 'refuse', 'rate_limited')
),
firsts AS (
  SELECT session, tool, min(ts) AS t0 FROM refused GROUP BY session, tool
)
SELECT r.session, max(r.subject) AS subject, max(r.ts) AS ts, array_agg(r.event_id ORDER BY r.ts) AS evidence,
       r.session || '/' || r.tool AS incident
FROM refused r JOIN firsts f ON f.session = r.session AND f.tool = r.tool
WHERE r.ts <= f.t0 + INTERVAL '5 minutes'
GROUP BY r.session, r.tool
HAVING count(DISTINCT r.args) >= 3
