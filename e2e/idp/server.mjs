// Test-only OAuth 2.0 authorization server for fhirgate end-to-end tests and the demo.
//
// Issues RFC 9068 JWT access tokens (typ "at+jwt") carrying SMART claims through the
// client_credentials grant, so every test can mint the token it needs without a browser.
// With IDP_TOKEN_FORMAT=opaque it issues opaque access tokens instead, answers RFC 7662
// introspection (with the same SMART claims) and RFC 7009 revocation: the second issuer of
// the end-to-end suite, which fhirgate checks by introspection.
// Listens on 127.0.0.1 only. Never use it outside a test machine: secrets are fixed and
// the /admin endpoints are unauthenticated.
//
// Environment:
//   IDP_PORT            port (9000)
//   IDP_ISSUER          issuer (http://127.0.0.1:$IDP_PORT)
//   IDP_AUDIENCE        default audience: the gateway's public FHIR base (http://127.0.0.1:8080/fhir)
//   IDP_OTHER_AUDIENCE  a second audience for mismatch tests (urn:test:other-api)
//   IDP_ALG             RS256 (default) | ES256: algorithm of the access-token signing key
//   IDP_TOKEN_TTL       lifetime of ordinary tokens in seconds (300)
//   IDP_SHORT_TTL       lifetime of short-app tokens in seconds (2)
//   IDP_STATE_DIR       where signing keys and rotation state are kept (./.idp-state)
//   IDP_TOKEN_FORMAT    jwt (default) | opaque: format of the access tokens
//   IDP_INTROSPECTION_CLIENT       opaque only: client id of the resource server allowed to
//                                  introspect (fhirgate)
//   IDP_INTROSPECTION_SECRET_FILE  opaque only: file holding that client's secret, trailing
//                                  newline ignored (introspection-client.secret next to this file)
//
// Clients (all client_secret_basic or client_secret_post, grant client_credentials):
//   patient-app / patient-secret  token request may carry patient=<id> (and fhirUser=<ref>)
//   system-app  / system-secret   system-level access, never a patient context
//   short-app   / short-secret    like patient-app, tokens live IDP_SHORT_TTL seconds
//   clinician-app / clinician-secret  a clinician's app: never a patient context; the token
//                                 request may carry fhirUser=<ref> and purpose_of_use=<codes>
//                                 (space-separated v3-ActReason codes such as BTG), issued as the
//                                 purpose_of_use claim ["urn:oid:2.16.840.1.113883.5.8#BTG"]
// The scope parameter is granted verbatim (SMART v1, v2 and granular forms alike).
// resource=<IDP_OTHER_AUDIENCE> yields a token for the other audience.
//
// Opaque format only (IDP_TOKEN_FORMAT=opaque):
//   fhirgate / <secret file>      client_secret_basic, no grant: the only client whose
//                                 introspection calls (POST /token/introspection) are
//                                 answered; every other caller is told active=false
//   POST /token/revocation        RFC 7009; a token can be revoked by the client it was
//                                 issued to. Introspection answers carry active, scope,
//                                 client_id, sub (the client id, as in the JWTs), exp, iat,
//                                 iss, aud, token_type and the patient and fhirUser claims.
//
// Test-only endpoints:
//   POST /admin/rotate   sign with the next key of the pool; publish [new, previous]
//   POST /admin/retire   publish only the active key
//   GET  /admin/state    {alg, active_kid, published_kids, pool_kids}

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const started = Date.now();

const PORT = Number.parseInt(process.env.IDP_PORT ?? '9000', 10);
const ISSUER = process.env.IDP_ISSUER ?? `http://127.0.0.1:${PORT}`;
const AUDIENCE = process.env.IDP_AUDIENCE ?? 'http://127.0.0.1:8080/fhir';
const OTHER_AUDIENCE = process.env.IDP_OTHER_AUDIENCE ?? 'urn:test:other-api';
const ALG = process.env.IDP_ALG ?? 'RS256';
const TOKEN_TTL = Number.parseInt(process.env.IDP_TOKEN_TTL ?? '300', 10);
const SHORT_TTL = Number.parseInt(process.env.IDP_SHORT_TTL ?? '2', 10);
const STATE_DIR = path.resolve(process.env.IDP_STATE_DIR ?? '.idp-state');
const TOKEN_FORMAT = process.env.IDP_TOKEN_FORMAT ?? 'jwt';
const OPAQUE = TOKEN_FORMAT === 'opaque';
const INTROSPECTION_CLIENT = process.env.IDP_INTROSPECTION_CLIENT ?? 'fhirgate';
const INTROSPECTION_SECRET_FILE = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  process.env.IDP_INTROSPECTION_SECRET_FILE ?? 'introspection-client.secret',
);
const POOL_SIZE = 4;

