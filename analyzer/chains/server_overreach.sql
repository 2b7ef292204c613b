-- id: server-overreach
-- severity: high
-- summary: a server keeps asking the agent for what the policy refuses it (sampling, elicitation, roots)
--
-- Requests a server sends the agent are decided by the policy's `from = "server"` rules. Three
-- or more of them refused in one session within 10 minutes of the first — a server pressing
-- for the agent's model (sampling), the user's data or a click on its URL (elicitation), or
-- the client's file roots after being told no — alert once per session (`incident`). Near
-- misses that do not alert: two refusals; server requests the policy allowed; the agent's own
-- calls refused (probing is another rule); refusals spread over more than 10 minutes.
WITH refused AS (
  SELECT event_id, ts, session, subject FROM decisions
  WHERE direction = 'response' AND stage = 'policy' AND action = 'deny'
    AND method IN ('sampling/createMessage', 'elicitation/create', 'roots/list')
),
timed AS (
  SELECT *, min(ts) OVER (PARTITION BY session) AS t0 FROM refused
)
SELECT session, max(subject) AS subject, max(ts) AS ts, array_agg(event_id ORDER BY ts) AS evidence,
       session AS incident
FROM timed
WHERE ts <= t0 + INTERVAL '10 minutes'
GROUP BY session
HAVING count(*) >= 3
