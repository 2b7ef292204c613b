// A real OpenID Provider (oidc-provider 9) for the identity tests: OIDC discovery, JWKS, and
// signed JWT access tokens by client-credentials for the gateway's audience. The signing keys
// come from a JWK set file the test writes (so it can also sign deliberately bad tokens with
// the provider's own key).
//
// With OIDC_TLS_CERT and OIDC_TLS_KEY (PEM files) it serves HTTPS, its issuer https://….
//
// usage: [OIDC_CC_TTL=SECONDS] [OIDC_GATEWAY_JWKS=JSON] [OIDC_TLS_CERT=PEM OIDC_TLS_KEY=PEM] node oidc.mjs PORT JWKS_FILE AUDIENCE
import fs from "node:fs";
import https from "node:https";
import Provider from "oidc-provider";

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
const clients = Object.keys(who).map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ["client_credentials"],
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
      getResourceServerInfo: () => ({ scope: "mcp", audience, accessTokenFormat: "jwt", jwt: { sign: { alg: "RS256" } } }),
    },
  },
  extraTokenClaims: async (_ctx, token) => who[token.clientId] ?? {},
});
const ready = () => console.log(`oidc ready ${issuer}`);
if (tls) {
  https.createServer(tls, provider.callback()).listen(Number(port), "127.0.0.1", ready);
} else {
  provider.listen(Number(port), "127.0.0.1", ready);
}