const FAMILIES = {
  RS256: { type: 'rsa', options: { modulusLength: 2048 } },
  ES256: { type: 'ec', options: { namedCurve: 'P-256' } },
};

if (!FAMILIES[ALG]) {
  console.error(`IDP_ALG must be one of ${Object.keys(FAMILIES).join(', ')}, not ${ALG}`);
  process.exit(2);
}
if (!Number.isInteger(PORT) || PORT <= 0 || PORT > 65535) {
  console.error(`IDP_PORT is not a valid port: ${process.env.IDP_PORT}`);
  process.exit(2);
}
if (TOKEN_FORMAT !== 'jwt' && TOKEN_FORMAT !== 'opaque') {
  console.error(`IDP_TOKEN_FORMAT must be jwt or opaque, not ${TOKEN_FORMAT}`);
  process.exit(2);
}

// The introspection client's secret, read like fhirgate reads client_secret_file.
function readIntrospectionSecret() {
  let secret;
  try {
    secret = fs.readFileSync(INTROSPECTION_SECRET_FILE, 'utf8').replace(/[\r\n]+$/, '');
  } catch (err) {
    console.error(`cannot read the introspection client secret ${INTROSPECTION_SECRET_FILE}: ${err.message}`);
    process.exit(2);
  }
  if (secret === '') {
    console.error(`the introspection client secret file ${INTROSPECTION_SECRET_FILE} is empty`);
    process.exit(2);
  }
  return secret;
}
const INTROSPECTION_SECRET = OPAQUE ? readIntrospectionSecret() : undefined;

// ---------------------------------------------------------------- key pool and state

function readJson(file, fallback) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    if (err.code === 'ENOENT') return fallback;
    throw err;
  }
}

