//! Route 53 through the AWS SDK: record sets (simple, weighted, alias) as plain values, change
//! batches in the API's own JSON shape (what a dry-run prints and the audit keeps), submission and
//! the wait for INSYNC.
//!
//! The calls go through [`Route53`], so a step kind can be tested against a fake; [`AwsRoute53`]
//! is the real one over the AWS SDK.
//!
//! This module knows nothing of runbooks, stages or TTL policy: it reads, writes and waits.

use super::aws::err;
use super::ProviderError;
use async_trait::async_trait;
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where a submitted change batch is (`GetChange`'s `Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStatus {
    /// Not yet applied on every Route 53 name server.
    Pending,
    /// Applied on every name server.
    Insync,
}

impl std::fmt::Display for ChangeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChangeStatus::Pending => "PENDING",
            ChangeStatus::Insync => "INSYNC",
        })
    }
}

/// The Route 53 operations the tool uses, in one account.
#[async_trait]
pub trait Route53: Send + Sync {
    /// The id (without `/hostedzone/`) of the public hosted zone named `domain`.
    ///
    /// # Errors
    /// The API error, or [`ProviderError::Aws`] naming the domain when the account has no such
    /// zone.
    async fn zone_id(&self, domain: &str) -> Result<String, ProviderError>;

    /// Every record set named `name` of type `rtype` in `zone` (one for a simple record, one
    /// per member of a weighted group), sorted by set identifier.
    ///
    /// # Errors
    /// The API error.
    async fn record_sets(
        &self,
        zone: &str,
        name: &str,
        rtype: &str,
    ) -> Result<Vec<RecordSet>, ProviderError>;

    /// Submits one change batch (atomic: all of it or none) and returns the change id (without
    /// `/change/`).
    ///
    /// # Errors
    /// The API error (for example `InvalidChangeBatch` when a `DELETE` does not match exactly).
    async fn submit(
        &self,
        zone: &str,
        changes: &[RecordChange],
        comment: &str,
    ) -> Result<String, ProviderError>;

    /// The status of change `id`.
    ///
    /// # Errors
    /// The API error.
    async fn change_status(&self, id: &str) -> Result<ChangeStatus, ProviderError>;
}

/// [`Route53`] over the AWS SDK.
pub struct AwsRoute53(pub aws_sdk_route53::Client);

/// An alias target (an ALB, a CloudFront distribution, ...), as Route 53's `AliasTarget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The target's own hosted zone id (for an ALB, the region's ELB zone, e.g. `Z35SXDOTRQ7X7K`).
    pub hosted_zone_id: String,
    /// The target's DNS name.
    pub dns_name: String,
    /// Whether Route 53 checks the target's health before answering with it.
    pub evaluate_target_health: bool,
}

/// One resource record set. Weighted sets carry `set_identifier` and `weight` (0–255); alias sets
/// carry `alias` and no TTL or values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSet {
    /// Fully qualified name with the trailing dot.
    pub name: String,
    /// `CNAME`, `A`, `AAAA`, ...
    #[serde(rename = "type")]
    pub rtype: String,
    /// Distinguishes the members of a weighted group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_identifier: Option<String>,
    /// Relative weight within the group (Route 53 accepts 0–255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// TTL in seconds (absent for alias sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// Record values (absent for alias sets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Alias target, for alias sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<Alias>,
}

