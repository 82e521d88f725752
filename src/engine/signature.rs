//! Signed chain heads: the ed25519 signature that makes a run's event log verifiable offline and
//! its truncation detectable.
//!
//! The hash chain of [`super::log`] shows that no record was edited, deleted, inserted or
//! reordered, but not that records were cut off the tail: a shortened log is still a valid chain.
//! So, as CloudTrail signs each digest file, the chain head is signed. After every append the
//! log writes `signature.json` beside `events.jsonl` (atomically: temporary file, fsync, rename),
//! holding a signed statement of the run id, the record count and the head. `audit verify`
//! rebuilds that statement from the log and checks it against the signature and a public key.
//!
//! The statement is plain text (see [`statement`]), so an auditor can check it with OpenSSL
//! alone: `openssl pkeyutl -verify -pubin -inkey key.pub.pem -rawin -in statement.txt -sigfile
//! sig.bin`. Keys are PKCS#8 PEM (private) and SubjectPublicKeyInfo PEM (public), the files
//! `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write.
//!
//! Owns key loading, signing and checking a signature; must not read or interpret records.

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The variable holding the private key itself (PKCS#8 PEM text).
pub const KEY_VAR: &str = "CUTOVER_SIGNING_KEY";
/// The variable naming a file holding the private key (PKCS#8 PEM).
pub const KEY_FILE_VAR: &str = "CUTOVER_SIGNING_KEY_FILE";
/// The signature's file name, beside `events.jsonl`.
pub const FILE_NAME: &str = "signature.json";

/// Why a key cannot be loaded or a signature does not hold.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignatureError {
    /// The key (file or variable) is not an ed25519 key in the expected PEM form. Never
    /// includes key material.
    #[error(
        "{source_name}: not an ed25519 {what} in PEM ({detail}); expected the output of {hint}"
    )]
    BadKey {
        /// The variable or file the key came from.
        source_name: String,
        /// `private key (PKCS#8)` or `public key (SubjectPublicKeyInfo)`.
        what: &'static str,
        /// The decoder's message.
        detail: String,
        /// The command that writes such a key.
        hint: &'static str,
    },
    /// The key file cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// `signature.json` is not a signature file.
    #[error("{path}: not a signature file: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The JSON or decoding error.
        message: String,
    },
    /// The signed statement differs from the one the log gives (records cut off or added).
    #[error("the signature covers {signed_records} records ending at chain head {signed_head}, but the log has {records} records ending at {head}: {meaning}")]
    Mismatch {
        /// Records the signature covers.
        signed_records: u64,
        /// The head it covers.
        signed_head: String,
        /// Records in the log.
        records: u64,
        /// The log's head.
        head: String,
        /// Truncated, extended or replaced.
        meaning: &'static str,
    },
    /// The signature is not valid for the statement under the key.
    #[error("the signature does not verify under the {which} key {fingerprint}")]
    Invalid {
        /// `given` (--public-key) or `embedded` (the signature file's own).
        which: &'static str,
        /// The key's fingerprint.
        fingerprint: String,
    },
}

/// The text that is signed: four lines, each ending in `\n`:
/// `cutover audit signature v1`, `run: <run id>`, `records: <count>`, `chain head: <hex>`.
pub fn statement(run_id: &str, records: u64, head: &str) -> String {
    format!("cutover audit signature v1\nrun: {run_id}\nrecords: {records}\nchain head: {head}\n")
}

/// `sha256:` and the first 16 hex digits of the SHA-256 of the 32-byte public key: how reports
/// and messages name a key.
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    format!(
        "sha256:{}",
        &hex::encode(Sha256::digest(key.as_bytes()))[..16]
    )
}

/// The content of `signature.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SignatureFile {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The run id.
    pub run_id: String,
    /// Records covered (the log's length when signed).
    pub records: u64,
    /// The chain head covered.
    pub chain_head: String,
    /// The exact signed text ([`statement`]).
    pub statement: String,
    /// The signer's public key, SubjectPublicKeyInfo PEM (for information: trust comes from
    /// `--public-key`).
    pub public_key: String,
    /// [`key_fingerprint`] of it.
    pub key_fingerprint: String,
    /// The 64-byte signature, standard base64.
    pub signature: String,
    /// RFC 3339 UTC time of signing.
    pub signed_at: String,
}

