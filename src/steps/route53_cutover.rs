//! `route53.cutover`: points a record at the new target with one UPSERT change batch and waits
//! until Route 53 reports the change INSYNC. Rollback UPSERTs the exact record set observed before
//! the first change of the run (or deletes the record if there was none).

use super::{parse_params, Change, ParamSpec, Planned, StepContext, StepError, StepKind};
use crate::providers::aws::err;
use async_trait::async_trait;
use aws_sdk_route53::types::{
    Change as R53Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The `route53.cutover` kind.
pub struct Route53Cutover;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    record: String,
    to: String,
    #[serde(default = "default_type", rename = "type")]
    rtype: String,
    #[serde(default)]
    ttl: Option<i64>,
}

fn default_type() -> String {
    "CNAME".into()
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "record",
        required: true,
        doc: "record name, e.g. shop.staging.example.com",
    },
    ParamSpec {
        name: "to",
        required: true,
        doc: "new value (the AWS load balancer's DNS name for a CNAME)",
    },
    ParamSpec {
        name: "type",
        required: false,
        doc: "record type: CNAME (default) or A",
    },
    ParamSpec {
        name: "ttl",
        required: false,
        doc: "TTL in seconds (default: keep the current TTL, else 60)",
    },
];

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The hosted zone id of the environment's domain.
async fn zone_id(r53: &aws_sdk_route53::Client, domain: &str) -> Result<String, StepError> {
    let out = r53
        .list_hosted_zones_by_name()
        .dns_name(fqdn(domain))
        .send()
        .await
        .map_err(|e| err("route53:ListHostedZonesByName", e))?;
    out.hosted_zones()
        .iter()
        .find(|z| z.name() == fqdn(domain))
        .map(|z| z.id().trim_start_matches("/hostedzone/").to_string())
        .ok_or_else(|| StepError::Check(format!("no hosted zone {domain} in account")))
}

