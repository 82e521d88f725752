//! RDS's DB instances and manual DB snapshots, behind [`Rds`] so a step kind can be tested
//! against a fake. The real implementation ([`AwsRds`]) calls the AWS SDK with the
//! environment's assumed-role session.
//!
//! Owns the RDS calls the tool makes; must not decide when a snapshot is wanted (that is
//! `rds.snapshot`'s).

use super::aws::err;
use super::ProviderError;
use async_trait::async_trait;

/// The RDS operations the tool uses.
#[async_trait]
pub trait Rds: Send + Sync {
    /// Succeeds when DB instance `instance` exists (`DescribeDBInstances`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`], `DBInstanceNotFound` included.
    async fn describe_instance(&self, instance: &str) -> Result<(), ProviderError>;

    /// The status of manual DB snapshot `id` (`available`, `creating`, ...), `None` when there
    /// is no such snapshot (`DescribeDBSnapshots`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`] for any error but `DBSnapshotNotFound`.
    async fn snapshot_status(&self, id: &str) -> Result<Option<String>, ProviderError>;

    /// Starts manual DB snapshot `id` of `instance`, tagged `cutover:run-id` = `run_id`
    /// (`CreateDBSnapshot`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`].
    async fn create_snapshot(
        &self,
        instance: &str,
        id: &str,
        run_id: &str,
    ) -> Result<(), ProviderError>;
}

/// [`Rds`] over the AWS SDK.
pub struct AwsRds(pub aws_sdk_rds::Client);

#[async_trait]
impl Rds for AwsRds {
    async fn describe_instance(&self, instance: &str) -> Result<(), ProviderError> {
        self.0
            .describe_db_instances()
            .db_instance_identifier(instance)
            .send()
            .await
            .map_err(|e| err("rds:DescribeDBInstances", e))?;
        Ok(())
    }

    async fn snapshot_status(&self, id: &str) -> Result<Option<String>, ProviderError> {
        match self
            .0
            .describe_db_snapshots()
            .db_snapshot_identifier(id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .db_snapshots()
                .first()
                .map(|s| s.status().unwrap_or("unknown").to_string())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_db_snapshot_not_found_fault()) =>
            {
                Ok(None)
            }
            Err(e) => Err(err("rds:DescribeDBSnapshots", e)),
        }
    }

    async fn create_snapshot(
        &self,
        instance: &str,
        id: &str,
        run_id: &str,
    ) -> Result<(), ProviderError> {
        self.0
            .create_db_snapshot()
            .db_instance_identifier(instance)
            .db_snapshot_identifier(id)
            .tags(
                aws_sdk_rds::types::Tag::builder()
                    .key("cutover:run-id")
                    .value(run_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| err("rds:CreateDBSnapshot", e))?;
        Ok(())
    }
}
