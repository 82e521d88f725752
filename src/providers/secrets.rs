//! Reading secret values from where teams keep them: process environment variables, files, AWS
//! Secrets Manager (`GetSecretValue`) and Systems Manager Parameter Store (`GetParameter` with
//! decryption), the AWS ones with the environment's assumed role; and writing a Secrets Manager
//! secret or SSM parameter back (`PutSecretValue`, `PutParameter`), for Kubernetes Secrets an
//! operator copies from there.
//!
//! This module returns values and never shows them: callers register what they read with the
//! redactor. It knows nothing of runbooks or templates: a source arrives with every template in
//! it already rendered.

use super::aws::{err, AwsSession};
use super::ProviderError;
use crate::config::{SecretSource, UrlParts};

/// What reading a source found.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// The whole stored value (a `SecretString`, a parameter's decrypted value, a file's text
    /// without one trailing newline, a variable's value).
    Value(String),
    /// The variable is unset or empty, or the file, secret or parameter does not exist.
    Missing,
}

/// Reads `source`. `aws` is needed for the AWS sources only.
///
/// # Errors
/// [`ProviderError::Aws`] when an AWS call fails other than for a missing secret or parameter
/// (access denied, for one); [`ProviderError::SecretSource`] for a secret with only a binary
/// value or a file that exists but cannot be read.
pub async fn read(aws: Option<&AwsSession>, source: &SecretSource) -> Result<Read, ProviderError> {
    match source {
        SecretSource::Env(var) => Ok(match std::env::var(var) {
            Ok(v) if !v.is_empty() => Read::Value(v),
            _ => Read::Missing,
        }),
        SecretSource::File(path) => match std::fs::read_to_string(path) {
            Ok(t) => Ok(Read::Value(
                t.strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&t)
                    .to_string(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Read::Missing),
            Err(e) => Err(ProviderError::SecretSource(format!("file {path}: {e}"))),
        },
        SecretSource::SecretsManager(id) => {
            let aws = need_aws(aws, source)?;
            let out = crate::aws_client!(aws_sdk_secretsmanager, &aws.config)
                .get_secret_value()
                .secret_id(id)
                .send()
                .await;
            match out {
                Ok(o) => match o.secret_string() {
                    Some(s) => Ok(Read::Value(s.to_string())),
                    None => Err(ProviderError::SecretSource(format!(
                        "Secrets Manager secret {id} has no SecretString (a binary secret cannot be used)"
                    ))),
                },
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    Ok(Read::Missing)
                }
                Err(e) => Err(err("secretsmanager:GetSecretValue", e)),
            }
        }
        SecretSource::Ssm(name) => {
            let aws = need_aws(aws, source)?;
            let out = crate::aws_client!(aws_sdk_ssm, &aws.config)
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await;
            match out {
                Ok(o) => Ok(o
                    .parameter()
                    .and_then(|p| p.value())
                    .map(|v| Read::Value(v.to_string()))
                    .unwrap_or(Read::Missing)),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_parameter_not_found()) =>
                {
                    Ok(Read::Missing)
                }
                Err(e) => Err(err("ssm:GetParameter", e)),
            }
        }
    }
}

/// Writes `value` as the new current value of a Secrets Manager secret (a new version) or of an
/// SSM parameter (overwritten, keeping its type). Environment variables and files cannot be
/// written.
///
/// # Errors
/// [`ProviderError::Aws`] when the call fails; [`ProviderError::SecretSource`] for a source that
/// cannot be written.
pub async fn write(
    aws: &AwsSession,
    source: &SecretSource,
    value: &str,
) -> Result<(), ProviderError> {
    match source {
        SecretSource::SecretsManager(id) => crate::aws_client!(aws_sdk_secretsmanager, &aws.config)
            .put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("secretsmanager:PutSecretValue", e)),
        SecretSource::Ssm(name) => crate::aws_client!(aws_sdk_ssm, &aws.config)
            .put_parameter()
            .name(name)
            .value(value)
            .overwrite(true)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| err("ssm:PutParameter", e)),
        other => Err(ProviderError::SecretSource(format!(
            "{} cannot be written by cutover",
            other.describe()
        ))),
    }
}

fn need_aws<'a>(
    aws: Option<&'a AwsSession>,
    source: &SecretSource,
) -> Result<&'a AwsSession, ProviderError> {
    aws.ok_or_else(|| {
        ProviderError::SecretSource(format!(
            "{} needs the environment's AWS session",
            source.describe()
        ))
    })
}

