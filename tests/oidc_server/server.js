// A real OpenID Connect provider (panva/oidc-provider, pinned in package.json) for coordinator's
// OAuth integration tests. It is configured here, not mocked: authorization code + PKCE (S256
// required for every client), refresh-token rotation, revocation (RFC 7009), userinfo, the device
// authorization grant (RFC 8628) and the `iss` authorization response parameter (RFC 9207).
//
// Login and consent are non-interactive: the interaction route signs in the fixed test account
// and grants what was asked, so an HTTP client that follows redirects plays the user's browser.
// With the extra authorization parameter `test_deny=1` the interaction ends in
// error=access_denied with a description full of HTML metacharacters (escaping tests).
//
// Usage: node server.js  -> listens on 127.0.0.1 on a free port and prints one JSON line
// {"issuer": "...", "port": N} on stdout once ready. Test-only helpers (not OAuth):
//   GET  /test/stats   counts of token requests by grant type, refresh tokens presented twice,
//                      token requests waiting out the delay now (delayed_in_flight)
//   POST /test/reset   zero the counters
//   POST /test/config?token_delay_ms=N   delay every token endpoint request by N ms before the
//        provider sees it; a request whose client hung up during the delay is then dropped
//        unprocessed (counted as dropped_after_hangup), so that a client killed while its
//        request waits here has not used its refresh token
//   POST /test/config?access_token_ttl_s=N   lifetime of the access tokens issued from now on
//        (default ACCESS_TOKEN_TTL_S from the environment, else 3600; /test/reset restores it)
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const ACCOUNT = {
  sub: 'test-user-1',
  email: 'ada@example.test',
  email_verified: true,
  name: 'Ada Lovelace',
};

const stats = {
  token_requests: 0,
  by_grant_type: {},
  refresh_tokens_seen: 0,
  refresh_tokens_reused: 0,
  errors: {},
  delayed_in_flight: 0,
  dropped_after_hangup: 0,
};
let seenRefresh = new Set();
let tokenDelayMs = 0;
const DEFAULT_ACCESS_TOKEN_TTL_S = Number(process.env.ACCESS_TOKEN_TTL_S || 3600);
let accessTokenTtlS = DEFAULT_ACCESS_TOKEN_TTL_S;

function sha(value) {
  return crypto.createHash('sha256').update(String(value)).digest('hex');
}

function record(ctx, outcome) {
  const params = ctx.oidc?.params || {};
  const grantType = params.grant_type || 'unknown';
  stats.token_requests += 1;
  stats.by_grant_type[grantType] = (stats.by_grant_type[grantType] || 0) + 1;
  if (grantType === 'refresh_token' && params.refresh_token) {
    const digest = sha(params.refresh_token);
    if (seenRefresh.has(digest)) stats.refresh_tokens_reused += 1;
    seenRefresh.add(digest);
    stats.refresh_tokens_seen = seenRefresh.size;
  }
  if (outcome) stats.errors[outcome] = (stats.errors[outcome] || 0) + 1;
}

const httpServer = http.createServer();
await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
const { port } = httpServer.address();
const issuer = `http://127.0.0.1:${port}`;

const loopback = ['http://127.0.0.1/callback'];
const webApp = ['http://127.0.0.1:1/app/callback'];

const provider = new Provider(issuer, {
  clients: [
    {
      // A native (command-line) app: public client, loopback redirect on any port (RFC 8252).
      client_id: 'cli-app',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: loopback,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
    {
      // A web app with a client secret sent with HTTP Basic (client_secret_basic).
      client_id: 'web-basic',
      client_secret: 'web-basic-secret-0123456789abcdef',
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: webApp,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
    {
      // The same, with the secret in the form body (client_secret_post).
      client_id: 'web-post',
      client_secret: 'web-post-secret-0123456789abcdef',
      token_endpoint_auth_method: 'client_secret_post',
      redirect_uris: webApp,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
    {
      // A headless device: the device authorization grant (RFC 8628).
      client_id: 'device-app',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: [],
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
    },
  ],
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  pkce: { required: () => true },
  extraParams: ['test_deny'],
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    introspection: { enabled: true },
  },
  rotateRefreshToken: () => true,
  issueRefreshToken: async (_ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  ttl: {
    AccessToken: () => accessTokenTtlS,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 86400,
  },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  findAccount: async (_ctx, sub) => {
    if (sub !== ACCOUNT.sub) return undefined;
    return { accountId: sub, claims: async () => ({ ...ACCOUNT }) };
  },
  interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

provider.on('grant.success', (ctx) => record(ctx, null));
provider.on('grant.error', (ctx, err) => record(ctx, err.error || 'server_error'));

// Non-interactive login and consent for the fixed test account.
async function interaction(ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params } = details;
  let result;
  if (params.test_deny) {
    result = {
      error: 'access_denied',
      error_description: 'The <b>user</b> said no & <script>alert(1)</script> left',
    };
  } else if (prompt.name === 'login') {
    result = { login: { accountId: ACCOUNT.sub } };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    if (prompt.details.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    ctx.status = 400;
    ctx.body = { error: `unexpected prompt ${prompt.name}` };
    return;
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: true,
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/interaction/') && ctx.method === 'GET') {
    await interaction(ctx);
    return;
  }
  if (ctx.path === '/test/stats' && ctx.method === 'GET') {
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/test/reset' && ctx.method === 'POST') {
    stats.token_requests = 0;
    stats.by_grant_type = {};
    stats.refresh_tokens_seen = 0;
    stats.refresh_tokens_reused = 0;
    stats.errors = {};
    stats.dropped_after_hangup = 0;
    seenRefresh = new Set();
    tokenDelayMs = 0;
    accessTokenTtlS = DEFAULT_ACCESS_TOKEN_TTL_S;
    ctx.body = stats;
    return;
  }
  if (ctx.path === '/test/config' && ctx.method === 'POST') {
    if (ctx.query.token_delay_ms !== undefined) tokenDelayMs = Number(ctx.query.token_delay_ms);
    if (ctx.query.access_token_ttl_s !== undefined) {
      accessTokenTtlS = Number(ctx.query.access_token_ttl_s);
    }
    ctx.body = { token_delay_ms: tokenDelayMs, access_token_ttl_s: accessTokenTtlS };
    return;
  }
  if (ctx.path === '/token' && ctx.method === 'POST' && tokenDelayMs > 0) {
    const socket = ctx.req.socket;
    let hungUp = false;
    const onGone = () => {
      hungUp = true;
    };
    socket.once('close', onGone);
    socket.once('end', onGone);
    stats.delayed_in_flight += 1;
    try {
      await new Promise((resolve) => setTimeout(resolve, tokenDelayMs));
    } finally {
      stats.delayed_in_flight -= 1;
      socket.off('close', onGone);
      socket.off('end', onGone);
    }
    if (hungUp || socket.destroyed) {
      stats.dropped_after_hangup += 1;
      return;
    }
  }
  await next();
});

httpServer.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    httpServer.close();
    process.exit(0);
  });
}