function writeJson(file, value) {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

function generateKey(alg, n) {
  const { type, options } = FAMILIES[alg];
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  const jwk = privateKey.export({ format: 'jwk' });
  const tag = crypto.randomBytes(4).toString('hex');
  return { ...jwk, kid: `${alg.toLowerCase()}-${n}-${tag}`, alg, use: 'sig' };
}

fs.mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
const keysFile = path.join(STATE_DIR, 'keys.json');
const rotationFile = path.join(STATE_DIR, `rotation-${ALG}.json`);

const keys = readJson(keysFile, {});
let generated = false;
for (const alg of Object.keys(FAMILIES)) {
  keys[alg] ??= [];
  while (keys[alg].length < POOL_SIZE) {
    keys[alg].push(generateKey(alg, keys[alg].length + 1));
    generated = true;
  }
}
if (generated) writeJson(keysFile, keys);

const pool = keys[ALG];
const poolKids = pool.map((k) => k.kid);
let rotation = readJson(rotationFile, null);
if (
  !rotation
  || !poolKids.includes(rotation.active)
  || !Array.isArray(rotation.published)
  || !rotation.published.every((kid) => poolKids.includes(kid))
) {
  rotation = { active: poolKids[0], published: [poolKids[0]] };
  writeJson(rotationFile, rotation);
}

function publicJwk(jwk) {
  const pub = crypto.createPublicKey({ key: jwk, format: 'jwk' }).export({ format: 'jwk' });
  return { ...pub, kid: jwk.kid, alg: jwk.alg, use: 'sig' };
}

function publishedJwks() {
  const byKid = new Map(pool.map((k) => [k.kid, k]));
  return { keys: rotation.published.map((kid) => publicJwk(byKid.get(kid))) };
}

function adminState() {
  return {
    alg: ALG,
    active_kid: rotation.active,
    published_kids: [...rotation.published],
    pool_kids: poolKids,
  };
}

// ---------------------------------------------------------------- clients

const CLIENTS = {
  'patient-app': { secret: 'patient-secret', patientContext: true, ttl: TOKEN_TTL },
  'system-app': { secret: 'system-secret', patientContext: false, ttl: TOKEN_TTL },
  'short-app': { secret: 'short-secret', patientContext: true, ttl: SHORT_TTL },
  'clinician-app': { secret: 'clinician-secret', patientContext: false, userContext: true, ttl: TOKEN_TTL },
};

const clientMetadata = Object.entries(CLIENTS).map(([clientId, c]) => ({
  client_id: clientId,
  client_secret: c.secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
}));
if (OPAQUE) {
  // The resource server (fhirgate): it obtains no tokens, it only introspects them.
  clientMetadata.push({
    client_id: INTROSPECTION_CLIENT,
    client_secret: INTROSPECTION_SECRET,
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  });
}

const ID_PATTERN = /^[A-Za-z0-9\-.]{1,64}$/;
const REFERENCE_PATTERN = /^[A-Za-z]{1,64}\/[A-Za-z0-9\-.]{1,64}$/;
const PURPOSE_PATTERN = /^[A-Za-z0-9\-_.]{1,64}$/;
// v3-ActReason, as HL7's B2B authorization extension writes purposes of use
const ACT_REASON_OID = 'urn:oid:2.16.840.1.113883.5.8';

function bodyParam(ctx, name) {
  const value = ctx?.oidc?.body?.[name];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

// ---------------------------------------------------------------- provider

// The private keys of every pool are in the provider's keystore; which one signs is
// chosen per token (jwt.sign.kid), and which ones are published is decided below.
const allPrivateKeys = Object.values(keys).flat();

const configuration = {
  clients: clientMetadata,
  jwks: { keys: allPrivateKeys },
  cookies: { keys: [crypto.createHash('sha256').update(JSON.stringify(pool[0])).digest('hex')] },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: OPAQUE,
      // Only the resource server learns what a token grants; any other caller, even the
      // token's own client, gets {"active": false}.
      allowedPolicy: (ctx, client) => client.clientId === INTROSPECTION_CLIENT,
    },
    revocation: {
      enabled: OPAQUE,
      // RFC 7009: the client a token was issued to may revoke it.
      allowedPolicy(ctx, client, token) {
        if (token.clientId !== client.clientId) {
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        }
        return true;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resourceIndicator, client) {
        if (resourceIndicator !== AUDIENCE && resourceIndicator !== OTHER_AUDIENCE) {
          // oidc-provider turns a thrown error here into invalid_target
          throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        const requested = bodyParam(ctx, 'scope') ?? '';
        return {
          // grant every requested scope verbatim
          scope: requested,
          audience: resourceIndicator,
          accessTokenTTL: CLIENTS[client?.clientId]?.ttl ?? TOKEN_TTL,
          ...(OPAQUE
            ? { accessTokenFormat: 'opaque' }
            : { accessTokenFormat: 'jwt', jwt: { sign: { alg: ALG, kid: rotation.active } } }),
        };
      },
    },
  },
  ttl: {
    ClientCredentials(ctx, token, client) {
      return CLIENTS[client?.clientId]?.ttl ?? TOKEN_TTL;
    },
  },
  async extraTokenClaims(ctx, token) {
    const clientId = token.clientId ?? ctx?.oidc?.client?.clientId;
    const claims = {};
    // The introspection answer for a client_credentials token names no subject; the JWTs
    // carry the client id as sub, and so does the opaque format's introspection answer.
    if (OPAQUE && clientId) claims.sub = clientId;
    if (CLIENTS[clientId]?.patientContext) {
      const patient = bodyParam(ctx, 'patient');
      const explicitUser = bodyParam(ctx, 'fhirUser');
      if (patient !== undefined && !ID_PATTERN.test(patient)) {
        throw new errors.InvalidRequest('patient must be a FHIR id');
      }
      if (explicitUser !== undefined && !REFERENCE_PATTERN.test(explicitUser)) {
        throw new errors.InvalidRequest('fhirUser must be a reference Type/id');
      }
      const fhirUser = explicitUser ?? (patient ? `Patient/${patient}` : undefined);
      if (patient) claims.patient = patient;
      if (fhirUser) claims.fhirUser = fhirUser;
    }
    if (CLIENTS[clientId]?.userContext) {
      const fhirUser = bodyParam(ctx, 'fhirUser');
      const purposes = bodyParam(ctx, 'purpose_of_use')?.split(' ').filter(Boolean) ?? [];
      if (fhirUser !== undefined && !REFERENCE_PATTERN.test(fhirUser)) {
        throw new errors.InvalidRequest('fhirUser must be a reference Type/id');
      }
      if (purposes.length > 8 || !purposes.every((code) => PURPOSE_PATTERN.test(code))) {
        throw new errors.InvalidRequest('purpose_of_use must be up to 8 space-separated codes');
      }
      if (fhirUser) claims.fhirUser = fhirUser;
      if (purposes.length) claims.purpose_of_use = purposes.map((code) => `${ACT_REASON_OID}#${code}`);
    }
    return Object.keys(claims).length ? claims : undefined;
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const provider = new Provider(ISSUER, configuration);

// Echo the patient context in the token response, as SMART clients expect, and log
// each issuance (never the token itself).
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method === 'POST' && (ctx.path === '/token/introspection' || ctx.path === '/token/revocation')) {
    const answer = ctx.body && typeof ctx.body === 'object' ? ctx.body : {};
    logLine(ctx.path === '/token/revocation' ? 'revocation' : 'introspection', {
      status: ctx.status,
      caller: ctx.oidc?.client?.clientId ?? null,
      active: ctx.path === '/token/introspection' ? answer.active ?? null : undefined,
      client_id: answer.client_id ?? null,
      error: answer.error ?? null,
    });
    return;
  }
  if (ctx.method !== 'POST' || ctx.path !== '/token') return;
  const body = ctx.oidc?.body ?? {};
  const clientId = ctx.oidc?.client?.clientId;
  const patient = CLIENTS[clientId]?.patientContext && typeof body.patient === 'string' && body.patient
    ? body.patient
    : undefined;
  if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object' && patient) {
    ctx.body = { ...ctx.body, patient };
  }
  logLine('token', {
    status: ctx.status,
    client_id: clientId ?? null,
    patient: patient ?? null,
    scope: typeof body.scope === 'string' ? body.scope : null,
    resource: typeof body.resource === 'string' ? body.resource : null,
    error: ctx.status === 200 ? null : (ctx.body?.error ?? null),
  });
});

