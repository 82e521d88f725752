//! The run's secrets: the environment's `secrets:` and any database admin URL that comes from a
//! secret source, read once per process and kept in memory only.
//!
//! Variables and files are read when the run opens; AWS sources (Secrets Manager, SSM) once
//! the account has been verified; a reference that is a template over Terraform outputs
//! (`{{ tf.master_user_secret_arn }}`) as soon as a step has produced them (before each step,
//! and at once in a process that takes up a run's records). What was read is recorded as
//! `secrets_read`: each secret's name, where it came from and its fingerprint, never a value.
//!
//! This module decides when a reference is read and what the record says; reading is
//! [`crate::providers::secrets`]'s, rendering [`crate::runbook::template`]'s.

use super::event::{Event, SecretRead, SecretsRead};
use super::executor::{EngineError, Executor};
use crate::config::{SecretRef, SecretSource, Side};
use crate::runbook::template;
use crate::secret::fingerprint;
use serde_json::Value;

/// What a pending reference fills.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Slot {
    /// `secrets.<name>`.
    Named(String),
    /// A database admin URL.
    Url(Side),
    /// The CA certificate of a database server (`source_ca`, `target_ca`).
    Ca(Side),
}

impl Slot {
    fn name(&self) -> String {
        match self {
            Slot::Named(n) => n.clone(),
            Slot::Url(side) => format!("{}_database_url", side.as_str()),
            Slot::Ca(side) => format!("{}_ca", side.as_str()),
        }
    }
}

/// A reference not read yet.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    slot: Slot,
    reference: SecretRef,
}

/// Which pending references a call may read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Reach {
    /// Variables and files only: the account is not verified yet.
    Local,
    /// Every source.
    All,
}

/// Every reference of `plan`'s environment: its `secrets:` and the URLs not from a variable.
fn references(env: &crate::config::Environment) -> Vec<Pending> {
    let mut out: Vec<Pending> = env
        .secrets
        .iter()
        .map(|(name, r)| Pending {
            slot: Slot::Named(name.clone()),
            reference: r.clone(),
        })
        .collect();
    for (side, r) in [
        (Side::Source, &env.database.source_url),
        (Side::Target, &env.database.target_url),
    ] {
        let from_var = env
            .database
            .url_source(side)
            .is_some_and(|s| matches!(s, SecretSource::Env(_)));
        if let (Some(r), false) = (r, from_var) {
            out.push(Pending {
                slot: Slot::Url(side),
                reference: r.clone(),
            });
        }
        if let Some(r) = env.database.ca(side) {
            out.push(Pending {
                slot: Slot::Ca(side),
                reference: r.clone(),
            });
        }
    }
    out
}

/// `r` with every string rendered over `ctx`; `None` while a template names a value not known
/// yet.
fn rendered(r: &SecretRef, ctx: &Value) -> Option<SecretRef> {
    if !r.is_templated() {
        return Some(r.clone());
    }
    let render = |s: &Option<String>| -> Option<Option<String>> {
        match s {
            None => Some(None),
            Some(t) => template::render_str(t, ctx).ok().map(Some),
        }
    };
    let mut out = r.clone();
    out.from_env = render(&r.from_env)?;
    out.from_secrets_manager = render(&r.from_secrets_manager)?;
    out.from_ssm = render(&r.from_ssm)?;
    out.from_file = render(&r.from_file)?;
    out.key = render(&r.key)?;
    if let Some(p) = &r.as_database_url {
        let mut q = p.clone();
        q.host = render(&p.host)?;
        q.port = render(&p.port)?;
        q.dbname = render(&p.dbname)?;
        q.sslmode = render(&p.sslmode)?;
        q.sslrootcert = render(&p.sslrootcert)?;
        out.as_database_url = Some(q);
    }
    Some(out)
}

