//! EKS authentication tokens, made the way `aws eks get-token` makes them, for clusters reached
//! without a kubeconfig context.
//!
//! The token is `k8s-aws-v1.` followed by the unpadded base64url encoding of a presigned STS
//! `GetCallerIdentity` URL (SigV4 in the query string) whose signed headers include
//! `x-k8s-aws-id: <cluster name>`. The cluster's authenticator calls that URL to learn the caller's
//! ARN. Format as in aws-iam-authenticator's token package and the AWS CLI's `eks get-token`;
//! the URL expires after 60 seconds and EKS accepts a token for 15 minutes.

use super::ProviderError;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine;
use std::time::{Duration, SystemTime};

/// Prefix of every EKS token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";

/// Header binding a token to one cluster (signed, so it cannot be replayed on another).
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";

/// Seconds the presigned URL is valid (`X-Amz-Expires`), as `aws eks get-token` sets it.
pub const URL_EXPIRES_SECONDS: u64 = 60;

/// A token for cluster `cluster` signed with `credentials` for STS in `region` at `now`.
///
/// # Errors
/// [`ProviderError::Aws`] when the request cannot be signed.
pub fn token(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<String, ProviderError> {
    let fail = |m: String| ProviderError::Aws {
        op: "eks get-token (SigV4 presign)".into(),
        message: m,
    };
    let base =
        format!("https://sts.{region}.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(URL_EXPIRES_SECONDS));
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| fail(e.to_string()))?
        .into();
    let headers = [(CLUSTER_ID_HEADER, cluster)];
    let request = SignableRequest::new(
        "GET",
        &base,
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| fail(e.to_string()))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| fail(e.to_string()))?
        .into_parts();
    let mut url = base;
    for (k, v) in instructions.params() {
        url.push('&');
        url.push_str(k);
        url.push('=');
        url.push_str(&crate::secret::urlencode(v));
    }
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url.as_bytes())
    ))
}

/// DER certificates from a base64 PEM bundle, as DescribeCluster's
/// `certificateAuthority.data` holds it.
///
/// # Errors
/// A message when the data is not base64 or holds no certificate.
pub fn pem_bundle_to_der(data_b64: &str) -> Result<Vec<Vec<u8>>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem = b64
        .decode(data_b64.trim())
        .map_err(|e| format!("certificate authority data is not base64: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    let mut certs = Vec::new();
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
            body.clear();
        } else if line.starts_with("-----END CERTIFICATE") {
            inside = false;
            certs.push(
                b64.decode(&body)
                    .map_err(|e| format!("certificate is not base64: {e}"))?,
            );
        } else if inside {
            body.push_str(line);
        }
    }
    if certs.is_empty() {
        return Err("certificate authority data holds no certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(token: &str) -> String {
        let b = token.strip_prefix(TOKEN_PREFIX).expect("prefix");
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .expect("base64url without padding"),
        )
        .unwrap()
    }

    #[test]
    fn token_is_a_presigned_get_caller_identity_url_signing_the_cluster_header() {
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG",
            Some("tok/en+=".into()),
            None,
            "t",
        );
        let t = token(
            &creds,
            "eu-west-1",
            "shop-production",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let url = decode(&t);
        assert!(
            url.starts_with(
                "https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15&"
            ),
            "{url}"
        );
        let query: Vec<(String, String)> = url
            .split_once('?')
            .unwrap()
            .1
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
        let signed = get("X-Amz-SignedHeaders").expect("signed headers");
        assert!(
            signed.split("%3B").any(|h| h == CLUSTER_ID_HEADER),
            "{signed}"
        );
        assert!(signed.split("%3B").any(|h| h == "host"), "{signed}");
        assert_eq!(get("X-Amz-Expires").as_deref(), Some("60"));
        assert_eq!(get("X-Amz-Algorithm").as_deref(), Some("AWS4-HMAC-SHA256"));
        assert_eq!(get("X-Amz-Date").as_deref(), Some("20231114T221320Z"));
        assert!(get("X-Amz-Credential")
            .unwrap()
            .starts_with("AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fsts%2Faws4_request"));
        assert_eq!(get("X-Amz-Signature").unwrap().len(), 64);
        assert_eq!(
            get("X-Amz-Security-Token").as_deref(),
            Some("tok%2Fen%2B%3D")
        );
        assert!(
            !url.contains("wJalrXUtnFEMI"),
            "the secret key never appears"
        );
        // A token for another cluster differs: the header is part of the signature.
        let other = token(
            &creds,
            "eu-west-1",
            "shop-staging",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        assert_ne!(decode(&other), url);
    }

    #[test]
    fn ca_bundle_decodes_to_der() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            b64.encode([1u8, 2, 3])
        );
        assert_eq!(
            pem_bundle_to_der(&b64.encode(pem)).unwrap(),
            vec![vec![1, 2, 3]]
        );
        assert!(pem_bundle_to_der(&b64.encode("nothing")).is_err());
    }
}