/// A loaded private key.
pub struct Signer {
    key: SigningKey,
    public_pem: String,
    fingerprint: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.fingerprint)
    }
}

const PRIVATE_HINT: &str = "`openssl genpkey -algorithm ed25519`";
const PUBLIC_HINT: &str = "`openssl pkey -in KEY -pubout`";

impl Signer {
    /// Parses a PKCS#8 PEM private key; `source_name` names where it came from in errors.
    ///
    /// # Errors
    /// [`SignatureError::BadKey`] (without key material).
    pub fn from_pem(pem: &str, source_name: &str) -> Result<Signer, SignatureError> {
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| SignatureError::BadKey {
            source_name: source_name.into(),
            what: "private key (PKCS#8)",
            detail: e.to_string(),
            hint: PRIVATE_HINT,
        })?;
        let public = key.verifying_key();
        let public_pem = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &public,
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
        )
        .unwrap_or_default();
        Ok(Signer {
            fingerprint: key_fingerprint(&public),
            key,
            public_pem,
        })
    }

    /// The key named by [`KEY_VAR`] or [`KEY_FILE_VAR`] (the variable wins), or `None` when
    /// neither is set: runs are then unsigned. Returns the PEM text too, so the caller can
    /// register it with the redactor.
    ///
    /// # Errors
    /// [`SignatureError::Io`] or [`SignatureError::BadKey`].
    pub fn from_env() -> Result<Option<(Signer, String)>, SignatureError> {
        let (pem, source) = match (std::env::var(KEY_VAR), std::env::var(KEY_FILE_VAR)) {
            (Ok(v), _) if !v.trim().is_empty() => (v, KEY_VAR.to_string()),
            (_, Ok(path)) if !path.trim().is_empty() => {
                let text = std::fs::read_to_string(&path).map_err(|e| SignatureError::Io {
                    path: path.clone().into(),
                    message: e.to_string(),
                })?;
                (text, format!("{KEY_FILE_VAR} ({path})"))
            }
            _ => return Ok(None),
        };
        let signer = Signer::from_pem(&pem, &source)?;
        Ok(Some((signer, pem)))
    }

    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Signs the statement for `records` records ending at `head` of run `run_id`.
    pub fn sign(&self, run_id: &str, records: u64, head: &str) -> SignatureFile {
        let text = statement(run_id, records, head);
        let sig = self.key.sign(text.as_bytes());
        SignatureFile {
            algorithm: "ed25519".into(),
            run_id: run_id.into(),
            records,
            chain_head: head.into(),
            statement: text,
            public_key: self.public_pem.clone(),
            key_fingerprint: self.fingerprint.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
            signed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// Writes `file` to `path` atomically (temporary file, fsync, rename) and returns the bytes.
///
/// # Errors
/// The OS error.
pub fn write(path: &Path, file: &SignatureFile) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(file).unwrap_or_default();
    bytes.push(b'\n');
    let tmp = path.with_extension("json.part");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(bytes)
}

/// Reads `signature.json` at `path`, `None` when there is none.
///
/// # Errors
/// [`SignatureError::Malformed`] or [`SignatureError::Io`].
pub fn read(path: &Path) -> Result<Option<SignatureFile>, SignatureError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SignatureError::Io {
                path: path.into(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| SignatureError::Malformed {
            path: path.into(),
            message: e.to_string(),
        })
}

/// Reads a SubjectPublicKeyInfo PEM public key file.
///
/// # Errors
/// [`SignatureError::Io`] or [`SignatureError::BadKey`].
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SignatureError> {
    let text = std::fs::read_to_string(path).map_err(|e| SignatureError::Io {
        path: path.into(),
        message: e.to_string(),
    })?;
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| SignatureError::BadKey {
        source_name: path.display().to_string(),
        what: "public key (SubjectPublicKeyInfo)",
        detail: e.to_string(),
        hint: PUBLIC_HINT,
    })
}