impl RecordSet {
    /// The set as the Route 53 API document shows it (`Name`, `Type`, `SetIdentifier`, `Weight`,
    /// `TTL`, `ResourceRecords`, `AliasTarget`).
    pub fn api_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("Name".into(), json!(self.name));
        m.insert("Type".into(), json!(self.rtype));
        if let Some(id) = &self.set_identifier {
            m.insert("SetIdentifier".into(), json!(id));
        }
        if let Some(w) = self.weight {
            m.insert("Weight".into(), json!(w));
        }
        if let Some(t) = self.ttl {
            m.insert("TTL".into(), json!(t));
        }
        if !self.values.is_empty() {
            m.insert(
                "ResourceRecords".into(),
                self.values.iter().map(|v| json!({"Value": v})).collect(),
            );
        }
        if let Some(a) = &self.alias {
            m.insert(
                "AliasTarget".into(),
                json!({"HostedZoneId": a.hosted_zone_id, "DNSName": a.dns_name, "EvaluateTargetHealth": a.evaluate_target_health}),
            );
        }
        Value::Object(m)
    }

    /// What the set points at: its values joined by commas, or `alias <dns name>`.
    pub fn target(&self) -> String {
        match &self.alias {
            Some(a) => format!("alias {}", a.dns_name),
            None => self.values.join(","),
        }
    }

    fn to_sdk(&self) -> Result<ResourceRecordSet, ProviderError> {
        let invalid = |e: aws_sdk_route53::error::BuildError| ProviderError::Aws {
            op: "route53:ChangeResourceRecordSets".into(),
            message: format!("invalid record set {}: {e}", self.name),
        };
        let mut b = ResourceRecordSet::builder()
            .name(&self.name)
            .r#type(RrType::from(self.rtype.as_str()))
            .set_set_identifier(self.set_identifier.clone())
            .set_weight(self.weight)
            .set_ttl(self.ttl);
        for v in &self.values {
            b = b.resource_records(
                ResourceRecord::builder()
                    .value(v)
                    .build()
                    .map_err(invalid)?,
            );
        }
        if let Some(a) = &self.alias {
            b = b.alias_target(
                AliasTarget::builder()
                    .hosted_zone_id(&a.hosted_zone_id)
                    .dns_name(&a.dns_name)
                    .evaluate_target_health(a.evaluate_target_health)
                    .build()
                    .map_err(invalid)?,
            );
        }
        b.build().map_err(invalid)
    }

    fn from_sdk(r: &ResourceRecordSet) -> RecordSet {
        RecordSet {
            name: r.name().to_string(),
            rtype: r.r#type().as_str().to_string(),
            set_identifier: r.set_identifier().map(str::to_owned),
            weight: r.weight(),
            ttl: r.ttl(),
            values: r
                .resource_records()
                .iter()
                .map(|v| v.value().to_string())
                .collect(),
            alias: r.alias_target().map(|a| Alias {
                hosted_zone_id: a.hosted_zone_id().to_string(),
                dns_name: a.dns_name().to_string(),
                evaluate_target_health: a.evaluate_target_health(),
            }),
        }
    }
}

/// What a change does to its record set (`ChangeAction` in the Route 53 API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordAction {
    /// Adds a set that must not exist yet.
    Create,
    /// Adds the set or replaces the one with its name, type and set identifier.
    Upsert,
    /// Removes a set, which must match exactly.
    Delete,
}

impl RecordAction {
    /// The API's name: `CREATE`, `UPSERT` or `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordAction::Create => "CREATE",
            RecordAction::Upsert => "UPSERT",
            RecordAction::Delete => "DELETE",
        }
    }
}

impl std::fmt::Display for RecordAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of a change batch: `CREATE`, `UPSERT` or `DELETE` of a record set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChange {
    /// What the change does.
    pub action: RecordAction,
    /// The record set (for `DELETE`, exactly as it exists).
    pub set: RecordSet,
}

/// A change batch as the API document shows it: `{"Changes": [{"Action", "ResourceRecordSet"}]}`.
pub fn batch_json(changes: &[RecordChange]) -> Value {
    json!({"Changes": changes.iter().map(|c| json!({"Action": c.action.as_str(), "ResourceRecordSet": c.set.api_json()})).collect::<Vec<_>>()})
}

/// `name` with a trailing dot.
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

