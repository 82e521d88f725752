//! Unit-test scaffolding for step kinds (compiled only for tests): a [`StepContext`] over the
//! repository's staging environment, with providers whose services a test replaces by fakes
//! (`Providers::with_waf`, ...). Nothing here reaches a network: a fake is installed for every
//! service a test's kind calls, and a service without one fails on first use.

use super::context::{Mode, StepContext};
use super::journal::Journal;
use super::StepError;
use crate::config::Environment;
use crate::providers::Providers;
use std::sync::{Arc, Mutex};

pub mod kube;
pub mod postgres;

/// What a kind under test may use, and what it reported.
pub struct Harness {
    dir: tempfile::TempDir,
    env: Environment,
    providers: Providers,
    /// Progress lines the kind printed.
    pub progress: Arc<Mutex<Vec<String>>>,
    /// Records the kind journaled.
    pub journal: Arc<Mutex<Vec<Journal>>>,
    on_progress: Box<dyn Fn(&str) + Send + Sync>,
    on_journal: Box<dyn Fn(Journal) -> Result<(), StepError> + Send + Sync>,
}

impl Harness {
    /// The staging environment as a run of a runbook for its `shop` database sees it
    /// (database `shop_staging`), its providers passed through `fakes` to install test doubles.
    pub fn new(fakes: impl FnOnce(Providers) -> Providers) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("environments")).expect("environments/");
        std::fs::write(
            dir.path().join("environments/staging.yaml"),
            include_str!("../../../environments/staging.yaml"),
        )
        .expect("environments/staging.yaml");
        let (_, env) = crate::config::load_environment(dir.path(), "staging")
            .expect("the repository's staging environment loads")
            .for_database(Some("shop"))
            .expect("staging has a shop database");
        let providers = fakes(Providers::new(env.clone(), "test-run", Default::default()));
        let progress = Arc::new(Mutex::new(Vec::new()));
        let journal = Arc::new(Mutex::new(Vec::new()));
        let (p, j) = (progress.clone(), journal.clone());
        Harness {
            dir,
            env,
            providers,
            progress,
            journal,
            on_progress: Box::new(move |line: &str| {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.to_string())
            }),
            on_journal: Box::new(move |r: Journal| {
                j.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                Ok(())
            }),
        }
    }

    /// A rehearsal's context for step `step` with a 60 s deadline.
    pub fn cx(&self) -> StepContext<'_> {
        StepContext {
            run_id: "test-run",
            step_id: "step",
            mode: Mode::Rehearse,
            env: &self.env,
            params: Default::default(),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            providers: &self.providers,
            run_dir: self.dir.path(),
            root: self.dir.path(),
            progress: &*self.on_progress,
            journal: &*self.on_journal,
            panic_flag: None,
            approved: &[],
            writes: None,
        }
    }
}

/// A hosted zone in memory behind [`crate::providers::route53::Route53`]: one zone for the
/// staging domain (id `Z1`), change batches applied as Route 53 applies them (all or nothing:
/// a `DELETE` must match a set exactly, a `CREATE` must not find one), each change `PENDING`
/// on its first read and `INSYNC` after.
#[derive(Default)]
pub struct FakeRoute53 {
    /// The zone's record sets.
    pub sets: Mutex<Vec<crate::providers::route53::RecordSet>>,
    /// Every batch submitted, in order.
    pub submitted: Mutex<Vec<Vec<crate::providers::route53::RecordChange>>>,
    polled: Mutex<std::collections::BTreeSet<String>>,
    /// Changes are `INSYNC` on their first read (no 2 s poll in a test of many batches).
    insync_at_once: bool,
}

impl FakeRoute53 {
    /// A zone holding `sets`.
    pub fn with(sets: Vec<crate::providers::route53::RecordSet>) -> Arc<FakeRoute53> {
        Arc::new(FakeRoute53 {
            sets: Mutex::new(sets),
            ..Default::default()
        })
    }