/// The record set `name`/`type` as `{exists, name, type, ttl, values}`.
async fn current(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
    rtype: &RrType,
) -> Result<Value, StepError> {
    let out = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .start_record_name(fqdn(name))
        .start_record_type(rtype.clone())
        .max_items(1)
        .send()
        .await
        .map_err(|e| err("route53:ListResourceRecordSets", e))?;
    let found = out
        .resource_record_sets()
        .iter()
        .find(|r| r.name() == fqdn(name) && r.r#type() == rtype);
    Ok(match found {
        None => json!({"exists": false, "name": fqdn(name), "type": rtype.as_str()}),
        Some(r) => json!({
            "exists": true,
            "name": r.name(),
            "type": r.r#type().as_str(),
            "ttl": r.ttl(),
            "values": r.resource_records().iter().map(|v| v.value().to_string()).collect::<Vec<_>>(),
        }),
    })
}

/// The values of a record set as [`current`] reports it.
fn values_of(set: &Value) -> Vec<String> {
    set.get("values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn record_set(
    name: &str,
    rtype: &RrType,
    ttl: i64,
    values: &[String],
) -> Result<ResourceRecordSet, StepError> {
    let mut b = ResourceRecordSet::builder()
        .name(fqdn(name))
        .r#type(rtype.clone())
        .ttl(ttl);
    for v in values {
        b = b.resource_records(
            ResourceRecord::builder()
                .value(v)
                .build()
                .map_err(|e| StepError::Params(e.to_string()))?,
        );
    }
    b.build().map_err(|e| StepError::Params(e.to_string()))
}

/// The change batch as the Route 53 API document shows it, for dry-runs and the audit.
fn batch_json(action: &str, name: &str, rtype: &str, ttl: i64, values: &[String]) -> Value {
    json!({"Changes": [{"Action": action, "ResourceRecordSet": {"Name": fqdn(name), "Type": rtype, "TTL": ttl, "ResourceRecords": values.iter().map(|v| json!({"Value": v})).collect::<Vec<_>>()}}]})
}

async fn submit(
    r53: &aws_sdk_route53::Client,
    zone: &str,
    action: ChangeAction,
    set: ResourceRecordSet,
    comment: &str,
) -> Result<String, StepError> {
    let change = R53Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()
        .map_err(|e| StepError::Params(e.to_string()))?;
    let batch = ChangeBatch::builder()
        .changes(change)
        .comment(comment)
        .build()
        .map_err(|e| StepError::Params(e.to_string()))?;
    let out = r53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| err("route53:ChangeResourceRecordSets", e))?;
    Ok(out
        .change_info()
        .map(|c| c.id().trim_start_matches("/change/").to_string())
        .unwrap_or_default())
}

async fn wait_insync(
    cx: &StepContext<'_>,
    r53: &aws_sdk_route53::Client,
    change_id: &str,
) -> Result<(), StepError> {
    loop {
        let out = r53
            .get_change()
            .id(change_id)
            .send()
            .await
            .map_err(|e| err("route53:GetChange", e))?;
        let status = out
            .change_info()
            .map(|c| c.status().as_str().to_string())
            .unwrap_or_default();
        if status == "INSYNC" {
            return Ok(());
        }
        cx.check_deadline(&format!("change {change_id} to be INSYNC (now {status})"))?;
        (cx.progress)(&format!(
            "change {change_id} is {status}; waiting for INSYNC up to {}s",
            cx.remaining().as_secs()
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[async_trait]
impl StepKind for Route53Cutover {
    fn name(&self) -> &'static str {
        "route53.cutover"
    }
    fn purpose(&self) -> &'static str {
        "Point the service's DNS record at the AWS target and wait until Route 53 reports INSYNC"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["change_id", "zone_id", "record", "value"]
    }
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(600)
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let r53 = aws_sdk_route53::Client::new(&cx.providers.aws().await?.config);
        let zone = zone_id(&r53, &cx.env.dns.domain).await?;
        let rtype = RrType::from(p.rtype.as_str());
        let before = current(&r53, &zone, &p.record, &rtype).await?;
        let old = values_of(&before);
        let ttl = p
            .ttl
            .or_else(|| before.get("ttl").and_then(Value::as_i64))
            .unwrap_or(60);
        let changes = if old == vec![p.to.clone()]
            && before.get("ttl").and_then(Value::as_i64) == Some(ttl)
        {
            vec![Change::new(
                "none",
                format!("{} {}", p.rtype, fqdn(&p.record)),
                format!("already {}", p.to),
            )]
        } else {
            let batch = batch_json(
                "UPSERT",
                &p.record,
                &p.rtype,
                ttl,
                std::slice::from_ref(&p.to),
            );
            vec![Change::new(
                "update",
                format!("{} {}", p.rtype, fqdn(&p.record)),
                format!(
                    "{} → {} (TTL {ttl}s) in zone {zone}; change batch {}",
                    if old.is_empty() {
                        "(none)".into()
                    } else {
                        old.join(",")
                    },
                    p.to,
                    batch
                ),
            )]
        };
        let mut predicted = Map::new();
        predicted.insert("zone_id".into(), json!(zone));
        predicted.insert("record".into(), json!(fqdn(&p.record)));
        predicted.insert("value".into(), json!(p.to));
        Ok(Planned {
            changes,
            before,
            predicted,
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let r53 = aws_sdk_route53::Client::new(&cx.providers.aws().await?.config);
        let zone = zone_id(&r53, &cx.env.dns.domain).await?;
        let rtype = RrType::from(p.rtype.as_str());
        let now = current(&r53, &zone, &p.record, &rtype).await?;
        let ttl = p
            .ttl
            .or_else(|| planned.before.get("ttl").and_then(Value::as_i64))
            .unwrap_or(60);
        let already = now.get("values") == Some(&json!([p.to]))
            && now.get("ttl").and_then(Value::as_i64) == Some(ttl);
        let mut out = Map::new();
        let change_id = if already {
            Value::Null
        } else {
            let set = record_set(&p.record, &rtype, ttl, std::slice::from_ref(&p.to))?;
            json!(
                submit(
                    &r53,
                    &zone,
                    ChangeAction::Upsert,
                    set,
                    &format!("cutover run {} step {}", cx.run_id, cx.step_id)
                )
                .await?
            )
        };
        out.insert(
            "summary".into(),
            json!(format!("{} {} → {}", p.rtype, fqdn(&p.record), p.to)),
        );
        out.insert("change_id".into(), change_id);
        out.insert(
            "change_batch".into(),
            batch_json(
                "UPSERT",
                &p.record,
                &p.rtype,
                ttl,
                std::slice::from_ref(&p.to),
            ),
        );
        out.insert("zone_id".into(), json!(zone));
        out.insert("record".into(), json!(fqdn(&p.record)));
        out.insert("value".into(), json!(p.to));
        Ok(out)
    }

    async fn verify(
        &self,
        cx: &StepContext,
        outputs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StepError> {
        let mut ev = Map::new();
        if let Some(id) = outputs.get("change_id").and_then(Value::as_str) {
            let r53 = aws_sdk_route53::Client::new(&cx.providers.aws().await?.config);
            wait_insync(cx, &r53, id).await?;
            ev.insert("change_status".into(), json!("INSYNC"));
        }
        Ok(ev)
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        before: &Value,
        _outputs: Option<&Map<String, Value>>,
    ) -> Result<Vec<String>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let r53 = aws_sdk_route53::Client::new(&cx.providers.aws().await?.config);
        let zone = zone_id(&r53, &cx.env.dns.domain).await?;
        let rtype = RrType::from(p.rtype.as_str());
        let now = current(&r53, &zone, &p.record, &rtype).await?;
        let now_values = values_of(&now);
        let label = format!("{} {}", p.rtype, fqdn(&p.record));
        if before.get("exists").and_then(Value::as_bool) == Some(true) {
            let old = values_of(before);
            let ttl = before.get("ttl").and_then(Value::as_i64).unwrap_or(60);
            if now_values == old && now.get("ttl").and_then(Value::as_i64) == Some(ttl) {
                return Ok(vec![format!(
                    "{label}: already {} (nothing to restore)",
                    old.join(",")
                )]);
            }
            let id = submit(
                &r53,
                &zone,
                ChangeAction::Upsert,
                record_set(&p.record, &rtype, ttl, &old)?,
                &format!("cutover rollback of run {}", cx.run_id),
            )
            .await?;
            wait_insync(cx, &r53, &id).await?;
            Ok(vec![format!(
                "{label}: {} → {} (TTL {ttl}s, change {id} INSYNC)",
                now_values.join(","),
                old.join(",")
            )])
        } else if now.get("exists").and_then(Value::as_bool) == Some(true)
            && now_values == vec![p.to.clone()]
        {
            let ttl = now.get("ttl").and_then(Value::as_i64).unwrap_or(60);
            let id = submit(
                &r53,
                &zone,
                ChangeAction::Delete,
                record_set(&p.record, &rtype, ttl, &now_values)?,
                &format!("cutover rollback of run {}", cx.run_id),
            )
            .await?;
            wait_insync(cx, &r53, &id).await?;
            Ok(vec![format!(
                "{label}: deleted (it did not exist before the run)"
            )])
        } else {
            Ok(vec![])
        }
    }
}
