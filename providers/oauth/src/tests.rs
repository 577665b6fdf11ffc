//! Settings: every problem named, secrets never quoted.

use super::*;
use serde_json::{Value, json};

struct Creds(String);
impl Env for Creds {
    fn var(&self, key: &str) -> Option<String> {
        (key == "CREDENTIALS_DIRECTORY").then(|| self.0.clone())
    }
}

/// A private credentials directory with a client secret and the test keys (0600, as
/// credentials must be).
fn creds() -> Creds {
    let dir = std::env::temp_dir().join(format!("cb-oauth-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir for credentials should be created");
    let files = [
        ("secret", "s3cret-client-secret-value\n".to_string()),
        ("key.pem", include_str!("../testdata/es256.pem").to_string()),
        (
            "actor.pem",
            include_str!("../testdata/ed25519.pem").to_string(),
        ),
        ("notkey.pem", "[package]\n".to_string()),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("a credential should be written");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("the credential should be made private");
    }
    Creds(dir.display().to_string())
}

fn build(v: Value) -> Vec<String> {
    let Value::Object(p) = v else { return vec![] };
    OauthFactory
        .build("as", &p, &creds())
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn good_settings_build() {
    for v in [
        json!({"issuer": "https://idp.example.com", "client_id": "cb",
               "client_secret_credential": "secret"}),
        json!({"issuer": "http://127.0.0.1:9/", "client_id": "cb", "client_auth": "client_secret_post",
               "client_secret_credential": "secret", "discovery": false,
               "token_endpoint": "http://127.0.0.1:9/token"}),
        json!({"issuer": "https://idp.example.com", "client_id": "cb", "client_auth": "private_key_jwt",
               "private_key_credential": "key.pem", "private_key_id": "k1",
               "actor_key_credential": "actor.pem", "max_token_lifetime": "10m",
               "resource_as": {"issuer": "https://as.example.com", "client_id": "cb2",
                               "client_secret_credential": "secret"}}),
    ] {
        assert_eq!(build(v.clone()), Vec::<String>::new(), "{v}");
    }
}

#[test]
fn every_problem_is_named_and_no_secret_quoted() {
    let e = build(json!({
        "issuer": "http://idp.example.com", "client_auth": "magic", "colour": 1,
        "timeout": "5h", "discovery": false,
        "resource_as": {"issuer": "https://as.example.com", "client_id": "x", "extra": true}
    }));
    for needle in [
        "issuer: must be https",
        "client_id: is required",
        "client_auth: must be client_secret_basic",
        "colour: unknown setting",
        "timeout:",
        "token_endpoint: is required when discovery = false",
        "resource_as.extra: unknown setting",
        "resource_as.client_secret_credential: the client secret is required",
    ] {
        assert!(
            e.iter().any(|x| x.contains(needle)),
            "{needle} not in {e:#?}"
        );
    }
    let e = build(
        json!({"issuer": "https://idp.example.com", "client_id": "cb",
                         "client_auth": "private_key_jwt", "private_key_credential": "notkey.pem",
                         "client_secret_credential": "secret"}),
    );
    assert!(
        e.iter()
            .any(|x| x.contains("client_secret_file: is not used with private_key_jwt")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|x| x.contains("private_key_credential: is not a P-256")),
        "{e:#?}"
    );
    let e = build(
        json!({"issuer": "https://idp.example.com", "client_id": "cb",
                         "client_secret_credential": "secret", "private_key_credential": "key.pem"}),
    );
    assert!(
        e.iter()
            .any(|x| x.contains("private_key_file: is not used with client_secret_basic")),
        "{e:#?}"
    );
    for line in &e {
        assert!(
            !line.contains("s3cret") && !line.contains("PRIVATE KEY"),
            "{line}"
        );
    }
}

#[test]
fn grants_are_checked_against_the_instance() {
    let Value::Object(p) = json!({"issuer": "https://idp.example.com", "client_id": "cb",
                                  "client_secret_credential": "secret"})
    else {
        return;
    };
    let Ok(provider) = OauthFactory.build("as", &p, &creds()) else {
        panic!("good settings should build")
    };
    let problems = |v: Value| -> Vec<String> {
        let Value::Object(g) = v else { return vec![] };
        provider
            .check_grant(&g)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let e = problems(json!({"mode": "id-jag", "scope": ["a"]}));
    assert!(
        e.iter()
            .any(|x| x.contains("mode: id-jag needs the provider's resource_as")),
        "{e:#?}"
    );
    let e = problems(
        json!({"mode": "token-exchange", "resource": "https://api.example/", "scope": ["a"], "actor_token": true}),
    );
    assert!(
        e.iter()
            .any(|x| x.contains("actor_token: the provider has no key")),
        "{e:#?}"
    );
    assert!(
        problems(
            json!({"mode": "token-exchange", "resource": "https://api.example/", "scope": ["a"]})
        )
        .is_empty()
    );
}
