// A real OpenID Provider (oidc-provider 9) for the identity tests: OIDC discovery, JWKS, and
// signed JWT access tokens by client-credentials for the gateway's audience. The signing keys
// come from a JWK set file the test writes (so it can also sign deliberately bad tokens with
// the provider's own key).
//
// With OIDC_TLS_CERT and OIDC_TLS_KEY (PEM files) it serves HTTPS, its issuer https://….
//
// Token exchange (RFC 8693) for the client "sluice-gateway": a caller's access token from
// this provider (subject_token) becomes one for the `audience` asked for, naming the same
// subject, with the gateway as actor (`act`); lifetime OIDC_TE_TTL seconds (default 600).
// Callers in the group "interns" are refused (invalid_grant). Each exchange is logged
// ("token exchange for SUB to AUD").
//
// usage: [OIDC_CC_TTL=SECONDS] [OIDC_TE_TTL=SECONDS] [OIDC_GATEWAY_JWKS=JSON] [OIDC_TLS_CERT=PEM OIDC_TLS_KEY=PEM] node oidc.mjs PORT JWKS_FILE AUDIENCE
import fs from "node:fs";
import https from "node:https";
import Provider from "oidc-provider";
import { SignJWT, createLocalJWKSet, importJWK, jwtVerify } from "jose";

const [port, jwksFile, audience] = process.argv.slice(2);
const tls = process.env.OIDC_TLS_CERT && { cert: fs.readFileSync(process.env.OIDC_TLS_CERT), key: fs.readFileSync(process.env.OIDC_TLS_KEY) };
const issuer = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
// client id → the groups and agent type its tokens carry.
const who = {
  "support-agent": { groups: ["support", "readers"], agent_type: "assistant" },
  "intern-agent": { groups: ["interns"], agent_type: "assistant" },
  // A human reviewer's client (approvals): member of the approver group.
  "finance-reviewer": { groups: ["finance"], agent_type: "human" },
  // The gateway itself, asking for a token to an upstream (credential kind oauth_client_credentials).
  "sluice-gateway": { groups: ["gateways"], agent_type: "gateway" },
};
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const OPAQUE_RESOURCE = "urn:sluice:test:opaque";
const ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token";
const clients = Object.keys(who).map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: id === "sluice-gateway" ? ["client_credentials", TOKEN_EXCHANGE] : ["client_credentials"],
  redirect_uris: [],
  response_types: [],
  scope: "mcp",
}));
// The gateway as a client without a shared secret (private_key_jwt): the provider holds only
// its public key (OIDC_GATEWAY_JWKS, the JWK set `sluice jwks` prints).
if (process.env.OIDC_GATEWAY_JWKS) {
  who["sluice-gateway-pkjwt"] = { groups: ["gateways"], agent_type: "gateway" };
  clients.push({
    client_id: "sluice-gateway-pkjwt",
    token_endpoint_auth_method: "private_key_jwt",
    token_endpoint_auth_signing_alg: "EdDSA",
    jwks: JSON.parse(process.env.OIDC_GATEWAY_JWKS),
    grant_types: ["client_credentials"],
    redirect_uris: [],
    response_types: [],
    scope: "mcp",
  });
}
const provider = new Provider(issuer, {
  clients,
  jwks: JSON.parse(fs.readFileSync(jwksFile, "utf8")),
  scopes: ["mcp"],
  // Client-credentials token lifetime in seconds (OIDC_CC_TTL; the tests of token renewal make it short).
  ttl: { ClientCredentials: Number(process.env.OIDC_CC_TTL || 600) },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      // `resource = OPAQUE_RESOURCE`: an opaque access token for the same audience, which only
      // introspection can read.
      getResourceServerInfo: (_ctx, resource) =>
        resource === OPAQUE_RESOURCE
          ? { scope: "mcp", audience, accessTokenFormat: "opaque" }
          : { scope: "mcp", audience, accessTokenFormat: "jwt", jwt: { sign: { alg: "RS256" } } },
    },
    // Token introspection (RFC 7662) for the gateway's client, of any token.
    introspection: { enabled: true, allowedPolicy: (_ctx, client) => client.clientId === "sluice-gateway" },
  },
  extraTokenClaims: async (_ctx, token) => who[token.clientId] ?? {},
});
const keys = JSON.parse(fs.readFileSync(jwksFile, "utf8")).keys;
const publicKeys = createLocalJWKSet({ keys: keys.map(({ d, p, q, dp, dq, qi, key_ops, ...pub }) => pub) });
const signing = keys.find((k) => k.kty === "RSA" && k.d);
provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    const { subject_token, subject_token_type, audience: wanted, scope } = ctx.oidc.params;
    // RFC 6749 §5.2 errors with their description (oidc-provider's own keep it generic).
    const refuse = (error, why) => {
      console.log(`token exchange refused: ${why}`);
      ctx.status = 400;
      ctx.body = { error, error_description: why };
    };
    if (!subject_token) return refuse("invalid_request", "subject_token is missing");
    if (subject_token_type !== ACCESS_TOKEN) return refuse("invalid_request", `subject_token_type ${subject_token_type} is not supported`);
    let claims;
    try {
      ({ payload: claims } = await jwtVerify(subject_token, publicKeys, { issuer, audience }));
    } catch (e) {
      return refuse("invalid_grant", `the subject token is not valid: ${e.code || e.message}`);
    }
    if ((claims.groups || []).includes("interns")) return refuse("invalid_grant", "interns may not reach this resource");
    const ttl = Number(process.env.OIDC_TE_TTL || 600);
    const aud = wanted || audience;
    const key = await importJWK(signing, "RS256");
    const token = await new SignJWT({ groups: claims.groups, scope: scope || claims.scope, act: { sub: ctx.oidc.client.clientId } })
      .setProtectedHeader({ alg: "RS256", kid: signing.kid, typ: "at+jwt" })
      .setIssuer(issuer)
      .setSubject(claims.sub)
      .setAudience(aud)
      .setIssuedAt()
      .setExpirationTime(`${ttl}s`)
      .sign(key);
    console.log(`token exchange for ${claims.sub} to ${aud}`);
    ctx.body = { access_token: token, issued_token_type: ACCESS_TOKEN, token_type: "Bearer", expires_in: ttl };
  },
  ["subject_token", "subject_token_type", "requested_token_type", "audience", "resource", "scope", "actor_token", "actor_token_type"],
  [],
);
const ready = () => console.log(`oidc ready ${issuer}`);
if (tls) {
  https.createServer(tls, provider.callback()).listen(Number(port), "127.0.0.1", ready);
} else {
  provider.listen(Number(port), "127.0.0.1", ready);
}