provider.on('server_error', (ctx, err) => {
  console.error(JSON.stringify({ event: 'server_error', path: ctx.path, error: String(err?.stack ?? err) }));
});

// ---------------------------------------------------------------- HTTP front

const providerCallback = provider.callback();

function sendJson(res, status, value, extraHeaders = {}) {
  const body = `${JSON.stringify(value)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...extraHeaders,
  });
  res.end(body);
}

function logLine(event, fields) {
  console.log(JSON.stringify({ time: new Date().toISOString(), event, ...fields }));
}

function smartConfiguration() {
  return {
    issuer: ISSUER,
    jwks_uri: `${ISSUER}/jwks`,
    token_endpoint: `${ISSUER}/token`,
    grant_types_supported: ['client_credentials'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    scopes_supported: ['launch/patient', 'patient/*.rs', 'user/*.rs', 'system/*.rs'],
    capabilities: ['client-confidential-symmetric', 'permission-v1', 'permission-v2', 'context-standalone-patient'],
    ...(OPAQUE
      ? { introspection_endpoint: `${ISSUER}/token/introspection`, revocation_endpoint: `${ISSUER}/token/revocation` }
      : {}),
  };
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, ISSUER);
  try {
    if (url.pathname === '/jwks' && (req.method === 'GET' || req.method === 'HEAD')) {
      sendJson(res, 200, publishedJwks(), { 'content-type': 'application/jwk-set+json' });
      return;
    }
    if (url.pathname === '/.well-known/smart-configuration' && req.method === 'GET') {
      sendJson(res, 200, smartConfiguration());
      return;
    }
    if (url.pathname === '/admin/state' && req.method === 'GET') {
      sendJson(res, 200, adminState());
      return;
    }
    if (url.pathname === '/admin/rotate' && req.method === 'POST') {
      const index = poolKids.indexOf(rotation.active);
      const next = poolKids[(index + 1) % poolKids.length];
      rotation = { active: next, published: [next, rotation.active] };
      writeJson(rotationFile, rotation);
      logLine('rotate', adminState());
      sendJson(res, 200, adminState());
      return;
    }
    if (url.pathname === '/admin/retire' && req.method === 'POST') {
      rotation = { active: rotation.active, published: [rotation.active] };
      writeJson(rotationFile, rotation);
      logLine('retire', adminState());
      sendJson(res, 200, adminState());
      return;
    }
    if (url.pathname.startsWith('/admin/')) {
      sendJson(res, 405, { error: 'unsupported admin request' });
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
  }
});

server.on('error', (err) => {
  console.error(JSON.stringify({ ready: false, error: String(err.message ?? err) }));
  process.exit(1);
});

server.listen(PORT, '127.0.0.1', () => {
  console.log(JSON.stringify({
    ready: true,
    issuer: ISSUER,
    port: PORT,
    audience: AUDIENCE,
    other_audience: OTHER_AUDIENCE,
    token_format: TOKEN_FORMAT,
    alg: ALG,
    active_kid: rotation.active,
    published_kids: rotation.published,
    token_ttl: TOKEN_TTL,
    short_ttl: SHORT_TTL,
    startup_ms: Date.now() - started,
  }));
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
