// An OpenID provider for the gateway's OIDC tests: panva/oidc-provider (OpenID Certified), on loopback.
//
//   node tests/oidc/provider.mjs <port> <style>      style: keycloak | auth0
//
// Clients get JWT access tokens with the client credentials grant; the `resource` parameter (RFC 8707
// resource indicators) is the token's audience. Claims are shaped like the named product's:
//   keycloak: azp (the client), realm_access.roles, and a `tenant` claim (a protocol mapper's)
//   auth0:    https://execai.example/tenant, https://execai.example/app, https://execai.example/roles
// POST /__rotate replaces the signing key with a new one (new kid); the JWKS then holds only the new one.
// The test clients (client_id = secret):
//   hr-chatbot       tenant hr, app chatbot, scope "chat embeddings"
//   hr-admin         tenant hr, role gateway-admin
//   short-lived      tenant hr, tokens valid for 1 s
import crypto from "node:crypto";
import http from "node:http";

import Provider from "oidc-provider";

const port = Number(process.argv[2]);
const style = process.argv[3] || "keycloak";
const issuer = `http://127.0.0.1:${port}`;
const NS = "https://execai.example/";

const CLIENTS = {
  "hr-chatbot": { tenant: "hr", app: "chatbot", roles: [] , ttl: 300 },
  "hr-admin": { tenant: "hr", app: "ops", roles: ["gateway-admin"], ttl: 300 },
  "short-lived": { tenant: "hr", app: "chatbot", roles: [], ttl: 1 },
};

function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { ...privateKey.export({ format: "jwk" }), kid: crypto.randomUUID(), alg: "ES256", use: "sig" };
}

function claimsOf(clientId) {
  const c = CLIENTS[clientId];
  if (!c) return {};
  if (style === "auth0") {
    return { [`${NS}tenant`]: c.tenant, [`${NS}app`]: c.app, [`${NS}roles`]: c.roles };
  }
  return { azp: clientId, tenant: c.tenant, realm_access: { roles: c.roles } };
}

function build(keys) {
  const provider = new Provider(issuer, {
    clients: Object.keys(CLIENTS).map((id) => ({
      client_id: id,
      client_secret: id,
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_post",
      id_token_signed_response_alg: "ES256",
    })),
    jwks: { keys },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource, client) => ({
          scope: "chat embeddings",
          audience: resource,
          accessTokenTTL: CLIENTS[client.clientId]?.ttl ?? 300,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg: "ES256" } },
        }),
      },
    },
    extraTokenClaims: async (ctx, token) => claimsOf(token.clientId),
  });
  return provider.callback();
}

let current = build([signingKey()]);

http
  .createServer((req, res) => {
    if (req.method === "POST" && req.url === "/__rotate") {
      current = build([signingKey()]);
      res.writeHead(204).end();
      return;
    }
    current(req, res);
  })
  .listen(port, "127.0.0.1", () => console.log(`ready ${issuer}`));
