-- id: taint-to-http
-- severity: high
-- summary: a value an MCP tool returned to a caller was sent by the same caller to a plain HTTP API within 30 minutes
--
-- Plain HTTP exchanges belong to no MCP session, so `taint` (one session) cannot follow a
-- value into them. This rule follows the caller instead: a keyed fingerprint found in an MCP
-- answer in a session of subject X, then in a request on a plain HTTP route (body, URL or
-- header) by the same subject, after the answer and within 30 minutes. It needs identity: an
-- anonymous caller cannot be followed across channels. One alert per session and value.
-- Near misses: another caller sends it, it was sent before it came back, or more than 30
-- minutes later.
WITH outs AS (
  SELECT event_id AS id, ts, session, subject, fingerprint FROM findings
  WHERE direction = 'response' AND fingerprint IS NOT NULL AND http_method IS NULL AND session IS NOT NULL AND subject <> ''
),
ins AS (
  SELECT event_id AS id, ts, subject, fingerprint FROM findings
  WHERE direction = 'request' AND fingerprint IS NOT NULL AND http_method IS NOT NULL AND subject <> ''
),
hits AS (
  SELECT o.session, i.subject, i.ts, make_array(o.id, i.id) AS evidence,
         row_number() OVER (PARTITION BY o.session, o.fingerprint ORDER BY i.ts, o.ts) AS n
  FROM outs o JOIN ins i
    ON i.subject = o.subject AND i.fingerprint = o.fingerprint
   AND i.ts > o.ts AND i.ts <= o.ts + INTERVAL '30 minutes'
)
SELECT session, subject, ts, evidence FROM hits WHERE n = 1