impl Executor<'_> {
    /// Reads the variables and files the environment names (the database URL variables are
    /// checked too); the rest waits for [`Executor::read_pending`].
    ///
    /// # Errors
    /// [`EngineError::Config`] naming the secret when a required one is missing or malformed:
    /// nothing was done.
    pub(super) async fn load_secrets(&mut self) -> Result<(), EngineError> {
        self.pending_secrets = references(&self.plan.env);
        self.read_pending(Reach::Local)
            .await
            .map_err(EngineError::Config)?;
        self.providers
            .check_database_urls()
            .map_err(|e| EngineError::Config(self.redactor.redact(&e.to_string())))
    }

    /// Reads every pending reference `reach` allows whose templates render with what the run
    /// knows now, and records what it read. Returns the first failure's message (redacted),
    /// leaving that reference and the ones after it pending.
    pub(super) async fn read_pending(&mut self, reach: Reach) -> Result<(), String> {
        if self.pending_secrets.is_empty() {
            return Ok(());
        }
        let ctx = self.context(false);
        let mut read = Vec::new();
        let mut still = Vec::new();
        let mut failure = None;
        for p in std::mem::take(&mut self.pending_secrets) {
            if failure.is_some() {
                still.push(p);
                continue;
            }
            let Some(r) = rendered(&p.reference, &ctx) else {
                still.push(p);
                continue;
            };
            let source = match r.source() {
                Ok(s) => s,
                Err(e) => {
                    failure = Some(format!("secret `{}`: {e}", p.slot.name()));
                    still.push(p);
                    continue;
                }
            };
            let remote = matches!(
                source,
                SecretSource::SecretsManager(_) | SecretSource::Ssm(_)
            );
            if remote && reach == Reach::Local {
                still.push(p);
                continue;
            }
            let result = match &p.slot {
                Slot::Named(name) => match self.providers.read_secret(&r).await {
                    Ok(Some(v)) => {
                        let fp = fingerprint(&v);
                        self.secrets_display
                            .insert(name.clone(), Value::from(fp.clone()));
                        self.secrets_real.insert(name.clone(), Value::from(v));
                        Ok(Some(fp))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                },
                // A CA is public: its fingerprint names the certificate, as for a secret.
                Slot::Ca(side) => self
                    .providers
                    .load_ca(*side, &r)
                    .await
                    .map(|(_, fp)| Some(fp)),
                Slot::Url(side) => self.providers.load_database_url(*side, &r).await.map(|()| {
                    let url = match side {
                        Side::Source => self.providers.source_url(),
                        Side::Target => self.providers.target_url(),
                    };
                    url.ok().map(|u| fingerprint(&u))
                }),
            };
            match result {
                Ok(fp) => {
                    // A variable is the long-standing source: only the others are recorded.
                    if !matches!(source, SecretSource::Env(_)) {
                        read.push(SecretRead {
                            name: p.slot.name(),
                            source: source.describe(),
                            fingerprint: fp,
                        });
                    }
                }
                Err(e) => {
                    failure = Some(
                        self.redactor
                            .redact(&format!("secret `{}`: {e}", p.slot.name())),
                    );
                    still.push(p);
                }
            }
        }
        self.pending_secrets = still;
        if !read.is_empty() {
            self.record(Event::SecretsRead(SecretsRead { secrets: read }), None)
                .map_err(|e| e.to_string())?;
        }
        failure.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UrlParts;
    use serde_json::json;

    #[test]
    fn a_template_over_terraform_outputs_waits_until_they_are_known() {
        let r = SecretRef {
            from_secrets_manager: Some("{{ tf.master_user_secret_arn }}".into()),
            as_database_url: Some(UrlParts {
                host: Some("{{ tf.db_address }}".into()),
                port: None,
                dbname: Some("shop".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(r.is_templated());
        assert!(rendered(&r, &json!({"tf": {}})).is_none());
        let done = rendered(
            &r,
            &json!({"tf": {"master_user_secret_arn": "arn:aws:secretsmanager:x", "db_address": "db.internal"}}),
        )
        .unwrap();
        assert_eq!(
            done.from_secrets_manager.as_deref(),
            Some("arn:aws:secretsmanager:x")
        );
        assert_eq!(
            done.as_database_url.unwrap().host.as_deref(),
            Some("db.internal")
        );
        let plain = SecretRef::env("X");
        assert_eq!(rendered(&plain, &json!({})), Some(plain));
    }
}