/// What [`check`] established.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Fingerprint of the key the signature verified under.
    pub fingerprint: String,
    /// Whether that key was the one the caller trusts (`--public-key`) rather than the one the
    /// signature file carries.
    pub trusted: bool,
    /// When it was signed.
    pub signed_at: String,
}

/// Checks `file` against a log of `records` records ending at `head` of run `run_id`: the
/// statement must be the one the log gives, and the signature valid under `trusted` (or, when
/// `None`, under the key the file carries, which proves integrity but not who signed).
///
/// # Errors
/// [`SignatureError::Mismatch`] when records were cut off or added after signing;
/// [`SignatureError::Invalid`] when the signature is not valid under the key;
/// [`SignatureError::Malformed`] / [`SignatureError::BadKey`] for an unreadable file.
pub fn check(
    file: &SignatureFile,
    path: &Path,
    run_id: &str,
    records: u64,
    head: &str,
    trusted: Option<&VerifyingKey>,
) -> Result<Checked, SignatureError> {
    if file.records != records || file.chain_head != head || file.run_id != run_id {
        let meaning = if file.run_id != run_id {
            "the signature belongs to another run"
        } else if records < file.records {
            "records were cut off the end of the log"
        } else if records > file.records {
            "records were appended after the last signature"
        } else {
            "the log's records are not the ones signed"
        };
        return Err(SignatureError::Mismatch {
            signed_records: file.records,
            signed_head: file.chain_head.clone(),
            records,
            head: head.into(),
            meaning,
        });
    }
    let malformed = |message: String| SignatureError::Malformed {
        path: path.into(),
        message,
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(file.signature.trim())
        .map_err(|e| malformed(format!("signature: {e}")))?;
    let sig = Signature::from_slice(&raw).map_err(|e| malformed(format!("signature: {e}")))?;
    let (key, which) = match trusted {
        Some(k) => (*k, "given"),
        None => (
            VerifyingKey::from_public_key_pem(file.public_key.trim()).map_err(|e| {
                SignatureError::BadKey {
                    source_name: format!("{} public_key", path.display()),
                    what: "public key (SubjectPublicKeyInfo)",
                    detail: e.to_string(),
                    hint: PUBLIC_HINT,
                }
            })?,
            "embedded",
        ),
    };
    let text = statement(run_id, records, head);
    key.verify(text.as_bytes(), &sig)
        .map_err(|_| SignatureError::Invalid {
            which,
            fingerprint: key_fingerprint(&key),
        })?;
    Ok(Checked {
        fingerprint: key_fingerprint(&key),
        trusted: trusted.is_some(),
        signed_at: file.signed_at.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8410 section 10.3's example private key.
    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";

    #[test]
    fn a_signed_head_checks_and_any_other_head_or_count_does_not() {
        let s = Signer::from_pem(PEM, "test").unwrap();
        let f = s.sign("r1", 3, "abc");
        let p = Path::new("signature.json");
        let key = s.key.verifying_key();
        assert!(check(&f, p, "r1", 3, "abc", Some(&key)).unwrap().trusted);
        assert!(matches!(
            check(&f, p, "r1", 2, "abd", Some(&key)),
            Err(SignatureError::Mismatch { meaning, .. }) if meaning.contains("cut off")
        ));
        let mut forged = f.clone();
        forged.records = 4;
        forged.chain_head = "abd".into();
        assert!(matches!(
            check(&forged, p, "r1", 4, "abd", Some(&key)),
            Err(SignatureError::Invalid { .. })
        ));
    }

    #[test]
    fn a_wrong_key_fails_and_a_bad_pem_names_its_source_without_content() {
        let s = Signer::from_pem(PEM, "test").unwrap();
        let f = s.sign("r1", 1, "h");
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert!(matches!(
            check(&f, Path::new("s"), "r1", 1, "h", Some(&other)),
            Err(SignatureError::Invalid { which: "given", .. })
        ));
        let e = Signer::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAAsecretish\n-----END PRIVATE KEY-----",
            "CUTOVER_SIGNING_KEY",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("CUTOVER_SIGNING_KEY: not an ed25519 private key"),
            "{e}"
        );
        assert!(!e.contains("secretish"));
    }
}
