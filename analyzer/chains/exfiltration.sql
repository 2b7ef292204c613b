-- id: exfiltration
-- severity: high
-- summary: sensitive data read, then written somewhere, then sent outside, within 10 minutes in one session
--
-- A read is an answer in which detection found personal data or a secret; a write is a call
-- to a tool whose name says it stores data; a send is a call to a tool whose name says it
-- reaches outside. The chain must happen in that order. One alert per session (the first
-- complete chain). Near misses that do not alert: the steps out of order, or more than 10
-- minutes from the read to the send.
WITH reads AS (
  SELECT DISTINCT event_id AS id, ts, session FROM findings
  WHERE direction = 'response' AND category IN ('pii', 'secret')
),
writes AS (
  SELECT id, ts, session FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(write|save|create|put|append|store|upload)'
),
sends AS (
  SELECT id, ts, session, identity['subject'] AS subject FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(send|post|e?mail|http|fetch|webhook|slack|notify|publish|upload)'
),
chains AS (
  SELECT r.session, s.subject, s.ts, make_array(r.id, w.id, s.id) AS evidence,
         row_number() OVER (PARTITION BY r.session ORDER BY s.ts, r.ts, w.ts) AS n
  FROM reads r
  JOIN writes w ON w.session = r.session AND w.ts > r.ts
  JOIN sends s ON s.session = r.session AND s.ts > w.ts AND s.id <> w.id AND s.ts <= r.ts + INTERVAL '10 minutes'
)
SELECT session, subject, ts, evidence FROM chains WHERE n = 1
