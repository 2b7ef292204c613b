-- id: credential-to-network
-- severity: critical
-- summary: a credential or environment was read, then a network-capable tool was called in the same session
--
-- A read is an answer with a secret finding, or a call to a tool whose name reads secrets or
-- the environment (env, secret, credential, vault, keychain, .env); the network call is a
-- tool whose name reaches outside (http, fetch, curl, post, send, webhook, upload, request).
-- Within 30 minutes. Near miss: the network call came first.
WITH reads AS (
  SELECT DISTINCT event_id AS id, ts, session FROM findings WHERE direction = 'response' AND category = 'secret'
  UNION ALL
  SELECT id, ts, session FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(env|secret|credential|vault|keychain|dotenv|password)'
),
net AS (
  SELECT id, ts, session, identity['subject'] AS subject FROM events
  WHERE kind = 'request' AND method = 'tools/call' AND tool ~* '(http|fetch|curl|wget|post|send|webhook|upload|request|browse)'
),
hits AS (
  SELECT n.session, n.subject, n.ts, make_array(r.id, n.id) AS evidence,
         row_number() OVER (PARTITION BY n.session ORDER BY n.ts, r.ts) AS k
  FROM reads r JOIN net n ON n.session = r.session AND n.ts > r.ts AND n.id <> r.id AND n.ts <= r.ts + INTERVAL '30 minutes'
)
SELECT session, subject, ts, evidence FROM hits WHERE k = 1