#[async_trait]
impl Route53 for AwsRoute53 {
    async fn zone_id(&self, domain: &str) -> Result<String, ProviderError> {
        let out = self
            .0
            .list_hosted_zones_by_name()
            .dns_name(fqdn(domain))
            .send()
            .await
            .map_err(|e| err("route53:ListHostedZonesByName", e))?;
        out.hosted_zones()
            .iter()
            .find(|z| z.name() == fqdn(domain))
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_string())
            .ok_or_else(|| ProviderError::Aws {
                op: "route53:ListHostedZonesByName".into(),
                message: format!("no hosted zone {} in the account", fqdn(domain)),
            })
    }

    async fn record_sets(
        &self,
        zone: &str,
        name: &str,
        rtype: &str,
    ) -> Result<Vec<RecordSet>, ProviderError> {
        let out = self
            .0
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(fqdn(name))
            .start_record_type(RrType::from(rtype))
            .max_items(100)
            .send()
            .await
            .map_err(|e| err("route53:ListResourceRecordSets", e))?;
        let mut sets: Vec<RecordSet> = out
            .resource_record_sets()
            .iter()
            .filter(|r| r.name() == fqdn(name) && r.r#type().as_str() == rtype)
            .map(RecordSet::from_sdk)
            .collect();
        sets.sort_by(|a, b| a.set_identifier.cmp(&b.set_identifier));
        Ok(sets)
    }

    async fn submit(
        &self,
        zone: &str,
        changes: &[RecordChange],
        comment: &str,
    ) -> Result<String, ProviderError> {
        let op = "route53:ChangeResourceRecordSets";
        let mut batch = ChangeBatch::builder().comment(comment);
        for c in changes {
            batch = batch.changes(
                Change::builder()
                    .action(match c.action {
                        RecordAction::Create => ChangeAction::Create,
                        RecordAction::Upsert => ChangeAction::Upsert,
                        RecordAction::Delete => ChangeAction::Delete,
                    })
                    .resource_record_set(c.set.to_sdk()?)
                    .build()
                    .map_err(|e| err(op, e))?,
            );
        }
        let out = self
            .0
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch.build().map_err(|e| err(op, e))?)
            .send()
            .await
            .map_err(|e| err(op, e))?;
        Ok(out
            .change_info()
            .map(|c| c.id().trim_start_matches("/change/").to_string())
            .unwrap_or_default())
    }

    async fn change_status(&self, id: &str) -> Result<ChangeStatus, ProviderError> {
        let out = self
            .0
            .get_change()
            .id(id)
            .send()
            .await
            .map_err(|e| err("route53:GetChange", e))?;
        Ok(match out.change_info().map(|c| c.status().clone()) {
            Some(aws_sdk_route53::types::ChangeStatus::Insync) => ChangeStatus::Insync,
            _ => ChangeStatus::Pending,
        })
    }
}

/// The change that turns the record sets `now` into exactly `want`: `DELETE` each set of `now`
/// that `want` lacks or holds differently, then `UPSERT` each set of `want` that `now` lacks as
/// it is (in one batch Route 53 applies the DELETEs first; moto refuses a CREATE identical to an
/// earlier one while the name still has a set, before it applies the batch's DELETEs). Empty
/// when they already match.
pub fn diff(now: &[RecordSet], want: &[RecordSet]) -> Vec<RecordChange> {
    let mut out = Vec::new();
    for n in now {
        if !want.contains(n) {
            out.push(RecordChange {
                action: RecordAction::Delete,
                set: n.clone(),
            });
        }
    }
    for w in want {
        if !now.contains(w) {
            out.push(RecordChange {
                action: RecordAction::Upsert,
                set: w.clone(),
            });
        }
    }
    out
}

/// A fingerprint of record sets (SHA-256 of their canonical JSON), for before/after lines.
pub fn fingerprint(sets: &[RecordSet]) -> String {
    let text = serde_json::to_string(sets).unwrap_or_default();
    crate::secret::fingerprint(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(ttl: i64, v: &str) -> RecordSet {
        RecordSet {
            name: "shop.example.com.".into(),
            rtype: "CNAME".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(ttl),
            values: vec![v.into()],
            alias: None,
        }
    }

    #[test]
    fn diff_deletes_what_differs_and_creates_what_is_missing() {
        let now = vec![simple(60, "new.example.net")];
        let want = vec![simple(300, "old.example.net")];
        let d = diff(&now, &want);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].action, RecordAction::Delete);
        assert_eq!(d[0].set.values, ["new.example.net"]);
        assert_eq!(d[1].action, RecordAction::Upsert);
        assert!(diff(&want, &want).is_empty());
    }

    #[test]
    fn alias_sets_show_an_alias_target_and_no_ttl() {
        let s = RecordSet {
            name: "shop.example.com.".into(),
            rtype: "A".into(),
            set_identifier: Some("aws".into()),
            weight: Some(10),
            ttl: None,
            values: vec![],
            alias: Some(Alias {
                hosted_zone_id: "Z35SXDOTRQ7X7K".into(),
                dns_name: "shop-1.us-east-1.elb.amazonaws.com".into(),
                evaluate_target_health: true,
            }),
        };
        let j = s.api_json();
        assert_eq!(j["AliasTarget"]["HostedZoneId"], "Z35SXDOTRQ7X7K");
        assert_eq!(j["Weight"], 10);
        assert!(j.get("TTL").is_none() && j.get("ResourceRecords").is_none());
        assert_eq!(s.target(), "alias shop-1.us-east-1.elb.amazonaws.com");
    }
}