    /// A zone holding `sets` whose changes are `INSYNC` on their first read.
    pub fn insync(sets: Vec<crate::providers::route53::RecordSet>) -> Arc<FakeRoute53> {
        Arc::new(FakeRoute53 {
            sets: Mutex::new(sets),
            insync_at_once: true,
            ..Default::default()
        })
    }

    /// A simple CNAME `name` → `value` with `ttl`.
    pub fn cname(name: &str, value: &str, ttl: i64) -> crate::providers::route53::RecordSet {
        crate::providers::route53::RecordSet {
            name: crate::providers::route53::fqdn(name),
            rtype: "CNAME".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(ttl),
            values: vec![value.into()],
            alias: None,
        }
    }
}

#[async_trait::async_trait]
impl crate::providers::route53::Route53 for FakeRoute53 {
    async fn zone_id(&self, domain: &str) -> Result<String, crate::providers::ProviderError> {
        if domain.trim_end_matches('.') == "staging.example-shop.com" {
            Ok("Z1".into())
        } else {
            Err(crate::providers::ProviderError::Aws {
                op: "route53:ListHostedZonesByName".into(),
                message: format!("no hosted zone {domain}"),
            })
        }
    }

    async fn record_sets(
        &self,
        _zone: &str,
        name: &str,
        rtype: &str,
    ) -> Result<Vec<crate::providers::route53::RecordSet>, crate::providers::ProviderError> {
        let name = crate::providers::route53::fqdn(name);
        let mut out: Vec<_> = self
            .sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.name == name && s.rtype == rtype)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.set_identifier.cmp(&b.set_identifier));
        Ok(out)
    }

    async fn submit(
        &self,
        _zone: &str,
        changes: &[crate::providers::route53::RecordChange],
        _comment: &str,
    ) -> Result<String, crate::providers::ProviderError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = sets.clone();
        let same = |a: &crate::providers::route53::RecordSet,
                    b: &crate::providers::route53::RecordSet| {
            a.name == b.name && a.rtype == b.rtype && a.set_identifier == b.set_identifier
        };
        for c in changes {
            let found = next.iter().position(|s| same(s, &c.set));
            use crate::providers::route53::RecordAction;
            match (c.action, found) {
                (RecordAction::Delete, Some(i)) if next[i] == c.set => {
                    next.remove(i);
                }
                (RecordAction::Upsert, Some(i)) => next[i] = c.set.clone(),
                (RecordAction::Upsert | RecordAction::Create, None) => next.push(c.set.clone()),
                (action, _) => {
                    return Err(crate::providers::ProviderError::Aws {
                        op: "route53:ChangeResourceRecordSets".into(),
                        message: format!("InvalidChangeBatch: {action} {}", c.set.name),
                    })
                }
            }
        }
        *sets = next;
        let mut submitted = self.submitted.lock().unwrap_or_else(|e| e.into_inner());
        submitted.push(changes.to_vec());
        Ok(format!("C{}", submitted.len()))
    }

    async fn change_status(
        &self,
        id: &str,
    ) -> Result<crate::providers::route53::ChangeStatus, crate::providers::ProviderError> {
        let first = self
            .polled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        Ok(if first && !self.insync_at_once {
            crate::providers::route53::ChangeStatus::Pending
        } else {
            crate::providers::route53::ChangeStatus::Insync
        })
    }
}

/// A local HTTP server (the real protocol, over TCP) answering each request with the next status
/// of `statuses`, the last one for ever after: a health endpoint for the kinds that probe one.
/// Returns its `/healthz` URL and the count of requests answered so far.
pub async fn http_statuses(statuses: Vec<u16>) -> (String, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let url = format!(
        "http://{}/healthz",
        listener.local_addr().expect("a bound address")
    );
    let served = Arc::new(Mutex::new(0usize));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let status = {
                let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
                *n += 1;
                statuses[(*n - 1).min(statuses.len() - 1)]
            };
            tokio::spawn(async move {
                let (mut buf, mut got) = (vec![0u8; 4096], Vec::new());
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, served)
}
