// A real OpenID Provider (npm oidc-provider, OpenID-certified) for the authserver's upstream login tests.
// Usage: node oidc-upstream.mjs PORT REDIRECT_URI. Accounts: any login name, any password (oidc-provider's
// development interactions); the subject is the login name and `email` is NAME@example.com.
import { pathToFileURL } from 'node:url';

const [port, redirectUri] = process.argv.slice(2);
const modules = process.env.MCP_AUTHZ_OIDC_PROVIDER_MODULES;
if (!modules) throw new Error('MCP_AUTHZ_OIDC_PROVIDER_MODULES is not set: source tests/setup/40-node.sh');
const { default: Provider } = await import(pathToFileURL(`${modules}/oidc-provider/lib/index.js`).href);

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'mcp-authz',
    client_secret: 'upstream-secret-0123456789',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email'] },
  scopes: ['openid', 'email'],
  pkce: { required: () => true },
  // Scope claims in the ID token itself (the authserver reads no userinfo).
  conformIdTokenClaims: false,
  cookies: { keys: ['test-cookie-key-0123456789'] },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id, email: `${id}@example.com` }; } };
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
