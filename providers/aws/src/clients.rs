//! The SDK clients, built once from the provider's settings.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};

use crate::Settings;

pub(crate) struct Clients {
    pub(crate) sts: aws_sdk_sts::Client,
    pub(crate) iam: aws_sdk_iam::Client,
    pub(crate) region: Option<String>,
}

pub(crate) async fn build_clients(s: &Settings) -> Clients {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(s.max_attempts)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(s.timeout)
                .operation_attempt_timeout(s.timeout)
                .build(),
        )
        .use_fips(s.use_fips);
    if let Some(region) = &s.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &s.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(path) = &s.credentials_file {
        let files = EnvConfigFiles::builder()
            .with_file(EnvConfigFileKind::Credentials, path)
            .build();
        let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
            .profile_files(files)
            .profile_name(s.profile.as_deref().unwrap_or("default"))
            .build();
        loader = loader.credentials_provider(provider);
    }
    let sdk = loader.load().await;
    let mut sts = aws_sdk_sts::config::Builder::from(&sdk);
    if let Some(url) = &s.sts_endpoint {
        sts = sts.endpoint_url(url);
    }
    let mut iam = aws_sdk_iam::config::Builder::from(&sdk);
    if let Some(url) = &s.iam_endpoint {
        iam = iam.endpoint_url(url);
    }
    Clients {
        sts: aws_sdk_sts::Client::from_conf(sts.build()),
        iam: aws_sdk_iam::Client::from_conf(iam.build()),
        region: sdk.region().map(ToString::to_string),
    }
}
