// A real OAuth provider (npm oidc-provider) playing a third-party API whose accounts people connect to the
// authorization server (issue 18 part 2): refresh tokens, revocation (RFC 7009) and a userinfo endpoint.
// Usage: node oidc-third-party.mjs PORT REDIRECT_URI ACCESS_TOKEN_TTL_SECS ROTATE(true|false)
// Accounts: any login name, any password (oidc-provider's development interactions); `sub` is the login name.
import { pathToFileURL } from 'node:url';

const [port, redirectUri, accessTtl, rotate] = process.argv.slice(2);
const modules = process.env.MCP_AUTHZ_OIDC_PROVIDER_MODULES;
if (!modules) throw new Error('MCP_AUTHZ_OIDC_PROVIDER_MODULES is not set: source tests/setup/40-node.sh');
const { default: Provider } = await import(pathToFileURL(`${modules}/oidc-provider/lib/index.js`).href);

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'mcp-authz-connect',
    client_secret: 'third-party-secret-0123456789abcdef',
    redirect_uris: redirectUri.split(','),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  scopes: ['openid', 'api:read'],
  pkce: { required: () => true },
  features: { revocation: { enabled: true }, userinfo: { enabled: true } },
  // Every code grant gets a refresh token (a third-party API's usual "offline" access).
  issueRefreshToken: async () => true,
  rotateRefreshToken: rotate === 'true',
  ttl: { AccessToken: Number(accessTtl), RefreshToken: 3600, Grant: 3600, Session: 3600, Interaction: 600 },
  cookies: { keys: ['third-party-cookie-key-0123456789'] },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id }; } };
  },
});
provider.listen(Number(port), '127.0.0.1', () => console.log('ready'));
