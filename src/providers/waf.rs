//! AWS WAFv2's regional web ACLs and their associations, behind [`Waf`] so a step kind can be
//! tested against a fake. The real implementation ([`AwsWaf`]) calls the AWS SDK with the
//! environment's assumed-role session.
//!
//! Owns the WAFv2 calls the tool makes; must not decide whether an association is wanted (that
//! is `wafv2.assert_association`'s).

use super::aws::err;
use super::ProviderError;
use async_trait::async_trait;

/// A web ACL as WAFv2 names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAcl {
    /// Its name.
    pub name: String,
    /// Its ARN.
    pub arn: String,
}

/// The WAFv2 operations the tool uses (regional scope: load balancers).
#[async_trait]
pub trait Waf: Send + Sync {
    /// The web ACL associated with `resource` (an ARN), if any (`GetWebACLForResource`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`].
    async fn web_acl_for(&self, resource: &str) -> Result<Option<WebAcl>, ProviderError>;

    /// The ARN of the regional web ACL named `name`, if there is one (`ListWebACLs`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`].
    async fn web_acl_arn(&self, name: &str) -> Result<Option<String>, ProviderError>;

    /// Associates web ACL `acl_arn` with `resource` (`AssociateWebACL`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`].
    async fn associate(&self, acl_arn: &str, resource: &str) -> Result<(), ProviderError>;

    /// Removes `resource`'s association (`DisassociateWebACL`).
    ///
    /// # Errors
    /// [`ProviderError::Aws`].
    async fn disassociate(&self, resource: &str) -> Result<(), ProviderError>;
}

/// [`Waf`] over the AWS SDK.
pub struct AwsWaf(pub aws_sdk_wafv2::Client);

#[async_trait]
impl Waf for AwsWaf {
    async fn web_acl_for(&self, resource: &str) -> Result<Option<WebAcl>, ProviderError> {
        let out = self
            .0
            .get_web_acl_for_resource()
            .resource_arn(resource)
            .send()
            .await
            .map_err(|e| err("wafv2:GetWebACLForResource", e))?;
        Ok(out.web_acl().map(|a| WebAcl {
            name: a.name().to_string(),
            arn: a.arn().to_string(),
        }))
    }

    async fn web_acl_arn(&self, name: &str) -> Result<Option<String>, ProviderError> {
        let out = self
            .0
            .list_web_acls()
            .scope(aws_sdk_wafv2::types::Scope::Regional)
            .send()
            .await
            .map_err(|e| err("wafv2:ListWebACLs", e))?;
        Ok(out
            .web_acls()
            .iter()
            .find(|a| a.name() == Some(name))
            .and_then(|a| a.arn().map(str::to_owned)))
    }

    async fn associate(&self, acl_arn: &str, resource: &str) -> Result<(), ProviderError> {
        self.0
            .associate_web_acl()
            .web_acl_arn(acl_arn)
            .resource_arn(resource)
            .send()
            .await
            .map_err(|e| err("wafv2:AssociateWebACL", e))?;
        Ok(())
    }

    async fn disassociate(&self, resource: &str) -> Result<(), ProviderError> {
        self.0
            .disassociate_web_acl()
            .resource_arn(resource)
            .send()
            .await
            .map_err(|e| err("wafv2:DisassociateWebACL", e))?;
        Ok(())
    }
}
