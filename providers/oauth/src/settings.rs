//! The instance's settings: the authorization server (the IdP), the optional resource's
//! authorization server for `id-jag`, credbroker's client authentication at each, the actor
//! key, and the bounds that make an unknown outcome auditable.

use std::time::Duration;

use credbroker_provider_api::settings::{Fields, MAX_TIMEOUT, MIN_TIMEOUT};
use credbroker_provider_api::{Env, ParamError, Params, SecretValue};

use crate::key::SigningKey;

/// How credbroker authenticates at a token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Basic,
    Post,
    PrivateKeyJwt,
}

impl Method {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Basic => "client_secret_basic",
            Self::Post => "client_secret_post",
            Self::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// credbroker's client at one authorization server.
pub(crate) struct ClientAuth {
    pub(crate) client_id: String,
    pub(crate) method: Method,
    pub(crate) secret: Option<SecretValue>,
    pub(crate) key: Option<SigningKey>,
}

/// One authorization server: where it is and who credbroker is there.
pub(crate) struct Server {
    pub(crate) issuer: String,
    /// Read RFC 8414 (or OIDC discovery) metadata; explicit endpoints win over it.
    pub(crate) discovery: bool,
    pub(crate) token_endpoint: Option<String>,
    pub(crate) revocation_endpoint: Option<String>,
    pub(crate) introspection_endpoint: Option<String>,
    pub(crate) client: ClientAuth,
    /// The longest access token this server issues: the bound of an unknown outcome's residual.
    pub(crate) max_token_lifetime: Duration,
}

pub(crate) struct Settings {
    /// Where tokens are exchanged (the caller's token's issuer) or client credentials asked.
    pub(crate) idp: Server,
    /// The resource's own authorization server, which redeems ID-JAGs.
    pub(crate) resource_as: Option<Server>,
    /// Signs actor tokens; the client's `private_key_jwt` key when not set.
    pub(crate) actor_key: Option<SigningKey>,
    /// The actor token's `sub`; `{workload}` is the calling workload's name.
    pub(crate) actor_subject: String,
    /// Issuers whose tokens may be sent to the IdP as subject tokens.
    pub(crate) subject_issuers: Vec<String>,
    pub(crate) timeout: Duration,
}

const LIFETIME_MAX: Duration = Duration::from_secs(24 * 3600);

/// Reads an authorization server's keys from `f` (the instance root or `resource_as`).
fn server(f: &mut Fields<'_>, env: &dyn Env) -> Option<Server> {
    let issuer = f.endpoint("issuer");
    if !f.has_problem_with("issuer") && issuer.is_none() {
        f.problem(
            "issuer",
            "is required (the authorization server's issuer URL)",
        );
    }
    let discovery = f.boolean("discovery").unwrap_or(true);
    let token_endpoint = f.endpoint("token_endpoint");
    let revocation_endpoint = f.endpoint("revocation_endpoint");
    let introspection_endpoint = f.endpoint("introspection_endpoint");
    if !discovery && token_endpoint.is_none() && !f.has_problem_with("token_endpoint") {
        f.problem("token_endpoint", "is required when discovery = false");
    }
    let max_token_lifetime = f
        .duration("max_token_lifetime", Duration::from_secs(60), LIFETIME_MAX)
        .unwrap_or(Duration::from_secs(3600));
    let client_id = f.string("client_id");
    if client_id.is_none() && !f.has_problem_with("client_id") {
        f.problem(
            "client_id",
            "is required (credbroker's client at this server)",
        );
    }
    let method = match f.string("client_auth").as_deref() {
        None | Some("client_secret_basic") => Some(Method::Basic),
        Some("client_secret_post") => Some(Method::Post),
        Some("private_key_jwt") => Some(Method::PrivateKeyJwt),
        Some(_) => {
            f.problem(
                "client_auth",
                "must be client_secret_basic, client_secret_post or private_key_jwt",
            );
            None
        }
    };
    let secret = f.secret("client_secret_file", "client_secret_credential", env);
    let key_file = f.secret("private_key_file", "private_key_credential", env);
    let kid = f.string("private_key_id");
    let (secret, key) = match method {
        Some(Method::PrivateKeyJwt) => {
            if secret.is_some() {
                f.problem("client_secret_file", "is not used with private_key_jwt");
            }
            let key = read_key(f, key_file, kid, "private_key_credential");
            (None, key)
        }
        Some(m) => {
            if key_file.is_some() || kid.is_some() {
                f.problem("private_key_file", format!("is not used with {}", m.name()));
            }
            let secret = match secret.map(|s| s.read()) {
                Some(Ok(s)) if !s.expose().is_empty() => Some(s),
                Some(Ok(_)) => {
                    f.problem("client_secret_file", "the client secret is empty");
                    None
                }
                Some(Err(e)) => {
                    f.problem("client_secret_file", e);
                    None
                }
                None => {
                    if !f.has_problem_with("client_secret_file")
                        && !f.has_problem_with("client_secret_credential")
                    {
                        f.problem(
                            "client_secret_credential",
                            "the client secret is required (client_secret_credential or client_secret_file)",
                        );
                    }
                    None
                }
            };
            (secret, None)
        }
        None => (None, None),
    };
    let client = ClientAuth {
        client_id: client_id?,
        method: method?,
        secret,
        key,
    };
    if client.secret.is_none() && client.key.is_none() {
        return None;
    }
    Some(Server {
        issuer: issuer?.trim_end_matches('/').to_string(),
        discovery,
        token_endpoint,
        revocation_endpoint,
        introspection_endpoint,
        client,
        max_token_lifetime,
    })
}

/// A private key from `file` (already checked for its permissions), or a problem under `key`.
fn read_key(
    f: &mut Fields<'_>,
    file: Option<credbroker_provider_api::settings::SecretFile>,
    kid: Option<String>,
    key: &str,
) -> Option<SigningKey> {
    let Some(file) = file else {
        if !f.has_problem_with(key) && !f.has_problem_with(&key.replace("credential", "file")) {
            f.problem(key, "a private key is required (…_credential or …_file)");
        }
        return None;
    };
    match file.read().and_then(|pem| SigningKey::new(pem, kid)) {
        Ok(k) => Some(k),
        Err(e) => {
            f.problem(key, e);
            None
        }
    }
}

pub(crate) fn parse(config: &Params, env: &dyn Env) -> Result<Settings, Vec<ParamError>> {
    let mut f = Fields::new(config);
    let idp = server(&mut f, env);
    let resource_as = match f.table("resource_as") {
        Some(t) => {
            let mut n = Fields::nested(t, "resource_as");
            let s = server(&mut n, env);
            f.absorb(n.finish());
            s
        }
        None => None,
    };
    let actor_file = f.secret("actor_key_file", "actor_key_credential", env);
    let actor_kid = f.string("actor_key_id");
    let actor_key = match actor_file {
        Some(file) => read_key(&mut f, Some(file), actor_kid, "actor_key_credential"),
        None => None,
    };
    let actor_subject = f
        .string("actor_subject")
        .unwrap_or_else(|| "{workload}".into());
    let subject_issuers = f.strings("subject_issuers");
    if let Some(list) = &subject_issuers
        && (list.is_empty() || list.iter().any(String::is_empty))
    {
        f.problem(
            "subject_issuers",
            "must list at least one issuer URL, none empty",
        );
    }
    let timeout = f
        .duration("timeout", MIN_TIMEOUT, MAX_TIMEOUT)
        .unwrap_or(Duration::from_secs(10));
    let errors = f.finish();
    match idp {
        Some(idp) if errors.is_empty() => Ok(Settings {
            subject_issuers: subject_issuers
                .map(|l| {
                    l.iter()
                        .map(|i| i.trim_end_matches('/').to_string())
                        .collect()
                })
                .unwrap_or_else(|| vec![idp.issuer.clone()]),
            idp,
            resource_as,
            actor_key,
            actor_subject,
            timeout,
        }),
        _ if errors.is_empty() => Err(vec![ParamError::new("issuer", "is not usable")]),
        _ => Err(errors),
    }
}