/// The value of `key` in the JSON object `value` (a string as is, a number or boolean as text).
///
/// # Errors
/// A message naming the key (never the value) when `value` is not a JSON object or lacks it.
pub fn json_key(value: &str, key: &str) -> Result<String, String> {
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(value).map_err(|_| "the value is not a JSON object".to_string())?;
    match obj.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!("key `{key}` is not a string or number")),
        None => Err(format!(
            "the JSON object has no key `{key}`; its keys: {}",
            obj.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The `postgres://` URL of a database credentials JSON object (`username`, `password`, and
/// optionally `host`, `port`, `dbname`, as RDS and Secrets Manager's database secrets hold
/// them), with `parts` filling in what the object lacks. User and password are percent-encoded.
///
/// # Errors
/// A message naming the missing field (never a value).
pub fn database_url(value: &str, parts: &UrlParts) -> Result<String, String> {
    let field = |k: &str| json_key(value, k).ok().filter(|v| !v.is_empty());
    let user = field("username").ok_or("the credentials have no `username`")?;
    let password = field("password").ok_or("the credentials have no `password`")?;
    let host = field("host")
        .or_else(|| parts.host.clone())
        .ok_or("no `host`: the credentials lack it and `as_database_url.host` is not set")?;
    let port = field("port")
        .or_else(|| parts.port.clone())
        .unwrap_or_else(|| "5432".into());
    // The file names the database the run acts on: it wins over the secret's own `dbname`, so
    // one secret serves every database on the instance.
    let dbname =
        parts.dbname.clone().or_else(|| field("dbname")).ok_or(
            "no `dbname`: the credentials lack it and `as_database_url.dbname` is not set",
        )?;
    // TLS settings from the file (a credentials secret holds none).
    let mut query = Vec::new();
    if let Some(m) = parts.sslmode.as_deref().filter(|m| !m.is_empty()) {
        query.push(format!("sslmode={}", crate::secret::urlencode(m)));
    }
    if let Some(c) = parts.sslrootcert.as_deref().filter(|c| !c.is_empty()) {
        query.push(format!("sslrootcert={}", crate::secret::urlencode(c)));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    Ok(format!(
        "postgres://{}:{}@{host}:{port}/{dbname}{query}",
        crate::secret::urlencode(&user),
        crate::secret::urlencode(&password),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_taken_from_a_json_object_and_a_missing_one_names_the_keys_not_values() {
        let v = r#"{"url":"postgres://a:b@h/d","port":5432,"x":{"y":1}}"#;
        assert_eq!(json_key(v, "url").unwrap(), "postgres://a:b@h/d");
        assert_eq!(json_key(v, "port").unwrap(), "5432");
        let e = json_key(v, "password").unwrap_err();
        assert!(
            e.contains("url, port, x") || e.contains("port, url, x"),
            "{e}"
        );
        assert!(!e.contains("postgres://"), "{e}");
        assert!(json_key("not json", "k").is_err());
        assert!(json_key(v, "x").is_err());
    }

    #[test]
    fn rds_credentials_make_a_url_with_the_files_parts_filling_in() {
        let managed = r#"{"username":"postgres","password":"p@ss:/w"}"#;
        let parts = UrlParts {
            host: Some("db.example".into()),
            port: Some("6432".into()),
            dbname: Some("shop".into()),
            ..Default::default()
        };
        assert_eq!(
            database_url(managed, &parts).unwrap(),
            "postgres://postgres:p%40ss%3A%2Fw@db.example:6432/shop"
        );
        // The file's TLS settings end the URL; empty ones (an unset `${VAR:-}`) add nothing.
        let tls = UrlParts {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/etc/ssl/rds/global-bundle.pem".into()),
            ..parts.clone()
        };
        assert_eq!(
            database_url(managed, &tls).unwrap(),
            "postgres://postgres:p%40ss%3A%2Fw@db.example:6432/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Frds%2Fglobal-bundle.pem"
        );
        let empty = UrlParts {
            sslmode: Some(String::new()),
            sslrootcert: Some(String::new()),
            ..parts.clone()
        };
        assert_eq!(
            database_url(managed, &empty).unwrap(),
            "postgres://postgres:p%40ss%3A%2Fw@db.example:6432/shop"
        );
        let full = r#"{"username":"u","password":"pw","host":"h","port":5433,"dbname":"other"}"#;
        assert_eq!(
            database_url(full, &UrlParts::default()).unwrap(),
            "postgres://u:pw@h:5433/other"
        );
        // The file's database name wins: one secret serves every database on the instance.
        assert_eq!(
            database_url(full, &parts).unwrap(),
            "postgres://u:pw@h:5433/shop"
        );
        let e = database_url(managed, &UrlParts::default()).unwrap_err();
        assert!(e.contains("host"), "{e}");
        assert!(!e.contains("p@ss"), "{e}");
    }

    #[tokio::test]
    async fn env_and_file_sources_read_and_report_missing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        let path = f.display().to_string();
        assert_eq!(
            read(None, &SecretSource::File(path)).await.unwrap(),
            Read::Value("s3cret-value".into())
        );
        let gone = dir.path().join("gone").display().to_string();
        assert_eq!(
            read(None, &SecretSource::File(gone)).await.unwrap(),
            Read::Missing
        );
        assert_eq!(
            read(
                None,
                &SecretSource::Env("CUTOVER_TEST_SURELY_UNSET_VAR".into())
            )
            .await
            .unwrap(),
            Read::Missing
        );
        let e = read(None, &SecretSource::Ssm("/x".into()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("AWS session"), "{e}");
    }
}
