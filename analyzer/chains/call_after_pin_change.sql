-- id: call-after-pin-change
-- severity: high
-- summary: a tool was called after its description changed (possible rug pull)
--
-- A `pin_change` event saying a tool's definition changed on a route, then a call to that tool
-- on that route. One alert per change. Near misses: the call came before the change; the other
-- pin changes (a tool added, removed, colliding, shadowed, a change accepted).
WITH changes AS (
  SELECT id, ts, route, pin['tool'] AS tool, pin['change'] AS change FROM events WHERE kind = 'pin_change' AND pin['change'] = 'changed'
),
calls AS (
  SELECT id, ts, route, tool, session, identity['subject'] AS subject FROM events
  WHERE kind = 'request' AND method = 'tools/call'
),
hits AS (
  SELECT c.session, c.subject, c.ts, make_array(p.id, c.id) AS evidence,
         row_number() OVER (PARTITION BY p.id ORDER BY c.ts) AS n
  FROM changes p JOIN calls c ON c.route = p.route AND c.tool = p.tool AND c.ts > p.ts
)
SELECT session, subject, ts, evidence FROM hits WHERE n = 1
